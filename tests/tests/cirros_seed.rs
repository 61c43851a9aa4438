//! The user guide's seed, `examples/vm-cirros.yaml`, byte for byte: a node
//! started with `--registry-mirror docker.io=…` pulls
//! `kubevirt/cirros-container-disk-demo:latest` from a local registry, where
//! the test pushed an image of the real one's shape (one qcow2 file under
//! `/disk/`, a partitioned disk whose ext4 boot partition holds a kernel and
//! its boot loader's configuration), boots the kernel that configuration
//! names (the probe guest) and the guest prints the seed's cloud-init user
//! data. Once with grub.cfg, once with BLS entries, once with extlinux.conf;
//! the node has no `--default-kernel`, so nothing but the disk can boot.

use std::path::Path;

use base64::Engine;
use e2e::boot_disk::{disk, qcow2, PROBE, ROOT_UUID};
use e2e::node::*;
use e2e::registry::{disk_layer, Registry};
use e2e::standalone::{Standalone, NODE_NAME};
use e2e::{kubectl, probe_lines, workspace_root};
use kube::api::Api;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};

const IMAGE: &str = "kubevirt/cirros-container-disk-demo:latest";

/// The seed's text and the user data its cloudInitNoCloud carries.
fn seed() -> (std::path::PathBuf, String) {
    let path = workspace_root().join("examples/vm-cirros.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("image: {IMAGE}\n")), "the seed names {IMAGE}:\n{text}");
    assert!(!text.contains("kernelBoot"), "the seed names no kernel");
    let encoded = text.lines().find_map(|l| l.trim().strip_prefix("userDataBase64: ")).expect("userDataBase64");
    let user_data = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
    (path, String::from_utf8(user_data).unwrap())
}

/// The user data block the probe printed (CR LF back to LF).
fn printed_user_data(console: &str) -> Option<String> {
    let console = console.replace("\r\n", "\n");
    let (_, rest) = console.split_once("probe: user-data begin size=")?;
    let (size, rest) = rest.split_once('\n')?;
    let (data, _) = rest.split_once("\nprobe: user-data end")?;
    assert_eq!(size.parse::<usize>().ok(), Some(data.len()), "the size line matches the data: {console}");
    Some(data.to_string())
}

/// Pushes `qcow2_disk` as the seed's image (`/disk/cirros.img`, as in the
/// real image), runs the seed unchanged against a node mirroring docker.io
/// to the registry, and checks the boot: `chosen` is the BootKernel event's
/// message and `kvmlet inspect`'s boot, `from` the marker the entry's
/// command line carries.
async fn seed_boots(qcow2_disk: &Path, chosen: &str, from: &str) {
    let (seed, user_data) = seed();
    let bytes = std::fs::read(qcow2_disk).unwrap();
    assert_eq!(bytes[..4], *b"QFI\xfb", "the image's disk is qcow2");
    let registry = Registry::start();
    registry.push(IMAGE, &[disk_layer("cirros.img", &bytes)]);
    let mut args = vec!["--node-name".into(), NODE_NAME.into()];
    args.extend(registry.mirror_flags().into_iter().map(Into::into));
    let server = Standalone::start_with(args);
    let client = server.client().await;

    let out = kubectl(Path::new("kubectl"), &server.kubeconfig(), &["apply", "-f", seed.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.kvmlet(&["start", "vm-cirros"]).output().unwrap();
    assert!(out.status.success(), "kvmlet start: {}", String::from_utf8_lossy(&out.stderr));

    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let running = wait_for(&vmis, &server, "vm-cirros", "Running", std::time::Duration::from_secs(120), |v| {
        v.and_then(phase) == Some(Phase::Running)
    })
    .await
    .unwrap();
    let console = wait_console(&server, "vm-cirros", "probe: waiting for power button").await;

    // The disk's kernel, with its boot entry's command line.
    let cmdline = format!("cmdline=probe.action=wait from={from} console=ttyS0");
    assert!(probe_lines(&console).contains(&cmdline.as_str()), "{console}");
    let events = event_reasons(&client, "vm-cirros").await;
    assert!(events
        .iter()
        .any(|(r, m)| r == "Pulled" && m.starts_with(&format!("Successfully pulled image {IMAGE:?}"))));
    assert!(events.iter().any(|(r, m)| r == "BootKernel" && m == chosen), "{chosen}\n{events:?}");
    let out = server.kvmlet(&["inspect", "vm-cirros"]).output().unwrap();
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail["boot"], chosen);

    // The seed's cloud-init user data, byte for byte, from the guest.
    assert_eq!(printed_user_data(&console).as_deref(), Some(user_data.as_str()), "{console}");
    assert!(console.contains("echo 'printed from cloud-init userdata'"), "{console}");

    // The VM runs on its own overlay over the pulled qcow2 file, which stays as pushed.
    let uid = running.metadata.uid.unwrap();
    let overlay = server.run_dir().join("vms").join(&uid).join("disks/disk-0.qcow2");
    assert_eq!(std::fs::read(&overlay).unwrap()[..4], *b"QFI\xfb", "{}", overlay.display());
    let trees: Vec<_> = std::fs::read_dir(server.image_dir().join("unpacked")).unwrap().flatten().collect();
    assert_eq!(trees.len(), 1, "one pulled image");
    assert!(std::fs::read(trees[0].path().join("disk/cirros.img")).unwrap() == bytes, "the base is unchanged");
}

#[tokio::test]
async fn the_seed_boots_grub_cfg_on_a_qcow2_mbr_disk_and_prints_its_user_data() {
    let work = tempfile::tempdir().unwrap();
    // As CirrOS: an MBR disk; here partition 1 is a separate ext4 /boot.
    let grub_cfg = format!(
        "set default=0\nset timeout=1\n\
         menuentry 'CirrOS (probe)' {{\n\
         \tsearch --no-floppy --fs-uuid --set=root {ROOT_UUID}\n\
         \tlinux /vmlinuz-probe probe.action=wait from=grub\n}}\n"
    );
    let raw = disk(work.path(), "cirros", false, false, &[("grub/grub.cfg", &grub_cfg), ("vmlinuz-probe", PROBE)]);
    let chosen = "kernel /vmlinuz-probe from /grub/grub.cfg menuentry \"CirrOS (probe)\" (default \"0\") on disk \
                  containerdisk partition 1";
    seed_boots(&qcow2(&raw, false), chosen, "grub").await;
}

#[tokio::test]
async fn the_seed_boots_bls_entries_on_a_compressed_qcow2_gpt_disk() {
    let work = tempfile::tempdir().unwrap();
    let entry = "title CirrOS BLS\nversion 0.6.2\nlinux /vmlinuz-0.6.2\noptions probe.action=wait from=bls\n";
    let raw = disk(
        work.path(),
        "cirros-bls",
        true,
        false,
        &[("loader/entries/cirros-0.6.2.conf", entry), ("vmlinuz-0.6.2", PROBE)],
    );
    let chosen = "kernel /vmlinuz-0.6.2 from /loader/entries/cirros-0.6.2.conf \"CirrOS BLS\" (the first entry) on \
                  disk containerdisk partition 1";
    seed_boots(&qcow2(&raw, true), chosen, "bls").await;
}

#[tokio::test]
async fn the_seed_boots_extlinux_conf_on_a_qcow2_gpt_disk() {
    let work = tempfile::tempdir().unwrap();
    let conf = "DEFAULT cirros\nLABEL cirros\n  LINUX /boot/vmlinuz\n  APPEND probe.action=wait from=extlinux\n";
    let raw = disk(
        work.path(),
        "cirros-extlinux",
        true,
        false,
        &[("boot/extlinux/extlinux.conf", conf), ("boot/vmlinuz", PROBE)],
    );
    let chosen = "kernel /boot/vmlinuz from /boot/extlinux/extlinux.conf label \"cirros\" (DEFAULT cirros) on disk \
                  containerdisk partition 1";
    seed_boots(&qcow2(&raw, false), chosen, "extlinux").await;
}
