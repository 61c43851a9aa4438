//! A node runs at most `--max-vms` VMs: it publishes the count as its
//! `pods` capacity (a kubelet's --max-pods) and the scheduler leaves VMIs
//! beyond it Pending and Unschedulable, rather than the node failing them.

use std::time::Duration;

use e2e::node::*;
use e2e::standalone::{Standalone, NODE_NAME};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};

/// The PodScheduled condition's (status, reason, message).
fn pod_scheduled(vmi: &VirtualMachineInstance) -> Option<(String, Option<String>, Option<String>)> {
    let status = vmi.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `running` of `names` run and the rest are Unschedulable;
/// returns the running ones and the waiting ones' messages.
async fn wait_split(
    api: &Api<VirtualMachineInstance>,
    server: &Standalone,
    names: &[String],
    running: usize,
) -> (Vec<String>, Vec<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (mut up, mut waiting) = (Vec::new(), Vec::new());
        for name in names {
            let vmi = api.get(name).await.unwrap();
            if phase(&vmi) == Some(Phase::Running) {
                up.push(name.clone());
            } else if let Some(("False", Some("Unschedulable"), message)) =
                pod_scheduled(&vmi).as_ref().map(|(s, r, m)| (s.as_str(), r.as_deref(), m.clone()))
            {
                waiting.push(message.unwrap_or_default());
            }
        }
        if up.len() == running && waiting.len() == names.len() - running {
            return (up, waiting);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "wanted {running} running and the rest unschedulable; running: {up:?}, waiting: {waiting:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn vmis_beyond_max_vms_wait_unschedulable_and_run_when_one_goes() {
    let server = Standalone::with_node(&["--max-vms", "2"]);
    let client = server.client().await;
    let node = Api::<Node>::all(client.clone()).get(NODE_NAME).await.unwrap();
    let capacity = node.status.unwrap().capacity.unwrap();
    assert_eq!(capacity.get("pods").map(|q| q.0.as_str()), Some("2"));

    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let names: Vec<String> = (0..3).map(|i| format!("small-{i}")).collect();
    for name in &names {
        create(&vmis, &probe_vmi(name, "probe.action=wait", 0)).await;
    }
    let (up, waiting) = wait_split(&vmis, &server, &names, 2).await;
    assert_eq!(waiting, ["0/1 nodes are available: 1 node(s) had too many pods (the node's --max-vms)"]);
    assert_eq!(ps(&server).len(), 2, "the node runs only the placed VMIs");

    vmis.delete(&up[0], &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, &up[0]).await;
    let left: Vec<String> = names.into_iter().filter(|n| *n != up[0]).collect();
    wait_split(&vmis, &server, &left, 2).await;
}

#[test]
fn max_vms_zero_is_refused_at_the_command_line() {
    let output = std::process::Command::new(e2e::kvmlet_bin()).args(["standalone", "--max-vms", "0"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-vms"), "{stderr}");
}
