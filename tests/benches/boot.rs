//! Boot benchmark: the probe guest booted N times by `kvmlet run` and by QEMU's
//! `microvm` machine on the same image (the PVH ELF, which both load directly).
//!
//! `cargo bench -p kvmlet-e2e --bench boot [-- RUNS]` prints one table:
//! process start → first serial byte, process start → power-off exit, and the
//! VMM's own memory: peak RSS minus the guest memory the guest touched.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::bench::{ms, percentile, release_kvmlet};
use e2e::{probe, require_tool};

const MEMORY_MIB: u64 = 128;

/// How to start one VMM on the probe image with a given probe action.
trait Vmm {
    fn name(&self) -> &'static str;
    fn command(&self, image: &Path, action: &str) -> Command;
}

/// `kvmlet run`, jailed (namespaces, uid 107, Landlock, seccomp per thread:
/// its default as root) or not (`--no-jail --seccomp off`).
struct Kvmlet {
    binary: PathBuf,
    jailed: bool,
}

impl Vmm for Kvmlet {
    fn name(&self) -> &'static str {
        if self.jailed {
            "kvmlet (jailed)"
        } else {
            "kvmlet (no jail)"
        }
    }
    fn command(&self, image: &Path, action: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run").arg("--kernel").arg(image);
        if !self.jailed {
            cmd.args(["--seccomp", "off", "--no-jail"]);
        }
        cmd.args(["--memory", &MEMORY_MIB.to_string(), "--cmdline", &format!("probe.action={action}")]);
        cmd
    }
}

struct QemuMicrovm(PathBuf);

impl Vmm for QemuMicrovm {
    fn name(&self) -> &'static str {
        "qemu microvm"
    }
    fn command(&self, image: &Path, action: &str) -> Command {
        let mut cmd = Command::new(&self.0);
        // `-cpu host` minus arch-capabilities: nested KVM here refuses that MSR.
        cmd.args(["-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-smp", "1"]);
        cmd.args(["-m", &format!("{MEMORY_MIB}M"), "-nodefaults", "-no-user-config", "-display", "none"]);
        cmd.args(["-serial", "stdio", "-no-reboot", "-kernel"]).arg(image);
        cmd.args(["-append", &format!("probe.action={action}")]);
        cmd
    }
}

struct BootTimes {
    first_byte: Duration,
    exit: Duration,
}

fn spawn(vmm: &dyn Vmm, image: &Path, action: &str) -> (Instant, Child) {
    let mut cmd = vmm.command(image, action);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", vmm.name()));
    (start, child)
}

/// One boot to power-off.
fn boot_once(vmm: &dyn Vmm, image: &Path) -> BootTimes {
    let (start, mut child) = spawn(vmm, image, "poweroff");
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    let read = stdout.read(&mut byte).expect("read console");
    let first_byte = start.elapsed();
    assert_eq!(read, 1, "{} printed nothing", vmm.name());
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("read console");
    let status = child.wait().expect("wait for the VMM");
    let exit = start.elapsed();
    let console = String::from_utf8_lossy(&rest);
    assert!(console.contains("probe: done"), "{} run did not finish the probe:\n{console}", vmm.name());
    assert!(status.success(), "{} exited with {status}", vmm.name());
    BootTimes { first_byte, exit }
}

/// Memory of a VMM whose guest has booted and spins: (peak RSS, guest RAM resident), KiB.
fn memory_once(vmm: &dyn Vmm, image: &Path) -> (u64, u64) {
    let (_, mut child) = spawn(vmm, image, "spin");
    let mut stdout = child.stdout.take().unwrap();
    let mut console = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&console).contains("probe: action=spin") {
        let n = stdout.read(&mut buf).expect("read console");
        assert!(n > 0, "{} exited before the probe spun", vmm.name());
        console.extend_from_slice(&buf[..n]);
    }
    let pid = guest_runner(child.id());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status_kib(&status, "VmHWM:");
    let guest = guest_ram_resident_kib(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    (hwm, guest)
}

