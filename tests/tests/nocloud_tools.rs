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
    let extract = |name: &str| {
        let output = Command::new(&isoinfo).args(["-R", "-x", &format!("/{name}"), "-i"]).arg(&seed.image).output();
        output.unwrap().stdout
    };
    assert_eq!(extract("user-data"), seed.user_data);
    assert_eq!(extract("network-config"), NETWORK_CONFIG.as_bytes());
    let meta: serde_json::Value = serde_json::from_slice(&extract("meta-data")).unwrap();
    assert_eq!(meta["instance-id"], "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10");
}

/// The host kernel's own isofs through a loop device, when this machine has
/// both (root, loop devices, isofs); otherwise the part is skipped with the
/// reason printed — the QEMU test below checks Linux's isofs either way.
#[test]
fn loop_mount_shows_the_files_byte_for_byte_where_possible() {
    let seed = make_seed(true);
    let mountpoint = seed.image.with_file_name("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mount = Command::new("mount").args(["-o", "loop,ro"]).arg(&seed.image).arg(&mountpoint).output();
    match mount {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            eprintln!("skipping the loop mount: {}", String::from_utf8_lossy(&output.stderr).trim());
            return;
        }
        Err(e) => {
            eprintln!("skipping the loop mount: cannot run mount: {e}");
            return;
        }
    }
    let read = |name: &str| std::fs::read(mountpoint.join(name));
    let (user, network, meta) = (read("user-data"), read("network-config"), read("meta-data"));
    let umount = Command::new("umount").arg(&mountpoint).status();
    assert_eq!(user.unwrap(), seed.user_data);
    assert_eq!(network.unwrap(), NETWORK_CONFIG.as_bytes());
    let meta: serde_json::Value = serde_json::from_slice(&meta.unwrap()).unwrap();
    assert_eq!(meta["local-hostname"], "vm-cirros");
    assert!(umount.map(|s| s.success()).unwrap_or(false), "umount {}", mountpoint.display());
}

#[test]
fn oversized_input_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge-user-data");
    std::fs::File::create(&huge).unwrap().set_len((16 << 20) + 1).unwrap();
    let out = dir.path().join("seed.iso");
    let output = Command::new(kvmlet_bin())
        .arg("nocloud")
        .arg("--user-data")
        .arg(&huge)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("huge-user-data") && stderr.contains("16777217 bytes"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn defaults_match_cloud_localds() {
    let xorriso = require_tool("xorriso", "xorriso");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user-data"), "#cloud-config\n").unwrap();
    let image = dir.path().join("seed.iso");
    let output = Command::new(kvmlet_bin())
        .arg("nocloud")
        .arg("--user-data")
        .arg(dir.path().join("user-data"))
        .arg("--out")
        .arg(&image)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = dir.path().join("extracted");
    let status = Command::new(xorriso)
        .args(["-osirrox", "on", "-indev"])
        .arg(&image)
        .args(["-extract", "/"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("meta-data")).unwrap()).unwrap();
    assert_eq!(meta, serde_json::json!({"instance-id": "iid-local01"}), "no hostname unless given");
    // Same inputs, same bytes: the image has fixed timestamps.
    let again = dir.path().join("again.iso");
    let status = Command::new(kvmlet_bin())
        .arg("nocloud")
        .arg("--user-data")
        .arg(dir.path().join("user-data"))
        .arg("--out")
        .arg(&again)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&image).unwrap(), std::fs::read(&again).unwrap());
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
