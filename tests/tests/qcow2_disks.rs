//! qcow2 disks as the guest reads them, on images qemu-img made: zlib
//! compressed clusters (qcow2 v2 and v3) and a backing file given
//! explicitly, through `kvmlet run` (jailed, seccomp on); and container
//! disks on per-VM overlays over one shared base, through the node loop,
//! across guest reboots too. The probe reads sectors back
//! (`probe.blk_read`) and prints a checksum of each, which these tests
//! recompute from the pattern they wrote.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use e2e::node::*;
use e2e::standalone::Standalone;
use e2e::{kvmlet_bin, probe, probe_lines, require_tool};
use kube::api::{Api, DeleteParams};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

const SECTOR: usize = 512;
/// 8 MiB: 128 clusters of qemu-img's default 64 KiB.
const SECTORS: u64 = 16384;
/// The probe's marker sector starts with these bytes.
const MARKER_HEAD: &[u8; 16] = b"KVMLET-PROBE-MAR";

/// Sector `n` of the base image: its number in text, then bytes that
/// depend on it (compressible, and different in every sector).
fn base_sector(n: u64) -> Vec<u8> {
    let mut sector: Vec<u8> = (0..SECTOR as u64).map(|i| ((n * 131 + i * 7) % 251) as u8).collect();
    let label = format!("BASE sector={n:06}");
    sector[..label.len()].copy_from_slice(label.as_bytes());
    sector
}

