//! Stock Linux guests: Debian's cloud kernel with a busybox initramfs, booted
//! by `kvmlet run`. They need a host whose KVM runs guest kernel code natively;
//! elsewhere (such as the nested KVM of this project's CI) each test says why
//! it is skipped and passes without booting.

use std::process::{Command, Output};

use e2e::linux::{host_runs_stock_kernels, linux_guest};
use e2e::{kvm_available, kvmlet_bin};

const UUID: &str = "6f3b1c2a-9d4e-4b7a-8c1d-2e3f4a5b6c7d";
const SERIAL: &str = "kvmlet-linux-test";

/// Returns false (after saying why) when Linux cannot run on this host.
fn linux_can_run(test: &str) -> bool {
    if !kvm_available() {
        eprintln!("SKIPPED {test}: /dev/kvm is not available");
        return false;
    }
    match host_runs_stock_kernels() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn boot(extra: &[&str], cmdline: &str) -> Output {
    let guest = linux_guest();
    let output = Command::new(kvmlet_bin())
        .arg("run")
        .arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initramfs)
        .args(["--cmdline", &format!("console=ttyS0 reboot=k panic=-1 {cmdline}")])
        .args(["--memory", "256", "--uuid", UUID, "--serial", SERIAL])
        .args(extra)
        .output()
        .expect("run kvmlet");
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    output
}

#[test]
fn linux_boots_sees_its_identity_and_powers_off() {
    if !linux_can_run("linux_boots_sees_its_identity_and_powers_off") {
        return;
    }
    let output = boot(&["--vcpus", "2"], "linux-guest.action=poweroff");
    let console = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "kvmlet run failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(console.contains(&format!("linux-guest: uuid={UUID}")), "{console}");
    assert!(console.contains(&format!("linux-guest: serial={SERIAL}")), "{console}");
    assert!(console.contains("linux-guest: product=kvmlet"), "{console}");
    assert!(console.contains("linux-guest: cpus=2"), "{console}");
    assert!(console.contains("linux-guest: done"), "{console}");
}

#[test]
fn linux_runs_cloud_init_user_data_from_the_seed_disk() {
    if !linux_can_run("linux_runs_cloud_init_user_data_from_the_seed_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#!/bin/sh\n\necho 'printed from cloud-init userdata'\n").unwrap();
    let output = boot(&["--cloud-init-user-data", user_data.to_str().unwrap()], "");
    let console = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "kvmlet run failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(console.contains("linux-guest: cidata on vda"), "{console}");
    assert!(console.contains("printed from cloud-init userdata"), "{console}");
}
