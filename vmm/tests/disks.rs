//! The probe guest drives kvmlet's virtio-blk devices like a kernel driver:
//! cloud-init user data from a seed built by the seed builder, a marker
//! written to a data disk, a read-only disk, several disks in order.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine;
use common::{config, probe, run};
use vmm::devices::virtio::block::SECTOR_SIZE;
use vmm::nocloud::NoCloudSeed;
use vmm::{DiskConfig, ExitReason, VmConfig};

const SECTOR: usize = SECTOR_SIZE as usize;

/// The vm-cirros manifest's `cloudInitNoCloud.userDataBase64`.
const SEED_USER_DATA_BASE64: &str = "IyEvYmluL3NoCgplY2hvICdwcmludGVkIGZyb20gY2xvdWQtaW5pdCB1c2VyZGF0YScK";

fn disk(path: &Path, readonly: bool, serial: &str) -> DiskConfig {
    DiskConfig { readonly, serial: Some(serial.into()), ..DiskConfig::new(path) }
}

fn image(dir: &Path, name: &str, sectors: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(sectors * SECTOR_SIZE).unwrap();
    path
}

/// The bytes the probe printed between its user-data markers (it ends the
/// data with a newline of its own, so the end marker starts a line).
fn printed_user_data(console: &str) -> String {
    let text = console.replace("\r\n", "\n");
    let start = text.find("probe: user-data begin").expect("the probe found user-data");
    let body = &text[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("\nprobe: user-data end").expect("end marker");
    body[..end].to_string()
}

#[test]
fn seed_user_data_from_the_manifest_is_printed_verbatim() {
    let user_data = base64::engine::general_purpose::STANDARD.decode(SEED_USER_DATA_BASE64).unwrap();
    let uuid = uuid::Uuid::new_v4();
    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("seed.iso");
    let meta_data = format!("{{\"instance-id\": \"{uuid}\", \"local-hostname\": \"vm-cirros\"}}\n").into_bytes();
    let seed = NoCloudSeed { meta_data, user_data: user_data.clone(), network_config: None };
    seed.write_image(&seed_path).unwrap();

    let vm =
        VmConfig { uuid: Some(uuid), disks: vec![disk(&seed_path, true, "cidata")], ..config(probe().0, "poweroff") };
    let (reason, console) = run(vm);
    assert_eq!(reason, ExitReason::PowerOff, "{console}");
    assert!(console.contains("probe: cidata disk=0"), "{console}");
    assert_eq!(printed_user_data(&console), String::from_utf8(user_data).unwrap());
    assert!(!console.contains("probe: error"), "{console}");
}

#[test]
fn marker_lands_in_the_data_disk_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(dir.path(), "data.img", 4096);
    let vm = VmConfig {
        disks: vec![disk(&data, false, "data-0")],
        cmdline: "probe.action=poweroff probe.marker_sector=37".into(),
        ..config(probe().0, "poweroff")
    };
    let (reason, console) = run(vm);
    assert_eq!(reason, ExitReason::PowerOff, "{console}");
    assert!(console.contains("probe: marker disk=0 sector=37 write=ok flush=ok readback=marker"), "{console}");
    let bytes = std::fs::read(&data).unwrap();
    let marker = b"KVMLET-PROBE-MARKER sector=37";
    assert_eq!(&bytes[37 * SECTOR..37 * SECTOR + marker.len()], marker);
    assert!(bytes[..37 * SECTOR].iter().all(|b| *b == 0), "nothing else was written");
    assert!(bytes[38 * SECTOR..].iter().all(|b| *b == 0), "nothing else was written");
}

#[test]
fn read_only_disk_is_unchanged_after_a_write_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.img");
    let content: Vec<u8> = (0..2048 * SECTOR).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let vm = VmConfig {
        disks: vec![disk(&path, true, "ro-0")],
        cmdline: "probe.action=poweroff probe.marker_disk=0 probe.marker_sector=5".into(),
        ..config(probe().0, "poweroff")
    };
    let (reason, console) = run(vm);
    assert_eq!(reason, ExitReason::PowerOff, "{console}");
    assert!(console.contains("probe: disk index=0 base=0xc0001000 sectors=2048 serial=ro-0 ro=1"), "{console}");
    assert!(console.contains("probe: marker disk=0 sector=5 write=ioerr"), "{console}");
    assert_eq!(std::fs::read(&path).unwrap(), content);
}

#[test]
fn disks_appear_in_declared_order_with_sizes_and_serials() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [(8192u64, "first"), (100, "second"), (40960, "third-disk-20-bytes")];
    let disks =
        sizes.iter().map(|(sectors, serial)| disk(&image(dir.path(), serial, *sectors), false, serial)).collect();
    let (reason, console) = run(VmConfig { disks, ..config(probe().0, "poweroff") });
    assert_eq!(reason, ExitReason::PowerOff, "{console}");
    let reported: Vec<&str> = console.lines().filter(|l| l.starts_with("probe: disk index=")).collect();
    assert_eq!(reported.len(), 3, "{console}");
    for (index, ((sectors, serial), line)) in sizes.iter().zip(&reported).enumerate() {
        let expected = format!(
            "probe: disk index={index} base={:#x} sectors={sectors} serial={serial} ro=0",
            vmm::arch::layout::virtio_mmio_base(index)
        );
        assert_eq!(line.trim_end(), expected);
    }
}

#[test]
fn missing_or_unreadable_disk_is_a_config_error_naming_the_path() {
    let vm = VmConfig {
        disks: vec![DiskConfig { readonly: true, ..DiskConfig::new("/nonexistent/disk.raw") }],
        ..config(probe().0, "poweroff")
    };
    let error = vmm::Vm::new(vm).err().expect("a missing disk is refused").to_string();
    assert!(error.starts_with("disks[0].path: /nonexistent/disk.raw"), "{error}");
}
