//! `kvmlet nocloud` images checked with the tools cloud-init users reach for:
//! blkid, isoinfo (Rock Ridge and Joliet), xorriso, and Linux's own isofs.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use e2e::{kvmlet_bin, require_tool};

/// The user data of the user guide's vm-cirros manifest.
const SEED_USER_DATA_BASE64: &str = "IyEvYmluL3NoCgplY2hvICdwcmludGVkIGZyb20gY2xvdWQtaW5pdCB1c2VyZGF0YScK";
const NETWORK_CONFIG: &str = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";

struct Seed {
    _dir: tempfile::TempDir,
    image: PathBuf,
    user_data: Vec<u8>,
}

fn make_seed(with_network: bool) -> Seed {
    let dir = tempfile::tempdir().unwrap();
    let user_data = base64::engine::general_purpose::STANDARD.decode(SEED_USER_DATA_BASE64).unwrap();
    std::fs::write(dir.path().join("user-data"), &user_data).unwrap();
    std::fs::write(dir.path().join("network-config"), NETWORK_CONFIG).unwrap();
    let image = dir.path().join("seed.iso");
    let mut cmd = Command::new(kvmlet_bin());
    cmd.arg("nocloud").arg("--user-data").arg(dir.path().join("user-data"));
    cmd.args(["--instance-id", "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10", "--hostname", "vm-cirros", "--out"]).arg(&image);
    if with_network {
        cmd.arg("--network-data").arg(dir.path().join("network-config"));
    }
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    Seed { _dir: dir, image, user_data }
}

fn stdout(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn blkid_sees_an_iso9660_volume_labelled_cidata() {
    let blkid = require_tool("blkid", "util-linux");
    let seed = make_seed(false);
    let probe = stdout(Command::new(blkid).args(["-p", "-o", "export"]).arg(&seed.image));
    assert!(probe.lines().any(|l| l == "TYPE=iso9660"), "{probe}");
    assert!(probe.lines().any(|l| l == "LABEL=cidata"), "{probe}");
}

#[test]
fn isoinfo_lists_rock_ridge_and_joliet_names() {
    let isoinfo = require_tool("isoinfo", "genisoimage");
    let seed = make_seed(true);
    let rock_ridge = stdout(Command::new(&isoinfo).args(["-R", "-l", "-i"]).arg(&seed.image));
    for name in ["meta-data", "user-data", "network-config"] {
        assert!(rock_ridge.lines().any(|l| l.trim_end().ends_with(&format!("]  {name}"))), "{name}:\n{rock_ridge}");
    }
    let joliet = stdout(Command::new(&isoinfo).args(["-J", "-l", "-i"]).arg(&seed.image));
    assert!(joliet.contains("user-data"), "{joliet}");
    let descriptor = stdout(Command::new(&isoinfo).args(["-d", "-i"]).arg(&seed.image));
    assert!(descriptor.contains("Volume id: cidata"), "{descriptor}");
    assert!(descriptor.contains("Rock Ridge signatures"), "{descriptor}");
    assert!(descriptor.contains("Joliet"), "{descriptor}");
    let user_data = Command::new(&isoinfo).args(["-R", "-x", "/user-data", "-i"]).arg(&seed.image).output().unwrap();
    assert_eq!(user_data.stdout, seed.user_data);
}

#[test]
fn xorriso_extracts_every_file_byte_for_byte() {
    let xorriso = require_tool("xorriso", "xorriso");
    let seed = make_seed(true);
    let out = seed.image.with_file_name("extracted");
    let status = Command::new(xorriso)
        .args(["-osirrox", "on", "-indev"])
        .arg(&seed.image)
        .args(["-extract", "/"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(std::fs::read(out.join("user-data")).unwrap(), seed.user_data);
    assert_eq!(std::fs::read_to_string(out.join("network-config")).unwrap(), NETWORK_CONFIG);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("meta-data")).unwrap()).unwrap();
    assert_eq!(meta["instance-id"], "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10");
    assert_eq!(meta["local-hostname"], "vm-cirros");
}

#[test]
fn network_config_is_absent_unless_given() {
    let isoinfo = require_tool("isoinfo", "genisoimage");
    let seed = make_seed(false);
    let listing = stdout(Command::new(isoinfo).args(["-R", "-l", "-i"]).arg(&seed.image));
    assert!(!listing.contains("network-config"), "{listing}");
}

#[test]
fn missing_user_data_file_is_a_clear_error() {
    let output = Command::new(kvmlet_bin())
        .args(["nocloud", "--user-data", "/nonexistent/user-data", "--out", "/tmp/never.iso"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/user-data"));
    assert!(!Path::new("/tmp/never.iso").exists());
}

/// Linux's isofs, in a real kernel under QEMU's software emulation (no KVM
/// needed), mounts the seed and finds `user-data` by its Rock Ridge name.
#[test]
fn linux_isofs_mounts_the_seed_and_runs_user_data() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    let guest = e2e::linux::linux_guest();
    let seed = make_seed(false);
    let mut cmd = Command::new(&qemu);
    cmd.args(["-M", "microvm,acpi=on", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initramfs)
        // Under TCG the kernel's PIT calibration of the TSC sometimes fails and
        // the boot stalls; giving it the frequency and loop rate avoids both.
        .args(["-append", "console=ttyS0 quiet tsc_early_khz=2000000 lpj=4000000", "-drive"])
        .arg(format!("id=seed,file={},format=raw,if=none,readonly=on", seed.image.display()))
        .args(["-device", "virtio-blk-device,drive=seed"]);
    let (finished, console, stderr) = e2e::output_within(&mut cmd, std::time::Duration::from_secs(120));
    assert!(finished, "the Linux guest did not finish in 120 s:\n{console}\n{stderr}");
    assert!(console.contains("linux-guest: cidata on vda"), "{console}");
    assert!(console.contains("printed from cloud-init userdata"), "{console}");
}
