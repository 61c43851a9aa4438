//! The VM process's jail beyond seccomp (`vmm::jail`): its own PID (pid 1
//! there, under a supervisor outside), mount, IPC, UTS and network namespaces with an empty read-only root, an unprivileged
//! uid/gid without capabilities, and Landlock; checked from outside through
//! /proc and from inside through the test hooks, for `kvmlet run` and for the
//! node loop.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;

use e2e::node::*;
use e2e::standalone::Standalone;
use e2e::{kvmlet_bin, probe};
use kube::api::Api;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};

/// A field of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let prefix = format!("{name}:");
    status.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_owned()).unwrap_or_default()
}

/// The process runs as 107:107 with no groups, no capabilities at all,
/// no-new-privs and a seccomp filter; it has its own PID, mount, IPC, UTS
/// and network namespaces (not `reference`'s), being pid 1 in its own; its root is empty.
fn assert_jailed(pid: u32, reference: u32) {
    assert_eq!(status_field(pid, "Uid"), "107\t107\t107\t107");
    assert_eq!(status_field(pid, "Gid"), "107\t107\t107\t107");
    assert_eq!(status_field(pid, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NSpid"), format!("{pid}\t1"), "pid 1 of a PID namespace of its own");
    for ns in ["pid", "mnt", "ipc", "uts", "net"] {
        let of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(of(pid), of(reference), "{ns} namespace");
    }
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root")).unwrap().collect();
    assert!(root.is_empty(), "the jail's root is empty: {root:?}");
}

#[test]
fn kvmlet_run_jails_the_vm_and_the_guest_still_powers_off() {
    let (mut child, _console) = e2e::run_probe_until(&["--cmdline", "probe.action=wait"], "waiting for power button");
    assert_jailed(e2e::jailed_vm_process(child.id()), std::process::id());
    // A signal sent to kvmlet run reaches the VM (the power button).
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "the guest powered off through the power button");
}

#[test]
fn the_vm_process_dies_with_its_supervisor() {
    let (mut child, _console) = e2e::run_probe_until(&["--cmdline", "probe.action=spin"], "action=spin");
    let vm = e2e::jailed_vm_process(child.id());
    // Its parent-death signal survives the change to uid 107.
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let status = std::fs::read_to_string(format!("/proc/{vm}/status")).unwrap_or_default();
        status.is_empty() || status.contains("State:\tZ")
    });
    assert!(gone, "the VM process {vm} outlived its killed supervisor");
}

/// `kvmlet run --test-jail-check CHECK` with extra flags: its stderr line.
fn run_check(check: &str, extra: &[&str]) -> String {
    let output = Command::new(kvmlet_bin())
        .args(["run", "--cmdline", "probe.action=poweroff", "--test-jail-check", check, "--kernel"])
        .arg(&probe().bzimage)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    stderr.lines().find(|l| l.starts_with("jail check: ")).unwrap_or_else(|| panic!("no outcome in {stderr}")).into()
}

#[test]
fn inside_the_jail_no_host_file_or_tcp_connection_is_reachable() {
    // Seccomp off, so that each of the other layers is seen on its own.
    let open = run_check("open", &["--seccomp", "off"]);
    assert!(open.contains("open /etc/passwd: No such file or directory"), "not in the new root: {open}");
    assert!(open.contains("list /: Permission denied"), "Landlock refuses even the empty root: {open}");
    let connect = run_check("connect", &["--seccomp", "off"]);
    assert!(connect.contains("connect 127.0.0.1:22: Permission denied"), "Landlock refuses TCP connect: {connect}");

    // Without the jail the same attempts reach the host.
    let open = run_check("open", &["--seccomp", "off", "--no-jail"]);
    assert!(open.contains("open /etc/passwd: allowed"), "{open}");
}

