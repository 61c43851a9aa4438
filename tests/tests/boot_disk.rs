//! Booting a disk's own kernel: the probe guest installed on partitioned
//! disks made by the real tools (sfdisk/sgdisk, mkfs.ext4 -d, mkfs.fat +
//! mcopy) with grub.cfg, BLS entries or extlinux.conf, booted through
//! `kvmlet run --boot-from-disk` and through the node loop (a containerDisk
//! VMI without kernelBoot).

use std::path::Path;
use std::process::Command;

use e2e::boot_disk::disk;
use e2e::node::*;
use e2e::standalone::{Standalone, NODE_NAME};
use e2e::{kvmlet_bin, probe, probe_lines, probe_value};
use kube::api::{Api, DeleteParams};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

const GRUB_CFG: &str = "\
set default=\"1\"
menuentry 'Probe (old)' {
\tlinux /boot/missing-kernel
}
menuentry 'Probe' --class probe {
\tsearch --no-floppy --fs-uuid --set=root 6b1d3c52-8a0e-4f7d-9c2b-1e5a7f3d9b40
\tlinux /boot/probe.bzImage probe.action=poweroff from=grub
}
";

/// `kvmlet run --disk DISK --boot-from-disk ARGS`: (exit code, console, log).
fn run_from_disk(disk: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kvmlet_bin())
        .arg("run")
        .arg("--disk")
        .arg(disk)
        .arg("--boot-from-disk")
        .args(["--memory", "64"])
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn kvmlet_run_boots_the_kernel_grub_cfg_bls_and_extlinux_choose() {
    let work = tempfile::tempdir().unwrap();
    // MBR, ext4 root with /boot/grub/grub.cfg; --cmdline is appended.
    let grub =
        disk(work.path(), "grub", false, false, &[("boot/grub/grub.cfg", GRUB_CFG), ("boot/probe.bzImage", "PROBE")]);
    let (code, console, log) = run_from_disk(&grub, &["--cmdline", "extra=1"]);
    assert_eq!(code, 0, "{log}\n{console}");
    assert_eq!(probe_value(&console, "cmdline", "cmdline"), Some("probe.action=poweroff"), "{console}");
    assert!(
        probe_lines(&console).contains(&"cmdline=probe.action=poweroff from=grub console=ttyS0 extra=1"),
        "{console}"
    );
    let disk_name = grub.display();
    assert!(
        log.contains(&format!(
            "booting kernel /boot/probe.bzImage from /boot/grub/grub.cfg menuentry \"Probe\" (default \"1\") on disk \
             {disk_name} partition 1"
        )),
        "{log}"
    );

    // GPT with an EFI system partition holding BLS entries (FAT).
    let entry = "title Probe BLS\nversion 1.2\nlinux /probe/1.2/linux\noptions probe.action=poweroff from=bls\n";
    let older = "title Probe BLS old\nversion 1.1\nlinux /probe/1.1/linux\noptions from=old\n";
    let bls = disk(
        work.path(),
        "bls",
        true,
        true,
        &[
            ("loader/entries/probe-1.2.conf", entry),
            ("loader/entries/probe-1.1.conf", older),
            ("probe/1.2/linux", "PROBE"),
        ],
    );
    let (code, console, log) = run_from_disk(&bls, &[]);
    assert_eq!(code, 0, "{log}\n{console}");
    assert!(probe_lines(&console).contains(&"cmdline=probe.action=poweroff from=bls console=ttyS0"), "{console}");
    assert!(log.contains("from /loader/entries/probe-1.2.conf \"Probe BLS\" (the first entry)"), "{log}");

    // GPT, ext4 with extlinux.conf and a relative kernel path.
    let conf = "DEFAULT probe\nLABEL probe\n  LINUX ../probe.bzImage\n  APPEND probe.action=poweroff from=extlinux console=ttyS0,115200\n";
    let extlinux = disk(
        work.path(),
        "extlinux",
        true,
        false,
        &[("boot/extlinux/extlinux.conf", conf), ("boot/probe.bzImage", "PROBE")],
    );
    let (code, console, log) = run_from_disk(&extlinux, &[]);
    assert_eq!(code, 0, "{log}\n{console}");
    assert!(
        probe_lines(&console).contains(&"cmdline=probe.action=poweroff from=extlinux console=ttyS0,115200"),
        "{console}"
    );
    assert!(log.contains("kernel /boot/probe.bzImage from /boot/extlinux/extlinux.conf label \"probe\""), "{log}");

    // A disk without a kernel, and --kernel with --boot-from-disk: refused by name.
    let empty = disk(work.path(), "empty", false, false, &[("etc/hostname", "x\n")]);
    let (code, console, log) = run_from_disk(&empty, &[]);
    assert_eq!(code, 1);
    assert!(console.is_empty());
    assert!(log.contains("--boot-from-disk: disk ") && log.contains("no bootable kernel: looked for"), "{log}");
    let (code, _, log) = run_from_disk(&empty, &["--kernel", "/nonexistent"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("cannot be used with"), "{log}");
}

fn disk_vmi(name: &str, image: &str) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "devices": {"disks": [
                    {"name": "cloudinit", "disk": {"bus": "virtio"}},
                    {"name": "root", "disk": {"bus": "virtio"}},
                ]},
            },
            "volumes": [
                {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\n"}},
                {"name": "root", "containerDisk": {"image": image}},
            ],
        },
    }))
    .unwrap()
}

