//! Shared by the VM tests: the probe guest image, running a VM to its end,
//! and reading the probe's report.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm::{ConsoleConfig, ExitReason, Vm, VmConfig};

pub const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// (bzImage, PVH ELF), built once per test binary by tests/probe/build.
pub fn probe() -> (&'static PathBuf, &'static PathBuf) {
    let images = e2e::probe();
    (&images.bzimage, &images.elf)
}

pub fn config(kernel: &Path, action: &str) -> VmConfig {
    VmConfig {
        cmdline: format!("probe.action={action}"),
        console: ConsoleConfig { ring_bytes: 64 << 10, ..Default::default() },
        ..VmConfig::new(kernel)
    }
}

/// Runs the VM to its end; returns the exit reason and the console output.
pub fn run(config: VmConfig) -> (ExitReason, String) {
    let mut vm = Vm::new(config).expect("build the VM");
    vm.start().unwrap();
    let reason = vm.wait_timeout(GUEST_TIMEOUT).expect("the guest ended");
    (reason, vm.console().unwrap().text())
}

pub fn report<'a>(console: &'a str, key: &str) -> &'a str {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("probe: "))
        .flat_map(|l| l.split(' '))
        .find_map(|field| field.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("probe did not report {key}:\n{console}"))
}
