//! The seccomp layer of the VM process's jail: every thread of a running VM
//! (through `kvmlet run` and through the node loop) is under a filter, each
//! vCPU under its own on top of the control thread's, and a syscall outside
//! a thread's list stops the VM with a message naming it.

use std::io::BufReader;
use std::process::{Child, ChildStdout, Command};

use e2e::node::*;
use e2e::standalone::Standalone;
use e2e::{kvmlet_bin, probe};
use kube::api::Api;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};

/// (thread name, `Seccomp`, `Seccomp_filters`, `NoNewPrivs`) for every thread of `pid`.
fn thread_confinement(pid: u32) -> Vec<(String, String, u32, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else { continue };
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
        };
        let filters = field("Seccomp_filters:").parse().unwrap_or(0);
        threads.push((field("Name:"), field("Seccomp:"), filters, field("NoNewPrivs:")));
    }
    threads
}

/// Every thread is in filter mode with no-new-privs, and each vCPU stacks
/// its own filter on top of the control thread's.
fn assert_every_thread_filtered(pid: u32) {
    let threads = thread_confinement(pid);
    assert!(threads.iter().any(|(name, ..)| name == "vcpu0"), "{threads:?}");
    for (name, mode, _, no_new_privs) in &threads {
        assert_eq!(mode, "2", "thread {name} is under a seccomp filter: {threads:?}");
        assert_eq!(no_new_privs, "1", "thread {name}: {threads:?}");
    }
    let control = threads.iter().filter(|(name, ..)| !name.starts_with("vcpu")).map(|t| t.2).min().unwrap();
    for (name, _, filters, _) in threads.iter().filter(|(name, ..)| name.starts_with("vcpu")) {
        assert!(*filters > control, "{name} adds its own filter: {threads:?}");
    }
}

fn start_run(extra: &[&str]) -> (Child, BufReader<ChildStdout>) {
    e2e::run_probe_until(&[&["--cmdline", "probe.action=wait"], extra].concat(), "waiting for power button")
}

#[test]
fn kvmlet_run_filters_every_thread_and_the_guest_still_powers_off() {
    let (mut child, _stdout) = start_run(&[]);
    assert_every_thread_filtered(e2e::jailed_vm_process(child.id()));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "the guest powered off through the power button");
}

#[test]
fn a_syscall_outside_the_list_stops_the_vm_naming_it() {
    let output = Command::new(kvmlet_bin())
        .arg("run")
        .arg("--kernel")
        .arg(&probe().bzimage)
        .args(["--cmdline", "probe.action=wait", "--test-forbidden-syscall"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(159), "{stderr}");
    assert!(stderr.contains("seccomp refused syscall getpgrp (111)"), "{stderr}");
}

#[test]
fn log_mode_lets_the_forbidden_syscall_through() {
    let (mut child, _stdout) = start_run(&["--seccomp", "log", "--test-forbidden-syscall"]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "the VM ran on and powered off");
}

#[test]
fn seccomp_off_installs_no_filter() {
    let (mut child, _stdout) = start_run(&["--seccomp", "off"]);
    let threads = thread_confinement(e2e::jailed_vm_process(child.id()));
    assert!(threads.iter().all(|(_, mode, ..)| mode == "0"), "{threads:?}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[tokio::test]
async fn the_node_loop_runs_its_vm_process_filtered() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("filtered", "probe.action=wait", 30)).await;
    wait_for_phase(&vmis, &server, "filtered", Phase::Running).await;
    let pid = ps_entry(&server, "filtered").unwrap()["pid"].as_u64().unwrap() as u32;
    assert_every_thread_filtered(pid);

    let (ok, _) = node_socket(&server, &["-X", "POST"], "/v1/namespaces/default/vms/filtered/power-button");
    assert!(ok, "power button through the debugging socket");
    let done = wait_for_phase(&vmis, &server, "filtered", Phase::Succeeded).await;
    assert_eq!(done.status.unwrap().reason.as_deref(), Some("GuestPoweredOff"));
}
