//! `kvmlet firmware-dump` output checked by the real tools a Linux distribution
//! uses: ACPICA's `iasl` disassembler and `dmidecode`.

use std::path::Path;
use std::process::Command;

use e2e::{kvmlet_bin, require_tool};

const UUID: &str = "0b4e5c1a-7d2f-4e8b-9a6c-3f1d2e4b5a69";
const SERIAL: &str = "vm-cirros-7f3a";

/// Any file with a bzImage header will do: firmware-dump validates but never boots it.
fn fake_kernel(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("kernel.bzImage");
    std::fs::write(&path, e2e::linux::tiny_bzimage(&[0xf4])).unwrap();
    path
}

/// `kvmlet firmware-dump` into `dir/fw` with the test's UUID and serial.
fn dump(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--uuid", UUID, "--serial", SERIAL];
    args.extend_from_slice(extra);
    dump_without_identity(dir, &args)
}

/// `kvmlet firmware-dump` into `dir/fw` with only the given flags.
fn dump_without_identity(dir: &Path, extra: &[&str]) -> std::process::Output {
    let kernel = fake_kernel(dir);
    Command::new(kvmlet_bin())
        .arg("firmware-dump")
        .arg("--kernel")
        .arg(kernel)
        .arg("--out")
        .arg(dir.join("fw"))
        .args(extra)
        .output()
        .unwrap()
}

fn dmidecode_string(dmidecode: &Path, smbios: &Path, keyword: &str) -> String {
    let out = Command::new(dmidecode).arg("--from-dump").arg(smbios).args(["-s", keyword]).output().unwrap();
    assert!(out.status.success(), "dmidecode -s {keyword}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn iasl_disassembles_every_table_and_the_dsdt_has_the_devices() {
    let iasl = require_tool("iasl", "acpica-tools");
    let dir = tempfile::tempdir().unwrap();
    let disk_a = dir.path().join("a.img");
    let disk_b = dir.path().join("b.img");
    std::fs::write(&disk_a, vec![0u8; 4096]).unwrap();
    std::fs::write(&disk_b, vec![0u8; 4096]).unwrap();
    let output = dump(
        dir.path(),
        &["--vcpus", "3", "--disk", disk_a.to_str().unwrap(), "--disk", &format!("{},readonly", disk_b.display())],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let fw = dir.path().join("fw");
    // The RSDP is a pointer structure, not a table with a header: iasl -d
    // does not take it on its own; its checksums are unit-tested in vmm.
    for table in ["DSDT", "FACP", "APIC", "XSDT"] {
        let out = Command::new(&iasl).arg("-d").arg(fw.join(format!("{table}.dat"))).current_dir(&fw).output().unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "iasl -d {table}.dat failed:\n{log}");
        assert!(!log.contains("Error"), "iasl reported errors for {table}:\n{log}");
        assert!(fw.join(format!("{table}.dsl")).is_file());
    }
    let dsdt = std::fs::read_to_string(fw.join("DSDT.dsl")).unwrap();
    for needle in [
        "Device (_SB.COM1)",
        "PNP0501",
        "Device (_SB.GED)",
        "\"ACPI0013\"",
        "Device (_SB.PWRB)",
        "PNP0C0C",
        "Name (_S5, Package",
        "Device (_SB.V000)",
        "Device (_SB.V001)",
    ] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle}:\n{dsdt}");
    }
    assert_eq!(dsdt.matches("\"LNRO0005\"").count(), 2, "one virtio-mmio device per disk");
    assert!(!dsdt.contains("Device (_SB.V002)"));

    let madt = std::fs::read_to_string(fw.join("APIC.dsl")).unwrap();
    assert_eq!(madt.matches("Subtable Type : 00 [Processor Local APIC]").count(), 3, "{madt}");
    let fadt = std::fs::read_to_string(fw.join("FACP.dsl")).unwrap();
    assert!(fadt.contains("Hardware Reduced (V5) : 1"), "{fadt}");
}

#[test]
fn dmidecode_reads_the_uuid_and_serial() {
    let dmidecode = require_tool("dmidecode", "dmidecode");
    let dir = tempfile::tempdir().unwrap();
    let output = dump(dir.path(), &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let smbios = dir.path().join("fw/smbios.bin");
    let read = |args: &[&str]| {
        let out = Command::new(&dmidecode).arg("--from-dump").arg(&smbios).args(args).output().unwrap();
        assert!(out.status.success(), "dmidecode {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(read(&["-s", "system-uuid"]), UUID);
    assert_eq!(read(&["-s", "system-serial-number"]), SERIAL);
    assert_eq!(read(&["-s", "system-product-name"]), "kvmlet");
    let full = read(&["-t", "0"]);
    assert!(full.contains("System is a virtual machine"), "{full}");
}

#[test]
fn firmware_dump_rejects_what_run_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let output = dump(dir.path(), &["--vcpus", "33"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("vcpus: 33"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!dir.path().join("fw").exists(), "nothing is written for an invalid config");
}

/// Without --uuid the UUID field is all zeros, which SMBIOS defines as "present
/// but not set" (all 0xFF would claim there is no UUID field at all); without
/// --serial the serial string is absent rather than an empty string.
#[test]
fn dmidecode_reports_an_unset_uuid_and_serial_as_such() {
    let dmidecode = require_tool("dmidecode", "dmidecode");
    let dir = tempfile::tempdir().unwrap();
    let output = dump_without_identity(dir.path(), &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let smbios = dir.path().join("fw/smbios.bin");
    assert_eq!(dmidecode_string(&dmidecode, &smbios, "system-uuid"), "Not Settable");
    assert_eq!(dmidecode_string(&dmidecode, &smbios, "system-serial-number"), "Not Specified");
    assert_eq!(dmidecode_string(&dmidecode, &smbios, "system-manufacturer"), "kvmlet");
}