fn base_image(dir: &Path) -> PathBuf {
    let path = dir.join("base.raw");
    std::fs::write(&path, (0..SECTORS).flat_map(base_sector).collect::<Vec<u8>>()).unwrap();
    path
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The probe's `blk-read` line for `sector`.
fn read_line(console: &str, sector: u64) -> &str {
    let needle = format!(" sector={sector} ");
    probe_lines(console)
        .into_iter()
        .find(|line| line.starts_with("blk-read ") && line.contains(&needle))
        .unwrap_or_else(|| panic!("no blk-read of sector {sector}:\n{console}"))
}

/// Asserts the guest read `expected` at `sector`.
fn assert_read(console: &str, sector: u64, expected: &[u8]) {
    let line = read_line(console, sector);
    let want = format!("status=ok fnv={:016x} head={}", fnv1a(expected), hex(&expected[..16]));
    assert!(line.ends_with(&want), "sector {sector}: read `{line}`, expected `{want}`\n{console}");
}

/// Asserts the guest read back the probe's marker at `sector`.
fn assert_marker(console: &str, sector: u64) {
    let line = read_line(console, sector);
    assert!(line.ends_with(&format!("head={}", hex(MARKER_HEAD))), "sector {sector}: `{line}`\n{console}");
}

fn tool(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn sha256(path: &Path) -> String {
    String::from_utf8(tool("sha256sum", &[path.to_str().unwrap()]).stdout).unwrap()
}

fn kvmlet_run(args: &[&str]) -> (i32, String, String) {
    let output =
        Command::new(kvmlet_bin()).arg("run").arg("--kernel").arg(&probe().bzimage).args(args).output().unwrap();
    let code = output.status.code().expect("exited normally");
    (code, String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `qemu-img convert -c`: every cluster of `base` zlib-compressed.
fn compressed(base: &Path, to: &Path, compat: &str) {
    let (base, to) = (base.to_str().unwrap(), to.to_str().unwrap());
    tool("qemu-img", &["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", &format!("compat={compat}"), base, to]);
}

#[test]
fn compressed_images_of_qcow2_v2_and_v3_read_back() {
    require_tool("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path());
    for (compat, version) in [("1.1", 3u32), ("0.10", 2)] {
        let image = dir.path().join(format!("compressed-v{version}.img"));
        compressed(&base, &image, compat);
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(bytes[..4], *b"QFI\xfb");
        assert_eq!(u32::from_be_bytes(bytes[4..8].try_into().unwrap()), version);
        assert!(bytes.len() < (SECTORS as usize * SECTOR) / 4, "the clusters are compressed: {} bytes", bytes.len());

        let disk = format!("{},readonly,serial=v{version}", image.display());
        let reads = [0u64, 1, 127, 128, 2047, 4096, 9999, SECTORS - 1];
        let list = reads.map(|s| s.to_string()).join(",");
        let cmdline = format!("probe.action=poweroff probe.blk_read={list}");
        let (code, console, stderr) = kvmlet_run(&["--disk", &disk, "--cmdline", &cmdline]);
        assert_eq!(code, 0, "{stderr}\n{console}");
        assert!(console.contains(&format!("sectors={SECTORS} serial=v{version} ro=1")), "{console}");
        for sector in reads {
            assert_read(&console, sector, &base_sector(sector));
        }
    }
}

#[test]
fn a_backing_file_is_used_only_when_given_and_writes_stay_in_the_overlay() {
    require_tool("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path());
    let overlay = dir.path().join("overlay.qcow2");
    let (base_arg, overlay_arg) = (base.to_str().unwrap(), overlay.to_str().unwrap());
    tool("qemu-img", &["create", "-f", "qcow2", "-b", base_arg, "-F", "raw", overlay_arg]);
    // The overlay's own data: 64 KiB of 0x5a at 1 MiB (sectors 2048..2176).
    tool("qemu-io", &["-c", "write -P 0x5a 1M 64k", overlay_arg]);
    let base_sha = sha256(&base);

    // The header names the base, but kvmlet opens only what it is given.
    let (code, console, stderr) = kvmlet_run(&["--disk", overlay_arg, "--cmdline", "probe.action=poweroff"]);
    assert_ne!(code, 0, "{console}");
    assert!(stderr.contains("names the backing file") && stderr.contains(base_arg), "{stderr}");
    assert!(!console.contains("probe: start"), "no guest ran: {console}");

    let disk = format!("{overlay_arg},backing={base_arg}");
    let cmdline = "probe.action=poweroff probe.marker_sector=100 probe.blk_read=0,99,100,2047,2048,2175,2176,16383";
    let (code, console, stderr) = kvmlet_run(&["--disk", &disk, "--cmdline", cmdline]);
    assert_eq!(code, 0, "{stderr}\n{console}");
    assert!(console.contains("probe: marker disk=0 sector=100 write=ok flush=ok readback=marker"), "{console}");
    for sector in [0, 99, 2047, 2176, 16383] {
        assert_read(&console, sector, &base_sector(sector));
    }
    for sector in [2048, 2175] {
        assert_read(&console, sector, &[0x5a; SECTOR]);
    }
    assert_marker(&console, 100);

    // The write is in the overlay, which qemu-img still finds consistent;
    // the base is byte for byte what it was.
    assert_eq!(sha256(&base), base_sha, "the base is unchanged");
    tool("qemu-img", &["check", overlay_arg]);
    let flat = dir.path().join("flat.raw");
    tool("qemu-img", &["convert", "-O", "raw", overlay_arg, flat.to_str().unwrap()]);
    let flat = std::fs::read(&flat).unwrap();
    assert_eq!(flat[100 * SECTOR..100 * SECTOR + 16], *MARKER_HEAD, "the marker landed in the overlay");
    assert_eq!(flat[99 * SECTOR..100 * SECTOR], base_sector(99)[..]);
}

/// A node with a hand-made container image `example.org/qcow2-disk:v1`
/// whose disk is a compressed qcow2 of the base pattern; returns its path.
fn node_with_image() -> (Standalone, PathBuf) {
    require_tool("qemu-img", "qemu-utils");
    let server = Standalone::with_node(&[]);
    let image_dir = server.image_dir().join("example.org/qcow2-disk:v1/disk");
    std::fs::create_dir_all(&image_dir).unwrap();
    let raw = base_image(server.data_dir());
    let image = image_dir.join("disk.img");
    compressed(&raw, &image, "1.1");
    (server, image)
}

fn overlay_of(server: &Standalone, vmi: &VirtualMachineInstance) -> PathBuf {
    let uid = vmi.metadata.uid.as_deref().unwrap();
    server.run_dir().join("vms").join(uid).join("disks/disk-0.qcow2")
}

#[tokio::test]
async fn container_disks_run_on_private_overlays_over_one_shared_base() {
    let (server, image) = node_with_image();
    let image_sha = sha256(&image);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());

    let args = |marker: u64| format!("probe.action=wait probe.marker_sector={marker} probe.blk_read=0,100,200,16383");
    create(&vmis, &container_disk_vmi("first", "example.org/qcow2-disk:v1", &args(100), json!({}))).await;
    let first = wait_for_phase(&vmis, &server, "first", Phase::Running).await;
    let first_console = wait_console(&server, "first", "probe: waiting for power button").await;
    // Only then the second: its guest must not see the first one's write.
    create(&vmis, &container_disk_vmi("second", "example.org/qcow2-disk:v1", &args(200), json!({}))).await;
    let second = wait_for_phase(&vmis, &server, "second", Phase::Running).await;
    let second_console = wait_console(&server, "second", "probe: waiting for power button").await;

    for console in [&first_console, &second_console] {
        assert!(console.contains(&format!("probe: disk index=0 base=0xc0001000 sectors={SECTORS}")), "{console}");
        assert_read(console, 0, &base_sector(0));
        assert_read(console, 16383, &base_sector(16383));
    }
    assert_marker(&first_console, 100);
    assert_read(&first_console, 200, &base_sector(200));
    assert_read(&second_console, 100, &base_sector(100));
    assert_marker(&second_console, 200);

    // Each VM has its own small overlay, private to the node; the image is
    // shared, never copied, and unchanged.
    for vmi in [&first, &second] {
        let overlay = overlay_of(&server, vmi);
        let meta = std::fs::metadata(&overlay).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", overlay.display());
        assert!(meta.len() < 1 << 20, "{}: {} bytes", overlay.display(), meta.len());
        assert_eq!(std::fs::read(&overlay).unwrap()[..4], *b"QFI\xfb");
        let disks: Vec<_> =
            std::fs::read_dir(overlay.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(disks, ["disk-0.qcow2"], "no copy of the image");
        // qemu-img reads the overlay over the base its header names (-U: the VM holds it).
        let flat = overlay.with_extension("flat");
        tool("qemu-img", &["convert", "-U", "-O", "raw", overlay.to_str().unwrap(), flat.to_str().unwrap()]);
        let flat_bytes = std::fs::read(&flat).unwrap();
        std::fs::remove_file(&flat).unwrap();
        let (own, other) = if std::ptr::eq(vmi, &first) { (100, 200) } else { (200, 100) };
        assert_eq!(flat_bytes[own * SECTOR..own * SECTOR + 16], *MARKER_HEAD, "{}", overlay.display());
        assert_eq!(flat_bytes[other * SECTOR..(other + 1) * SECTOR], base_sector(other as u64)[..]);
    }
    assert_eq!(sha256(&image), image_sha, "the container image is unchanged");

    let (first_overlay, second_overlay) = (overlay_of(&server, &first), overlay_of(&server, &second));
    for name in ["first", "second"] {
        vmis.delete(name, &DeleteParams::default()).await.unwrap();
        wait_gone(&vmis, &server, name).await;
    }
    assert!(!first_overlay.exists() && !second_overlay.exists(), "the overlays go with their VMIs");
    assert!(image.exists(), "the image stays");
}

/// Each boot rebuilds the VM from duplicated descriptors, the overlay's
/// qcow2 state included, inside the jail and under seccomp.
#[tokio::test]
async fn a_rebooting_guest_keeps_reading_and_writing_its_overlay() {
    let (server, _image) = node_with_image();
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let args = "probe.action=reboot probe.marker_sector=300 probe.blk_read=300,301";
    create(&vmis, &container_disk_vmi("rebooter", "example.org/qcow2-disk:v1", args, json!({}))).await;
    wait_for_phase(&vmis, &server, "rebooter", Phase::Running).await;
    let pid = ps_entry(&server, "rebooter").unwrap()["pid"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let Some(entry) = ps_entry(&server, "rebooter") else {
            let vmi = vmis.get("rebooter").await.unwrap();
            panic!("the VM process is gone: {:?}", vmi.status);
        };
        if entry["boots"].as_u64().unwrap() >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the guest did not boot three times: {:?}", ps(&server));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ps_entry(&server, "rebooter").unwrap()["pid"].as_i64(), Some(pid), "same VM process");
    let console = wait_console(&server, "rebooter", "probe: blk-read disk=0 sector=301").await;
    let marker = format!("blk-read disk=0 sector=300 status=ok fnv={:016x}", {
        let mut sector = vec![0u8; SECTOR];
        let text = b"KVMLET-PROBE-MARKER sector=300";
        sector[..text.len()].copy_from_slice(text);
        fnv1a(&sector)
    });
    let boots_reading_the_marker = probe_lines(&console).iter().filter(|l| l.starts_with(&marker)).count();
    assert!(boots_reading_the_marker >= 2, "every boot reads its marker back:\n{console}");
    assert!(!console.contains("probe: error") && !console.contains("status=ioerr"), "{console}");
    assert_read(&console, 301, &base_sector(301));
    vmis.delete("rebooter", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "rebooter").await;
}
