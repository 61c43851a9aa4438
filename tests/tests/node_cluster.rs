//! `kvmlet agent` against an API it does not run (cluster mode): the API is a
//! `kvmlet standalone --no-node` reached over loopback TLS with a kubeconfig,
//! as a DaemonSet or systemd unit reaches a real cluster.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::node::*;
use e2e::standalone::{Standalone, VmReaper};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

struct Agent {
    child: Child,
}

impl Agent {
    fn start(api: &Standalone, node: &str, run_dir: &Path) -> Agent {
        Agent::start_with(api, node, run_dir, &[])
    }

    fn start_with(api: &Standalone, node: &str, run_dir: &Path, extra: &[&str]) -> Agent {
        let log = std::fs::File::create(run_dir.with_extension("log")).unwrap();
        let child = Command::new(e2e::kvmlet_bin())
            .arg("agent")
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .args(["--node-name", node, "--heartbeat-interval", "1"])
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--default-kernel")
            .arg(&e2e::probe().bzimage)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { child }
    }

    /// SIGTERM, as systemd or the kubelet stop it.
    fn terminate(mut self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the agent exits cleanly on SIGTERM: {status}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the cluster's scheduler does: status.nodeName, then the label.
async fn assign(vmis: &Api<VirtualMachineInstance>, name: &str, node: &str) {
    let status = json!({"status": {"nodeName": node, "phase": "Scheduled"}});
    vmis.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let label = json!({"metadata": {"labels": {"kubevirt.io/nodeName": node}}});
    vmis.patch(name, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
}

async fn wait_node(nodes: &Api<Node>, name: &str, what: &str, ready: impl Fn(&Node) -> bool) -> Node {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(node) = nodes.get_opt(name).await.unwrap() {
            if ready(&node) {
                return node;
            }
        }
        assert!(Instant::now() < deadline, "node {name} never became {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn heartbeat(node: &Node) -> Option<String> {
    node.metadata.annotations.as_ref()?.get("kubevirt.io/heartbeat").cloned()
}

#[tokio::test]
async fn agent_registers_its_node_runs_its_vmis_and_survives_a_restart() {
    let api = Standalone::start();
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let dirs = tempfile::tempdir().unwrap();
    let run_dir = dirs.path().join("n1");
    let _reaper = VmReaper(run_dir.clone());

    let agent = Agent::start(&api, "n1", &run_dir);
    let node = wait_node(&nodes, "n1", "schedulable", |n| label(n, "kubevirt.io/schedulable") == Some("true")).await;
    let first_beat = heartbeat(&node).expect("a heartbeat annotation");
    assert!(chrono_like(&first_beat), "RFC 3339: {first_beat}");
    let capacity = node.status.unwrap().allocatable.unwrap();
    // The default cpu allocation ratio, 10 vCPUs per host CPU, as KubeVirt's.
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(capacity["kvmlet.io/vcpus"].0, (cpus * 10).to_string());
    assert!(capacity["kvmlet.io/memory"].0.ends_with("Mi"));
    // The heartbeat moves on.
    wait_node(&nodes, "n1", "heartbeating", |n| heartbeat(n).is_some_and(|b| b != first_beat)).await;

    // Only VMIs assigned to n1 run there.
    create(&vmis, &probe_vmi("mine", "probe.action=wait", 0)).await;
    create(&vmis, &probe_vmi("theirs", "probe.action=wait", 0)).await;
    assign(&vmis, "mine", "n1").await;
    assign(&vmis, "theirs", "n2").await;
    wait_for_phase(&vmis, &api, "mine", Phase::Running).await;
    let pid = std::fs::read_to_string(
        run_dir.join("vms").join(vmis.get("mine").await.unwrap().metadata.uid.unwrap()).join("pid"),
    )
    .unwrap()
    .trim()
    .parse::<i32>()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(phase(&vmis.get("theirs").await.unwrap()), Some(Phase::Scheduled), "n2's VMI is not n1's business");

    // A clean stop marks the node unschedulable and leaves the VM running.
    agent.terminate();
    let node = nodes.get("n1").await.unwrap();
    assert_eq!(label(&node, "kubevirt.io/schedulable"), Some("false"));
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(), "the VM outlives the agent");
    assert_eq!(phase(&vmis.get("mine").await.unwrap()), Some(Phase::Running));

    // The next agent picks it up again and still manages it.
    let _agent = Agent::start(&api, "n1", &run_dir);
    wait_node(&nodes, "n1", "schedulable again", |n| label(n, "kubevirt.io/schedulable") == Some("true")).await;
    vmis.delete("mine", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &api, "mine").await;
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() || is_zombie(pid));
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// `2026-11-25T03:39:11Z` or with an offset.
fn chrono_like(time: &str) -> bool {
    let bytes = time.as_bytes();
    time.len() >= 20 && bytes[4] == b'-' && bytes[10] == b'T' && (time.ends_with('Z') || time.contains('+'))
}

#[tokio::test]
async fn the_api_going_away_does_not_stop_vms_and_the_agent_catches_up() {
    let mut api = Standalone::start();
    let dirs = tempfile::tempdir().unwrap();
    let run_dir = dirs.path().join("n1");
    let _reaper = VmReaper(run_dir.clone());
    let _agent = Agent::start(&api, "n1", &run_dir);
    let client = api.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("steady", "probe.action=wait", 0)).await;
    assign(&vmis, "steady", "n1").await;
    wait_for_phase(&vmis, &api, "steady", Phase::Running).await;
    let vm_dirs = || std::fs::read_dir(run_dir.join("vms")).unwrap().count();
    assert_eq!(vm_dirs(), 1);

    api.restart(); // SIGKILL of the API server, then back on the same data and address
    let client = api.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    // While the agent reconnects, its VM keeps running and is not duplicated.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(phase(&vmis.get("steady").await.unwrap()), Some(Phase::Running));
    assert_eq!(vm_dirs(), 1, "one VM process per VMI UID");
    // Changes made after the outage reach the agent.
    create(&vmis, &probe_vmi("after", "probe.action=wait", 0)).await;
    assign(&vmis, "after", "n1").await;
    wait_for_phase(&vmis, &api, "after", Phase::Running).await;
    vmis.delete("steady", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &api, "steady").await;
    vmis.delete("after", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &api, "after").await;
}

#[tokio::test]
async fn vm_processes_whose_vmi_is_gone_are_stopped_and_cleaned_up() {
    let api = Standalone::start();
    let dirs = tempfile::tempdir().unwrap();
    let run_dir = dirs.path().join("n1");
    let _reaper = VmReaper(run_dir.clone());
    let agent = Agent::start(&api, "n1", &run_dir);
    let client = api.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("orphan", "probe.action=wait", 30)).await;
    assign(&vmis, "orphan", "n1").await;
    let running = wait_for_phase(&vmis, &api, "orphan", Phase::Running).await;
    let state_dir = run_dir.join("vms").join(running.metadata.uid.unwrap());
    let pid: i32 = std::fs::read_to_string(state_dir.join("pid")).unwrap().trim().parse().unwrap();

    // While the agent is away, the VMI is removed behind its back.
    agent.terminate();
    let drop_finalizers = json!({"metadata": {"finalizers": null}});
    vmis.patch("orphan", &PatchParams::default(), &Patch::Merge(&drop_finalizers)).await.unwrap();
    vmis.delete("orphan", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &api, "orphan").await;
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(), "still running without a VMI");