/// The process running the guest: a jailed `kvmlet run`'s only child (the
/// VM process, in its own PID namespace), else the process itself.
fn guest_runner(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let children: Vec<u32> = children.split_whitespace().filter_map(|c| c.parse().ok()).collect();
    match children[..] {
        [only] => only,
        _ => pid,
    }
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from /proc status"))
}

/// Resident size of the guest RAM mapping: the anonymous mapping at least as
/// large as the guest's memory (QEMU may round it up by a few MiB).
fn guest_ram_resident_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let guest_kib = MEMORY_MIB * 1024;
    let mut best: Option<(u64, u64)> = None; // (size, rss)
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            let fits = size >= guest_kib && size <= guest_kib + 8 * 1024;
            if fits && best.is_none_or(|(s, _)| size < s) {
                best = Some((size, rss));
            }
        }
    }
    best.map(|(_, rss)| rss).unwrap_or_else(|| panic!("no guest RAM mapping of {guest_kib} KiB in pid {pid}"))
}

struct Figures {
    first_byte_p50: Duration,
    first_byte_p90: Duration,
    exit_p50: Duration,
    exit_p90: Duration,
    peak_rss_kib: u64,
    guest_kib: u64,
}

/// Boots each VMM `runs` times, taking turns round by round, so that a
/// change in the machine's load reaches every column alike.
fn measure(vmms: &[Box<dyn Vmm>], image: &Path, runs: usize) -> Vec<Figures> {
    for vmm in vmms {
        boot_once(vmm.as_ref(), image); // warm the page cache
    }
    let mut times: Vec<Vec<BootTimes>> = vmms.iter().map(|_| Vec::with_capacity(runs)).collect();
    for _ in 0..runs {
        for (vmm, times) in vmms.iter().zip(&mut times) {
            times.push(boot_once(vmm.as_ref(), image));
        }
    }
    vmms.iter()
        .zip(times)
        .map(|(vmm, times)| {
            let mut first: Vec<Duration> = times.iter().map(|t| t.first_byte).collect();
            let mut exit: Vec<Duration> = times.iter().map(|t| t.exit).collect();
            let (peak_rss_kib, guest_kib) = memory_once(vmm.as_ref(), image);
            Figures {
                first_byte_p50: percentile(&mut first, 0.5),
                first_byte_p90: percentile(&mut first, 0.9),
                exit_p50: percentile(&mut exit, 0.5),
                exit_p90: percentile(&mut exit, 0.9),
                peak_rss_kib,
                guest_kib,
            }
        })
        .collect()
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20);
    let image = &probe().elf;
    let vmms: Vec<Box<dyn Vmm>> = vec![
        Box::new(Kvmlet { binary: release_kvmlet(), jailed: false }),
        Box::new(Kvmlet { binary: release_kvmlet(), jailed: true }),
        Box::new(QemuMicrovm(require_tool("qemu-system-x86_64", "qemu-system-x86"))),
    ];
    let figures = measure(&vmms, image, runs);

    println!("\nboot benchmark: probe guest {} ({runs} runs each, 1 vCPU, {MEMORY_MIB} MiB)", image.display());
    print!("{:<44}", "");
    for vmm in &vmms {
        print!("{:>22}", vmm.name());
    }
    println!();
    type Row = (&'static str, fn(&Figures) -> String);
    let rows: [Row; 7] = [
        ("process start -> first serial byte, p50", |f| ms(f.first_byte_p50)),
        ("process start -> first serial byte, p90", |f| ms(f.first_byte_p90)),
        ("process start -> power-off exit, p50", |f| ms(f.exit_p50)),
        ("process start -> power-off exit, p90", |f| ms(f.exit_p90)),
        ("peak RSS of the VMM process", |f| mib(f.peak_rss_kib)),
        ("guest memory touched", |f| mib(f.guest_kib)),
        ("VMM overhead (peak RSS - guest touched)", |f| mib(f.peak_rss_kib.saturating_sub(f.guest_kib))),
    ];
    for (label, value) in rows {
        print!("{label:<44}");
        for f in &figures {
            print!("{:>22}", value(f));
        }
        println!();
    }
}
