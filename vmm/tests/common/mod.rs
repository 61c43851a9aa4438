//! Shared by the VM tests: the probe guest image, running a VM to its end,
//! and reading the probe's report.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use vmm::{ConsoleConfig, ExitReason, Vm, VmConfig};

pub const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// (bzImage, PVH ELF), built once per test binary by tests/probe/build, which
/// prints the ELF's path and then the bzImage's as its last two lines.
pub fn probe() -> (&'static PathBuf, &'static PathBuf) {
    static IMAGES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let (bzimage, elf) = IMAGES.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/probe/build");
        let output = Command::new(&script).output().unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} failed:\n{stdout}{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        let [.., elf, bzimage] = lines[..] else { panic!("{} printed no image paths:\n{stdout}", script.display()) };
        let (elf, bzimage) = (PathBuf::from(elf.trim()), PathBuf::from(bzimage.trim()));
        assert!(elf.is_file() && bzimage.is_file(), "{} did not produce its images", script.display());
        (bzimage, elf)
    });
    (bzimage, elf)
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
