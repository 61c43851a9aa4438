//! An idle VM costs its host nothing: a probe waiting for the power button
//! (halted until the GED interrupt) leaves its VM process asleep.

use std::io::{BufReader, Read};
use std::process::{Child, ChildStdout};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts `kvmlet run` with the probe doing `action`; returns once the
/// probe says it waits for the power button.
fn start_waiting(action: &str) -> (Child, BufReader<ChildStdout>) {
    let action = format!("probe.action={action}");
    e2e::run_probe_until(&["--memory", "16", "--cmdline", &action], "probe: waiting for power button")
}

/// Voluntary plus involuntary context switches of every thread of `pid`.
fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(n) =
                line.strip_prefix("voluntary_ctxt_switches:").or(line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    total
}

/// Presses the power button (SIGINT) and returns the rest of the console.
fn power_off(mut child: Child, mut stdout: BufReader<ChildStdout>) -> String {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "the guest powered off by itself: {rest}");
    rest
}

#[test]
fn an_idle_vm_process_sleeps_until_its_guest_wakes() {
    let (child, stdout) = start_waiting("wait");
    // Let the console's last burst end (the flusher then sleeps too).
    std::thread::sleep(Duration::from_secs(1));
    let window = Duration::from_secs(4);
    let vm = e2e::jailed_vm_process(child.id());
    let before = context_switches(vm);
    std::thread::sleep(window);
    let switches = context_switches(vm) - before;
    let per_second = switches as f64 / window.as_secs_f64();
    assert!(per_second < 5.0, "an idle VM process made {switches} context switches in {window:?}");
    // Console output written after the idle spell still arrives, whole.
    let rest = power_off(child, stdout);
    assert!(rest.contains("probe: power button events="), "{rest}");
    assert!(rest.contains("probe: done"), "{rest}");
}

#[test]
fn the_polling_wait_still_sees_the_power_button() {
    let (child, stdout) = start_waiting("wait-poll");
    let rest = power_off(child, stdout);
    assert!(rest.contains("probe: power button events="), "{rest}");
}
