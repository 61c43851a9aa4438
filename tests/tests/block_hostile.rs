//! A hostile guest's virtio-blk requests, from a real guest driver (issue 12):
//! the probe submits one DISCARD and one WRITE_ZEROES with 254 segments of
//! 4 MiB of ranges each, where the device advertises one range per request.
//! The device must refuse both, without growing the VM process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e::{kvmlet_bin, probe, probe_value};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const GUEST_MIB: u64 = 64;
/// What the VM process may hold beyond guest RAM: the kvmlet binary, its
/// threads, the device's fixed buffers. The flood used to cost 1.5 GB.
const HOST_OVERHEAD_MIB: u64 = 64;
const DISK_BYTES: u64 = 16 << 20;
/// Only to keep a hung guest from hanging the test run.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The peak resident set (`VmHWM`) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn discard_and_write_zeroes_floods_are_refused_without_growing_the_vm_process() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("sparse.img");
    std::fs::File::create(&disk).unwrap().set_len(DISK_BYTES).unwrap();
    let mut child = Command::new(kvmlet_bin())
        .arg("run")
        .arg("--kernel")
        .arg(&probe().bzimage)
        .args(["--memory", &GUEST_MIB.to_string(), "--disk"])
        .arg(&disk)
        .args(["--cmdline", "probe.action=wait probe.blk_flood=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });

    // The probe floods before it reports `waiting`; the VM process is still up then.
    let mut console = String::new();
    while !console.contains("probe: waiting for power button") {
        match lines.recv_timeout(HANG_GUARD) {
            Ok(line) => console.extend([line.as_str(), "\n"]),
            Err(_) => {
                let peak_kib = peak_rss_kib(e2e::jailed_vm_process(child.id()));
                let _ = child.kill();
                panic!("the probe never waited for the power button (VM process peak {peak_kib} KiB):\n{console}");
            }
        }
    }
    let peak_kib = peak_rss_kib(e2e::jailed_vm_process(child.id()));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "the guest powered off at the button");

    assert_eq!(probe_value(&console, "blk-flood", "segments"), Some("254"), "{console}");
    assert_eq!(probe_value(&console, "blk-flood", "segment_bytes"), Some("4194304"));
    assert_eq!(probe_value(&console, "blk-flood", "discard"), Some("unsupp"), "{console}");
    assert_eq!(probe_value(&console, "blk-flood", "write_zeroes"), Some("unsupp"), "{console}");
    let bound_kib = (GUEST_MIB + HOST_OVERHEAD_MIB) << 10;
    assert!(peak_kib < bound_kib, "the VM process peaked at {peak_kib} KiB (bound {bound_kib} KiB)");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), DISK_BYTES, "the disk kept its size");
}
