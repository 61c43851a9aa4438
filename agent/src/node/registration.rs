//! The node's `Node` object: registered at start, heartbeated, and marked
//! unschedulable on a clean shutdown, so the VM controller knows where VMIs
//! may go and how much fits.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use proto::labels::{HEARTBEAT_ANNOTATION, SCHEDULABLE_LABEL};
use serde_json::json;

/// Extended resources in `status.capacity`/`allocatable`: what VMs may use here.
pub const VCPUS_RESOURCE: &str = "kvmlet.io/vcpus";
pub const MEMORY_RESOURCE: &str = "kvmlet.io/memory";

/// vCPUs and memory (MiB) this host offers to VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vcpus: u64,
    pub memory_mib: u64,
}

impl Capacity {
    /// `cpu_allocation_ratio` vCPUs per host CPU; memory is not overcommitted.
    pub fn of_this_host(cpu_allocation_ratio: u64) -> Capacity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Capacity { vcpus: cpus * cpu_allocation_ratio, memory_mib: vmm::config::host_memory_mib() }
    }
}

/// Creates the Node if it does not exist, publishes the capacity, then marks
/// it schedulable with a fresh heartbeat.
pub async fn register(client: &Client, node_name: &str, capacity: Capacity) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(node_name).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node_name},
        }))
        .expect("a valid Node");
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let quantities = BTreeMap::from([
        (VCPUS_RESOURCE, capacity.vcpus.to_string()),
        (MEMORY_RESOURCE, format!("{}Mi", capacity.memory_mib)),
    ]);
    let status = json!({"status": {"capacity": quantities, "allocatable": quantities}});
    nodes.patch_status(node_name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    // Schedulable only once the capacity is there to schedule by.
    heartbeat(client, node_name, true).await
}

/// Label `kubevirt.io/schedulable` and annotation `kubevirt.io/heartbeat`.
pub async fn heartbeat(client: &Client, node_name: &str, schedulable: bool) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({
        "metadata": {
            "labels": {SCHEDULABLE_LABEL: schedulable.to_string()},
            "annotations": {HEARTBEAT_ANNOTATION: crate::clock::now_rfc3339()},
        }
    });
    nodes.patch(node_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}
