//! Boots the probe guest (tests/probe) on real KVM and checks that what it
//! reports matches the VmConfig, and that every way a VM ends is reported.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use uuid::Uuid;
use vmm::{ConsoleConfig, Error, ExitReason, Vm, VmConfig};

const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// (bzImage, PVH ELF), built once per test binary by tests/probe/build.
fn probe() -> &'static (PathBuf, PathBuf) {
    static PROBE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PROBE.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/probe/build");
        let output = Command::new(&script).output().expect("run tests/probe/build");
        assert!(output.status.success(), "tests/probe/build: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut lines = stdout.lines().rev();
        let bzimage = PathBuf::from(lines.next().unwrap());
        let elf = PathBuf::from(lines.next().unwrap());
        (bzimage, elf)
    })
}

fn config(kernel: &PathBuf, action: &str) -> VmConfig {
    VmConfig {
        cmdline: format!("probe.action={action}"),
        console: ConsoleConfig { ring_bytes: 64 << 10, ..Default::default() },
        ..VmConfig::new(kernel)
    }
}

/// Runs the VM to its end; returns the exit reason and the console output.
fn run(config: VmConfig) -> (ExitReason, String) {
    let mut vm = Vm::new(config).expect("build the VM");
    vm.start().unwrap();
    let reason = vm.wait_timeout(GUEST_TIMEOUT).expect("the guest ended");
    (reason, vm.console().unwrap().text())
}

fn report<'a>(console: &'a str, key: &str) -> &'a str {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("probe: "))
        .flat_map(|l| l.split(' '))
        .find_map(|field| field.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("probe did not report {key}:\n{console}"))
}

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
            ..config(&probe().0, "poweroff")
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
    let (reason, console) = run(VmConfig { vcpus: 2, ..config(&probe().1, "poweroff") });
    assert_eq!(reason, ExitReason::PowerOff, "{console}");
    assert_eq!(report(&console, "protocol"), "pvh");
    assert_eq!(report(&console, "cpus"), "2");
    assert!(!console.contains("probe: error"), "{console}");
}

#[test]
fn power_button_powers_off_a_waiting_guest() {
    let mut vm = Vm::new(config(&probe().0, "wait")).unwrap();
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
        let (reason, console) = run(VmConfig { cmdline: cmdline.into(), ..config(&probe().0, "reboot") });
        assert_eq!(reason, ExitReason::Reboot, "{cmdline}: {console}");
    }
}

#[test]
fn triple_fault_is_reported() {
    let (reason, console) = run(config(&probe().0, "triple-fault"));
    assert_eq!(reason, ExitReason::TripleFault, "{console}");
}

#[test]
fn kill_stops_a_spinning_guest() {
    let mut vm = Vm::new(VmConfig { vcpus: 2, ..config(&probe().0, "spin") }).unwrap();
    vm.start().unwrap();
    assert!(vm.console().unwrap().wait_for("action=spin", GUEST_TIMEOUT));
    let handle = vm.handle();
    handle.kill();
    assert_eq!(vm.wait_timeout(Duration::from_secs(10)), Some(ExitReason::Killed));
    assert_eq!(handle.exit_reason(), Some(ExitReason::Killed));
}

#[test]
fn dropping_a_running_vm_stops_it() {
    let mut vm = Vm::new(config(&probe().0, "spin")).unwrap();
    vm.start().unwrap();
    let handle = vm.handle();
    drop(vm);
    assert_eq!(handle.exit_reason(), Some(ExitReason::Killed));
}

#[test]
fn invalid_configs_fail_before_any_vcpu_exists() {
    let kernel = &probe().0;
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
