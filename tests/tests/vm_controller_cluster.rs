//! The VM controller in cluster shape: an API-only `kvmlet standalone`
//! (reached over loopback TLS), two `kvmlet controller` replicas electing a
//! leader through a Lease, and three `kvmlet agent` nodes. The leader's
//! scheduler places VMIs by selector and capacity; when the leader dies the
//! other replica takes over.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::standalone::{Standalone, VmReaper};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(api: &Standalone, args: &[&str], log: &Path) -> Process {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(e2e::kvmlet_bin())
        .args(args)
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Process(child)
}

fn vm(name: &str, memory: &str, selector: Option<(&str, &str)>) -> VirtualMachine {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "domain": {
            "resources": {"requests": {"memory": memory}},
            "firmware": {"kernelBoot": {"kernelArgs": "probe.action=wait"}},
            "devices": {},
        },
    });
    if let Some((k, v)) = selector {
        spec["nodeSelector"] = json!({k: v});
    }
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": spec}},
    }))
    .unwrap()
}

async fn eventually<T>(what: &str, logs: &dyn Fn() -> String, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "never {what}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_controller_replicas_schedule_onto_three_agents_and_fail_over() {
    let api = Standalone::start();
    let dir = api.data_dir().to_path_buf();
    let _reapers: Vec<VmReaper> = ["n1", "n2", "n3"].iter().map(|node| VmReaper(dir.join(node))).collect();
    let probe = e2e::probe().bzimage.to_string_lossy().into_owned();
    let mut agents = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let run_dir = dir.join(node);
        let run_dir_arg = run_dir.to_string_lossy().into_owned();
        let args = [
            "agent",
            "--node-name",
            node,
            "--run-dir",
            &run_dir_arg,
            "--default-kernel",
            &probe,
            "--heartbeat-interval",
            "1",
        ];
        agents.push(spawn(&api, &args, &dir.join(format!("{node}.log"))));
    }
    // Each replica serves its probes on a port of its own.
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let mut replicas: Vec<Option<Process>> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let health = format!("127.0.0.1:{port}");
            let args = [
                "controller",
                "--lease-namespace",
                "default",
                "--heartbeat-threshold",
                "8",
                "--health-listen",
                &health,
            ];
            Some(spawn(&api, &args, &dir.join(format!("controller{i}.log"))))
        })
        .collect();
    let logs = || {
        let mut all = String::new();
        for name in ["controller0", "controller1", "n1", "n2", "n3"] {
            let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            all.push_str(&format!(
                "--- {name} ---\n{}\n",
                text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        all
    };

    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    eventually("three schedulable nodes", &logs, async || {
        let list = nodes.list(&Default::default()).await.unwrap().items;
        let ready =
            list.iter().filter(|n| n.labels().get("kubevirt.io/schedulable").map(String::as_str) == Some("true"));
        (ready.count() == 3).then_some(())
    })
    .await;
    let gold = json!({"metadata": {"labels": {"tier": "gold"}}});
    nodes.patch("n3", &Default::default(), &kube::api::Patch::Merge(&gold)).await.unwrap();

    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let leader_pid = |lease: &Lease| -> Option<u32> {
        let holder = lease.spec.as_ref()?.holder_identity.clone()?;
        holder.rsplit('_').next()?.parse().ok()
    };
    let pids: Vec<u32> = replicas.iter().map(|r| r.as_ref().unwrap().0.id()).collect();
    let first_leader = eventually("a leader", &logs, async || {
        let lease = leases.get_opt("kvmlet-controller").await.unwrap()?;
        leader_pid(&lease).filter(|pid| pids.contains(pid))
    })
    .await;

    // Leader and standby alike are live and ready once they reach the API.
    for port in &ports {
        for path in ["healthz", "readyz"] {
            eventually(&format!("{path} on {port}"), &logs, async || {
                let url = format!("http://127.0.0.1:{port}/{path}");
                let out = Command::new("curl").args(["-s", "-f", &url]).output().unwrap();
                (out.status.success() && out.stdout == b"ok").then_some(())
            })
            .await;
        }
    }

    let vms: Api<VirtualMachine> = Api::default_namespaced(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    for vm in [vm("anywhere", "64Mi", None), vm("golden", "64Mi", Some(("tier", "gold"))), vm("huge", "1Ti", None)] {
        vms.create(&PostParams::default(), &vm).await.unwrap();
    }
    let running_on = async |name: &str| -> (String, String) {
        eventually(&format!("{name} running"), &logs, async || {
            let vmi = vmis.get_opt(name).await.unwrap()?;
            let status = vmi.status.clone()?;
            (status.phase == Some(Phase::Running)).then(|| (status.node_name.unwrap_or_default(), vmi.uid().unwrap()))
        })
        .await
    };
    let (node, first_uid) = running_on("anywhere").await;
    assert!(["n1", "n2", "n3"].contains(&node.as_str()), "{node}");
    let (node, _) = running_on("golden").await;
    assert_eq!(node, "n3", "the node selector is honoured");
    let golden = vmis.get("golden").await.unwrap();
    assert_eq!(golden.labels().get("kubevirt.io/nodeName").map(String::as_str), Some("n3"));

    let vm = eventually("huge unschedulable", &logs, async || {
        let vm = vms.get("huge").await.unwrap();
        (vm.status.as_ref()?.printable_status.as_deref() == Some("ErrorUnschedulable")).then_some(vm)
    })
    .await;
    let huge = vmis.get("huge").await.unwrap();
    let condition = huge.status.unwrap().conditions.into_iter().find(|c| c.type_ == "PodScheduled").unwrap();
    assert_eq!((condition.status.as_str(), condition.reason.as_deref()), ("False", Some("Unschedulable")));
    let message = condition.message.unwrap_or_default();
    assert!(
        message.contains("0/3 nodes are available") && message.contains("insufficient kvmlet.io/memory"),
        "{message}"
    );
    assert!(vm.status.unwrap().conditions.iter().any(|c| c.type_ == "PodScheduled"), "VMI conditions are copied");

    // The leader dies; the other replica takes the lease over and carries on.
    let index = pids.iter().position(|p| *p == first_leader).unwrap();
    drop(replicas[index].take());
    let second_leader = eventually("a new leader", &logs, async || {
        let lease = leases.get_opt("kvmlet-controller").await.unwrap()?;
        leader_pid(&lease).filter(|pid| *pid != first_leader && pids.contains(pid))
    })
    .await;
    assert_eq!(second_leader, pids[1 - index]);
    vmis.delete("anywhere", &DeleteParams::default()).await.unwrap();
    let (node, second_uid) = eventually("anywhere recreated by the new leader", &logs, async || {
        let vmi = vmis.get_opt("anywhere").await.unwrap()?;
        let status = vmi.status.clone()?;
        let running = status.phase == Some(Phase::Running);
        (running && vmi.uid().as_deref() != Some(first_uid.as_str()))
            .then(|| (status.node_name.unwrap_or_default(), vmi.uid().unwrap_or_default()))
    })
    .await;

    // Its node dies: once the heartbeat is stale the VMI fails as
    // NodeUnresponsive, and the VM starts again on a live node.
    let dead = ["n1", "n2", "n3"].iter().position(|n| *n == node).unwrap();
    agents[dead].0.kill().unwrap();
    let mut saw_unresponsive = false;
    let third_node = eventually("anywhere moved off the dead node", &logs, async || {
        let vmi = vmis.get_opt("anywhere").await.unwrap()?;
        let status = vmi.status.clone()?;
        if vmi.uid().as_deref() == Some(second_uid.as_str()) {
            saw_unresponsive |=
                status.phase == Some(Phase::Failed) && status.reason.as_deref() == Some("NodeUnresponsive");
            return None;
        }
        (status.phase == Some(Phase::Running)).then(|| status.node_name.unwrap_or_default())
    })
    .await;
    assert!(saw_unresponsive, "the VMI on the dead node failed as NodeUnresponsive");
    assert_ne!(third_node, node);

    for name in ["anywhere", "golden", "huge"] {
        vms.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("all VMIs gone", &logs, async || {
        vmis.list(&Default::default()).await.unwrap().items.is_empty().then_some(())
    })
    .await;
    drop(replicas);
    drop(agents);
}
