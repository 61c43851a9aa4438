//! Where VMIs run in standalone mode: the cluster's scheduler places them
//! on the one node by the capacity it publishes, and only a placement
//! (`status.nodeName`, written by the scheduler) makes the node run a VMI.

use std::time::Duration;

use e2e::node::*;
use e2e::standalone::{Standalone, NODE_NAME};
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

fn with_memory(name: &str, memory: &str) -> VirtualMachineInstance {
    let mut vmi = probe_vmi(name, "probe.action=wait", 0);
    let requests = vmi.spec.domain.resources.as_mut().unwrap().requests.as_mut().unwrap();
    requests.insert("memory".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(memory.into()));
    vmi
}

/// The PodScheduled condition's (status, reason).
fn pod_scheduled(vmi: &VirtualMachineInstance) -> Option<(String, Option<String>)> {
    let status = vmi.status.as_ref()?;
    status.conditions.iter().find(|c| c.type_ == "PodScheduled").map(|c| (c.status.clone(), c.reason.clone()))
}

fn unschedulable(vmi: &VirtualMachineInstance) -> bool {
    pod_scheduled(vmi) == Some(("False".into(), Some("Unschedulable".into())))
        && phase(vmi).unwrap_or_default() == Phase::Pending
        && vmi.status.as_ref().is_none_or(|s| s.node_name.is_none())
}

/// Waits until exactly `running` of `names` run and the rest are Pending and Unschedulable.
async fn wait_split(
    api: &Api<VirtualMachineInstance>,
    server: &Standalone,
    names: &[String],
    running: usize,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut up = Vec::new();
        let mut waiting = 0;
        for name in names {
            let vmi = api.get(name).await.unwrap();
            if phase(&vmi) == Some(Phase::Running) {
                up.push(name.clone());
            } else if unschedulable(&vmi) {
                waiting += 1;
            }
        }
        if up.len() == running && waiting == names.len() - running {
            return up;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "wanted {running} running and the rest unschedulable; running: {up:?}, unschedulable: {waiting}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn vmis_that_do_not_fit_the_nodes_memory_wait_unschedulable_and_run_when_room_frees_up() {
    let server = Standalone::with_node(&["--memory-capacity", "24Gi"]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let names: Vec<String> = (0..7).map(|i| format!("big-{i}")).collect();
    for name in &names {
        create(&vmis, &with_memory(name, "20Gi")).await;
    }
    // 24 GiB takes one 20 GiB guest; the six others wait, saying why.
    let up = wait_split(&vmis, &server, &names, 1).await;
    let waiting = vmis.get(names.iter().find(|n| !up.contains(n)).unwrap()).await.unwrap();
    let message = waiting.status.unwrap().conditions.into_iter().find(|c| c.type_ == "PodScheduled").unwrap().message;
    assert_eq!(message.as_deref(), Some("0/1 nodes are available: 1 node(s) had insufficient kvmlet.io/memory"));
    assert_eq!(ps(&server).len(), 1, "the node runs only the placed VMI");

    // Deleting the running one makes room for the next, and so on.
    let mut left = names.clone();
    for _ in 0..2 {
        let gone = up_now(&vmis, &left).await;
        vmis.delete(&gone, &DeleteParams::default()).await.unwrap();
        wait_gone(&vmis, &server, &gone).await;
        left.retain(|n| *n != gone);
        wait_split(&vmis, &server, &left, 1).await;
    }
}

async fn up_now(api: &Api<VirtualMachineInstance>, names: &[String]) -> String {
    for name in names {
        if phase(&api.get(name).await.unwrap()) == Some(Phase::Running) {
            return name.clone();
        }
    }
    panic!("none of {names:?} runs");
}

#[tokio::test]
async fn a_node_name_label_or_status_in_the_body_places_nothing_only_the_scheduler_does() {
    let server = Standalone::with_node(&[]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());

    // Claims this node by label and by status, but no node matches its selector.
    let mut claimed = probe_vmi("claimed", "probe.action=wait", 0);
    claimed.labels_mut().insert("kubevirt.io/nodeName".into(), NODE_NAME.into());
    claimed.spec.node_selector = Some([("disktype".to_string(), "nvme".to_string())].into());
    claimed.status = Some(serde_json::from_value(json!({"nodeName": NODE_NAME, "phase": "Scheduled"})).unwrap());
    create(&vmis, &claimed).await;
    // Labelled for another node and without a selector: the scheduler places
    // it here and the label follows the placement.
    let mut relabelled = probe_vmi("relabelled", "probe.action=wait", 0);
    relabelled.labels_mut().insert("kubevirt.io/nodeName".into(), "some-other-node".into());
    create(&vmis, &relabelled).await;

    let running = wait_for_phase(&vmis, &server, "relabelled", Phase::Running).await;
    assert_eq!(running.status.as_ref().unwrap().node_name.as_deref(), Some(NODE_NAME));
    assert_eq!(running.labels().get("kubevirt.io/nodeName").map(String::as_str), Some(NODE_NAME));

    let claimed =
        wait_for(&vmis, &server, "claimed", "unschedulable", Duration::from_secs(30), |v| v.is_some_and(unschedulable))
            .await
            .unwrap();
    let message = claimed.status.unwrap().conditions.into_iter().find(|c| c.type_ == "PodScheduled").unwrap().message;
    assert_eq!(message.as_deref(), Some("0/1 nodes are available: 1 node(s) didn't match the VMI's node selector"));
    assert!(ps_entry(&server, "claimed").is_none(), "the node never started the unplaced VMI");
    assert!(!server.run_dir().join("vms").join(claimed_uid(&vmis).await).exists());
}

async fn claimed_uid(api: &Api<VirtualMachineInstance>) -> String {
    api.get("claimed").await.unwrap().uid().unwrap()
}