    let _agent = Agent::start(&api, "n1", &run_dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_dir.exists() {
        let log = std::fs::read_to_string(run_dir.with_extension("log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the orphaned VM was not cleaned up; agent log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() || is_zombie(pid));
}

/// A writable cgroup v1 `pids` hierarchy or cgroup v2 root, if this host has one.
fn writable_cgroup_root() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"].into_iter().map(std::path::PathBuf::from).find(|root| {
        let probe = root.join(format!("kvmlet-probe-{}", std::process::id()));
        let ok = std::fs::create_dir(&probe).is_ok() && probe.join("cgroup.procs").exists();
        let _ = std::fs::remove_dir(&probe);
        ok
    })
}

#[tokio::test]
async fn vm_processes_move_into_the_cgroup_parent() {
    let Some(root) = writable_cgroup_root() else {
        eprintln!(
            "SKIPPED: no writable cgroup hierarchy on this host (neither /sys/fs/cgroup/pids nor a cgroup v2 root)"
        );
        return;
    };
    let parent = root.join(format!("kvmlet-test-{}", std::process::id()));
    let api = Standalone::start();
    let dirs = tempfile::tempdir().unwrap();
    let run_dir = dirs.path().join("n1");
    let _reaper = VmReaper(run_dir.clone());
    let _agent = Agent::start_with(&api, "n1", &run_dir, &["--cgroup-parent", parent.to_str().unwrap()]);
    let client = api.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    create(&vmis, &probe_vmi("grouped", "probe.action=wait", 0)).await;
    assign(&vmis, "grouped", "n1").await;
    let running = wait_for_phase(&vmis, &api, "grouped", Phase::Running).await;
    let uid = running.metadata.uid.unwrap();
    let pid = std::fs::read_to_string(run_dir.join("vms").join(&uid).join("pid")).unwrap();
    let procs = std::fs::read_to_string(parent.join(&uid).join("cgroup.procs")).unwrap();
    let mut procs: Vec<&str> = procs.split_whitespace().collect();
    procs.sort();
    // With its supervisor, its parent outside its PID namespace: charged to the VM too.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let supervisor = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim();
    let mut expected = vec![supervisor, pid.trim()];
    expected.sort();
    assert_eq!(procs, expected, "the VM process and its supervisor live in PARENT/<uid>");
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    assert!(own.contains(&format!("/kvmlet-test-{}/{uid}", std::process::id())), "{own}");

    vmis.delete("grouped", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &api, "grouped").await;
    assert!(!parent.join(&uid).exists(), "the VM's cgroup is removed with it");
    std::fs::remove_dir(&parent).unwrap();
}

/// The node checks `--max-vms` itself: a VMI assigned beyond it (here by
/// hand, around the scheduler) waits Unschedulable, with nothing of it
/// prepared, and starts once a slot is free.
#[tokio::test]
async fn the_node_refuses_vmis_beyond_max_vms_until_a_slot_is_free() {
    let api = Standalone::start();
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let dirs = tempfile::tempdir().unwrap();
    let run_dir = dirs.path().join("small");
    let _reaper = VmReaper(run_dir.clone());
    let _agent = Agent::start_with(&api, "small", &run_dir, &["--max-vms", "1"]);
    wait_node(&nodes, "small", "schedulable", |n| label(n, "kubevirt.io/schedulable") == Some("true")).await;

    create(&vmis, &probe_vmi("first", "probe.action=wait", 0)).await;
    assign(&vmis, "first", "small").await;
    wait_for_phase(&vmis, &api, "first", Phase::Running).await;
    create(&vmis, &probe_vmi("second", "probe.action=wait", 0)).await;
    assign(&vmis, "second", "small").await;
    let unschedulable = |v: Option<&VirtualMachineInstance>| {
        v.and_then(|v| v.status.as_ref()).is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some("node small already runs its maximum of 1 VMs (--max-vms)")
            })
        })
    };
    let waiting =
        wait_for(&vmis, &api, "second", "Unschedulable", Duration::from_secs(30), unschedulable).await.unwrap();
    assert_eq!(phase(&waiting), Some(Phase::Scheduled));
    let uid = waiting.metadata.uid.unwrap();
    assert!(!run_dir.join("vms").join(&uid).exists(), "nothing of the refused VMI was prepared");
    let reasons = event_reasons(&client, "second").await;
    assert!(reasons.iter().any(|(reason, _)| reason == "Unschedulable"), "{reasons:?}");

    vmis.delete("first", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &api, "first").await;
    wait_for_phase(&vmis, &api, "second", Phase::Running).await;
}