/// Puts `disk` on the node as container image `REF` (IMAGE_DIR/REF/disk/disk.img).
fn install_image(server: &Standalone, reference: &str, disk: &Path) {
    let dir = server.image_dir().join(reference).join("disk");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(disk, dir.join("disk.img")).unwrap();
}

#[tokio::test]
async fn the_node_boots_a_vmi_without_kernel_boot_from_its_disk() {
    let work = tempfile::tempdir().unwrap();
    let cfg = GRUB_CFG.replace("probe.action=poweroff", "probe.action=wait");
    let grub = disk(work.path(), "grub", true, false, &[("boot/grub/grub.cfg", &cfg), ("boot/probe.bzImage", "PROBE")]);
    let empty = disk(work.path(), "empty", false, false, &[("etc/hostname", "x\n")]);
    let server = Standalone::with_node(&[]);
    install_image(&server, "example.org/grub-disk:v1", &grub);
    install_image(&server, "example.org/empty-disk:v1", &empty);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());

    create(&vmis, &disk_vmi("grub", "example.org/grub-disk:v1")).await;
    let running = wait_for_phase(&vmis, &server, "grub", Phase::Running).await;
    let console = wait_console(&server, "grub", "probe: waiting for power button").await;
    assert!(probe_lines(&console).contains(&"cmdline=probe.action=wait from=grub console=ttyS0"), "{console}");
    let chosen =
        "kernel /boot/probe.bzImage from /boot/grub/grub.cfg menuentry \"Probe\" (default \"1\") on disk root \
                  partition 1";
    let events = event_reasons(&client, "grub").await;
    assert!(events.iter().any(|(r, m)| r == "BootKernel" && m == chosen), "{events:?}");
    let out = server.kvmlet(&["inspect", "grub"]).output().unwrap();
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail["boot"], chosen);
    let uid = running.metadata.uid.clone().unwrap();
    let kernel = server.run_dir().join("vms").join(&uid).join("boot/kernel");
    assert_eq!(detail["config"]["kernel"], kernel.to_str().unwrap());
    assert_eq!(std::fs::read(&kernel).unwrap(), std::fs::read(&probe().bzimage).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&kernel).unwrap().permissions().mode() & 0o777, 0o600);
    vmis.delete("grub", &DeleteParams::default()).await.unwrap();

    // No kernel on the disk: the node's default kernel, said in a warning.
    create(&vmis, &disk_vmi("fallback", "example.org/empty-disk:v1")).await;
    // The default kernel may power off at once: Running is looked for in
    // the VMI's phase history, not only as its current phase.
    let ran = |vmi: Option<&VirtualMachineInstance>| {
        let transitions = vmi.and_then(|v| v.status.as_ref()).map(|s| s.phase_transition_timestamps.as_slice());
        transitions.unwrap_or_default().iter().any(|t| t.phase == Phase::Running)
    };
    wait_for(&vmis, &server, "fallback", "Running (now or before)", std::time::Duration::from_secs(60), ran).await;
    let events = event_reasons(&client, "fallback").await;
    let fallback = events.iter().find(|(r, _)| r == "BootKernel").map(|(_, m)| m.as_str()).unwrap_or_default();
    assert!(fallback.starts_with("disk root: no bootable kernel: looked for /loader/entries/*.conf"), "{events:?}");
    assert!(
        fallback.ends_with(&format!("booting the node's default kernel {}", probe().bzimage.display())),
        "{fallback}"
    );
    vmis.delete("fallback", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "grub").await;
    wait_gone(&vmis, &server, "fallback").await;

    // A node without a default kernel fails the VMI, naming the disk and what was looked for.
    let bare = Standalone::start_with(vec!["--node-name".into(), NODE_NAME.into()]);
    install_image(&bare, "example.org/empty-disk:v1", &empty);
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(bare.client().await);
    create(&vmis, &disk_vmi("nokernel", "example.org/empty-disk:v1")).await;
    let failed = wait_for_phase(&vmis, &bare, "nokernel", Phase::Failed).await;
    let status = failed.status.unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("a Ready condition");
    let message = ready.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("spec.domain.devices.disks[1]: disk root: no bootable kernel: looked for /loader/entries"),
        "{message}"
    );
    assert!(message.contains("partition 1 (ext4), partition 2 (ext4)"), "{message}");
}