#[test]
fn the_vm_user_is_numeric_and_never_root() {
    for (user, says) in [("0:0", "must not run as root"), ("qemu:qemu", "is not a number")] {
        let output = Command::new(kvmlet_bin())
            .args(["run", "--cmdline", "probe.action=poweroff", "--vm-user", user, "--kernel"])
            .arg(&probe().bzimage)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--vm-user") && stderr.contains(says), "{stderr}");
    }
    let output = Command::new(kvmlet_bin()).args(["agent", "--no-jail"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "the agent has no --no-jail: {stderr}");
    assert!(stderr.contains("--no-jail"), "{stderr}");
}

/// One request on a VM process's control socket; its answer.
fn control(server: &Standalone, uid: &str, request: &str) -> serde_json::Value {
    let socket = server.run_dir().join("vms").join(uid).join("control.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    writeln!(stream, "{request}").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[tokio::test]
async fn the_node_loop_runs_its_vm_process_jailed() {
    let server = Standalone::with_node(&["--test-vm-hooks"]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("jailed", "probe.action=wait", 30)).await;
    let running = wait_for_phase(&vmis, &server, "jailed", Phase::Running).await;
    let uid = running.metadata.uid.unwrap();
    let pid = ps_entry(&server, "jailed").unwrap()["pid"].as_u64().unwrap() as u32;
    assert_jailed(pid, server.pid());
    // Its parent is the process the agent spawned, left outside as supervisor.
    let supervisor: u32 = status_field(pid, "PPid").parse().unwrap();
    let command = std::fs::read(format!("/proc/{supervisor}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&command).contains("vm-process"), "{command:?}");

    let answer = control(&server, &uid, r#"{"op":"testJail","check":"open"}"#);
    let outcome = answer["error"].as_str().unwrap();
    assert!(outcome.contains("list /: Permission denied"), "{outcome}");
    assert!(outcome.contains("open /etc/passwd: No such file or directory"), "{outcome}");
    assert_eq!(answer["state"], "Running");

    // connect is on no thread's seccomp list: the VM process is stopped and
    // the VMI fails naming the syscall.
    let _ = std::os::unix::net::UnixStream::connect(server.run_dir().join("vms").join(&uid).join("control.sock"))
        .map(|mut s| writeln!(s, r#"{{"op":"testJail","check":"connect"}}"#));
    let failed = wait_for_phase(&vmis, &server, "jailed", Phase::Failed).await;
    let status = failed.status.unwrap();
    let reason = format!("{:?} {:?}", status.reason, status.conditions);
    assert!(reason.contains("seccomp refused syscall connect"), "{reason}");
    // The supervisor went with its VM (and was reaped).
    let gone = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        !std::path::Path::new(&format!("/proc/{supervisor}")).exists()
    });
    assert!(gone, "the supervisor {supervisor} outlived its VM process");
}

#[tokio::test]
async fn test_hooks_are_refused_unless_the_agent_enabled_them() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("plain", "probe.action=wait", 30)).await;
    let running = wait_for_phase(&vmis, &server, "plain", Phase::Running).await;
    let answer = control(&server, &running.metadata.uid.unwrap(), r#"{"op":"testJail","check":"open"}"#);
    assert_eq!(answer["error"], "testJail: this VM process was not started with test hooks");
    assert_eq!(answer["state"], "Running");
}

/// Cgroup parents for a test, one per hierarchy holding memory, pids or cpu
/// (the cgroup v2 root, or each v1 hierarchy), under a name of the test's
/// own; None where this host has no writable cgroup tree.
fn test_cgroup_parents(name: &str) -> Option<Vec<std::path::PathBuf>> {
    let v2 = std::path::Path::new("/sys/fs/cgroup");
    let roots: Vec<std::path::PathBuf> = if v2.join("cgroup.controllers").exists() {
        vec![v2.to_path_buf()]
    } else {
        ["memory", "pids", "cpu"].iter().map(|h| v2.join(h)).filter(|h| h.join("cgroup.procs").exists()).collect()
    };
    let parents: Vec<_> = roots.iter().map(|root| root.join(format!("{name}-{}", std::process::id()))).collect();
    let writable = parents.iter().all(|p| std::fs::create_dir(p).is_ok());
    (writable && !parents.is_empty()).then_some(parents)
}

/// Removes the test's cgroup parents, and any VM cgroup left in them, even
/// when the test fails (declared before the server, it is dropped after it).
struct CgroupCleanup(Vec<std::path::PathBuf>);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for parent in &self.0 {
            for child in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The value of `file` in whichever VM cgroup has it.
fn cgroup_value(cgroups: &[std::path::PathBuf], files: &[&str]) -> Option<String> {
    cgroups.iter().find_map(|cgroup| {
        files.iter().find_map(|file| std::fs::read_to_string(cgroup.join(file)).ok().map(|v| v.trim().to_owned()))
    })
}

#[tokio::test]
async fn the_vm_process_is_limited_by_its_cgroups_and_an_oom_kill_is_reported() {
    let Some(parents) = test_cgroup_parents("kvmlet-jail-test") else {
        eprintln!("SKIPPED: no writable cgroup tree on this host (neither cgroup v2 nor v1 memory/pids/cpu)");
        return;
    };
    let _cleanup = CgroupCleanup(parents.clone());
    let mut args = vec!["--test-vm-hooks".to_owned()];
    for parent in &parents {
        args.extend(["--cgroup-parent".to_owned(), parent.display().to_string()]);
    }
    let server = Standalone::with_node(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    // probe_vmi asks for 64Mi and one vCPU.
    create(&vmis, &probe_vmi("limited", "probe.action=wait", 30)).await;
    let running = wait_for_phase(&vmis, &server, "limited", Phase::Running).await;
    let uid = running.metadata.uid.unwrap();
    let pid = ps_entry(&server, "limited").unwrap()["pid"].as_u64().unwrap() as u32;
    let cgroups: Vec<_> = parents.iter().map(|p| p.join(&uid)).collect();

    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for parent in &parents {
        let name = parent.file_name().unwrap().to_str().unwrap();
        assert!(membership.contains(&format!("/{name}/{uid}\n")), "in {name}: {membership}");
    }
    let limit = cgroup_value(&cgroups, &["memory.max", "memory.limit_in_bytes"]).expect("a memory limit");
    assert_eq!(limit, ((64u64 + 64) << 20).to_string(), "guest memory + the VMM's 64 MiB");
    if let Some(pids) = cgroup_value(&cgroups, &["pids.max"]) {
        assert_eq!(pids, "65");
    }
    if let Some(quota) = cgroup_value(&cgroups, &["cpu.cfs_quota_us"]) {
        assert_eq!(quota, "100000", "one CPU for one vCPU");
    }
    if let Some(max) = cgroup_value(&cgroups, &["cpu.max"]) {
        assert_eq!(max, "100000 100000");
    }
    let peak = cgroup_value(&cgroups, &["memory.peak", "memory.max_usage_in_bytes"]);
    eprintln!("VM process memory peak so far: {peak:?} bytes");

    // The VMM outgrows its limit: the kernel kills it, the VMI says why.
    let socket = server.run_dir().join("vms").join(&uid).join("control.sock");
    let _ = std::os::unix::net::UnixStream::connect(socket)
        .map(|mut s| writeln!(s, r#"{{"op":"testJail","check":"allocate"}}"#));
    let failed = wait_for_phase(&vmis, &server, "limited", Phase::Failed).await;
    let status = format!("{:?}", failed.status.unwrap());
    assert!(status.contains("was killed by its memory cgroup"), "{status}");
    assert!(status.contains("limit of 128 MiB"), "{status}");

    // Deleting the VMI removes its cgroups (once the kernel has taken the
    // dead process out of them).
    vmis.delete("limited", &Default::default()).await.unwrap();
    wait_gone(&vmis, &server, "limited").await;
    for cgroup in &cgroups {
        let mut waited = 0;
        while cgroup.exists() && waited < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(!cgroup.exists(), "{} is removed", cgroup.display());
    }
}
