//! Boots the probe guest (tests/probe) on real KVM and checks that what it
//! reports matches the VmConfig, and that every way a VM ends is reported.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{config, probe, report, run, GUEST_TIMEOUT};
use uuid::Uuid;
use vmm::{Error, ExitReason, Vm, VmConfig};

#[test]
fn probe_report_matches_the_config() {
    for vcpus in [1u8, 2, 4] {
        let uuid = Uuid::new_v4();
        let serial = format!("serial-{vcpus}");
        let memory_mib = 96 + u64::from(vcpus) * 32;
        let config = VmConfig {
            vcpus,
            memory_mib,
            uuid: Some(uuid),
            serial: Some(serial.clone()),
            cmdline: "probe.action=poweroff console=ttyS0 extra.word=x".into(),
            ..config(probe().0, "poweroff")
        };
        let (reason, console) = run(config);
        assert_eq!(reason, ExitReason::PowerOff, "{console}");
        assert_eq!(report(&console, "cpus"), vcpus.to_string());
        assert_eq!(report(&console, "uuid"), uuid.to_string());
        assert_eq!(report(&console, "serial"), serial);
        assert_eq!(report(&console, "ram_top"), format!("{:#x}", memory_mib << 20));
        assert!(console.contains("probe: cmdline=probe.action=poweroff console=ttyS0 extra.word=x"), "{console}");
        assert_eq!(report(&console, "tables"), "ok");
        assert_eq!(report(&console, "protocol"), "linux");
        assert!(console.contains("probe: e820 start=0x9fc00 end=0x100000 type=reserved"), "{console}");
        assert!(!console.contains("probe: error"), "{console}");
    }
}

#[test]
fn pvh_elf_boots_through_hvm_start_info() {
    let (reason, console) = run(VmConfig { vcpus: 2, ..config(probe().1, "poweroff") });
    assert_eq!(reason, ExitReason::PowerOff, "{console}");
    assert_eq!(report(&console, "protocol"), "pvh");
    assert_eq!(report(&console, "cpus"), "2");
    assert!(!console.contains("probe: error"), "{console}");
}

#[test]
fn power_button_powers_off_a_waiting_guest() {
    let mut vm = Vm::new(config(probe().0, "wait")).unwrap();
    vm.start().unwrap();
    let console = vm.console().unwrap().clone();
    assert!(console.wait_for("waiting for power button", GUEST_TIMEOUT), "{}", console.text());
    assert_eq!(vm.wait_timeout(Duration::from_millis(200)), None, "the guest waits for the button");
    vm.power_button().unwrap();
    assert_eq!(vm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::PowerOff), "{}", console.text());
    assert!(console.text().contains("probe: power button"));
}

#[test]
fn reboot_requests_are_reported() {
    for cmdline in ["probe.action=reboot", "probe.action=reboot probe.reboot=i8042"] {
        let (reason, console) = run(VmConfig { cmdline: cmdline.into(), ..config(probe().0, "reboot") });
        assert_eq!(reason, ExitReason::Reboot, "{cmdline}: {console}");
    }
}

#[test]
fn triple_fault_is_reported() {
    let (reason, console) = run(config(probe().0, "triple-fault"));
    assert_eq!(reason, ExitReason::TripleFault, "{console}");
}

#[test]
fn kill_stops_a_spinning_guest() {
    let mut vm = Vm::new(VmConfig { vcpus: 2, ..config(probe().0, "spin") }).unwrap();
    vm.start().unwrap();
    assert!(vm.console().unwrap().wait_for("action=spin", GUEST_TIMEOUT));
    let handle = vm.handle();
    handle.kill();
    assert_eq!(vm.wait_timeout(Duration::from_secs(10)), Some(ExitReason::Killed));
    assert_eq!(handle.exit_reason(), Some(ExitReason::Killed));
}

#[test]
fn dropping_a_running_vm_stops_it() {
    let mut vm = Vm::new(config(probe().0, "spin")).unwrap();
    vm.start().unwrap();
    let handle = vm.handle();
    drop(vm);
    assert_eq!(handle.exit_reason(), Some(ExitReason::Killed));
}

#[test]
fn invalid_configs_fail_before_any_vcpu_exists() {
    let kernel = probe().0;
    let cases: Vec<(VmConfig, &str)> = vec![
        (VmConfig { vcpus: 0, ..VmConfig::new(kernel) }, "vcpus:"),
        (VmConfig { vcpus: 33, ..VmConfig::new(kernel) }, "vcpus:"),
        (VmConfig { memory_mib: 0, ..VmConfig::new(kernel) }, "memory:"),
        (VmConfig { memory_mib: 1 << 30, ..VmConfig::new(kernel) }, "memory:"),
        (VmConfig::new("/nonexistent/kernel"), "kernel: /nonexistent/kernel"),
        (VmConfig::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")), "kernel:"),
        (VmConfig { initrd: Some("/nonexistent/initrd".into()), ..VmConfig::new(kernel) }, "initrd:"),
        (VmConfig { cmdline: "\u{7f}".into(), ..VmConfig::new(kernel) }, "cmdline:"),
        (VmConfig { serial: Some("s".repeat(100)), ..VmConfig::new(kernel) }, "serial:"),
    ];
    for (config, field) in cases {
        match Vm::new(config) {
            Err(Error::Config(e)) => assert!(e.to_string().starts_with(field), "{e} does not name {field}"),
            Err(other) => panic!("expected a config error naming {field}, got {other}"),
            Ok(_) => panic!("config with a bad {field} was accepted"),
        }
    }
}
