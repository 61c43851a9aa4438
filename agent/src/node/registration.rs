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
/// How many VMs the node runs at most (`--max-vms`), published as a
/// kubelet publishes `--max-pods`: each KubeVirt VMI is one pod.
pub const PODS_RESOURCE: &str = "pods";

/// vCPUs, memory (MiB) and VMs this host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub vms: u64,
}

/// Tasks (threads) one VM process has with one vCPU, measured on
/// `kvmlet run`: two kvmlet threads, vcpu0, the serial flusher, and KVM's
/// `kvm-nx-lpage-recovery` kernel thread. Each further vCPU adds one.
pub const TASKS_PER_VM: u64 = 5;
/// File descriptors the agent may hold per running VM (control-socket
/// connections, the child and its pipes): an upper estimate.
pub const AGENT_FDS_PER_VM: u64 = 8;
/// Host memory one idle VM costs beyond its guest RAM (page tables, KVM
/// structures, the VM process's heap), rounded up from ~1.3 MiB measured.
pub const OVERHEAD_MIB_PER_VM: u64 = 2;

/// The most VMs the host's limits allow: half the kernel's task limit
/// (the rest is the host's), the agent's open-file limit, and the memory
/// left after the guests for their overhead. Each limit is an input;
/// `None` is "unknown", which does not limit.
pub fn derived_max_vms(task_limit: Option<u64>, fd_limit: Option<u64>, overhead_mib: Option<u64>) -> u64 {
    [
        task_limit.map(|tasks| tasks / 2 / TASKS_PER_VM),
        fd_limit.map(|fds| fds.saturating_sub(256) / AGENT_FDS_PER_VM),
        overhead_mib.map(|mib| mib / OVERHEAD_MIB_PER_VM),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(u64::MAX)
    .max(1)
}

/// This host's task limit: the smaller of `kernel.pid_max` and
/// `kernel.threads-max`.
fn host_task_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    [read("/proc/sys/kernel/pid_max"), read("/proc/sys/kernel/threads-max")].into_iter().flatten().min()
}

/// The agent's soft open-file limit (from /proc/self/limits; "unlimited"
/// does not limit).
fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

impl Capacity {
    /// `cpu_allocation_ratio` vCPUs per host CPU; memory is not
    /// overcommitted; `max_vms` given, else `derived_max_vms` with the host
    /// memory the guests may not take (the host's minus `memory_mib`) as
    /// the overhead budget.
    pub fn of_this_host(cpu_allocation_ratio: u64, memory_mib: Option<u64>, max_vms: Option<u64>) -> Capacity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let host_mib = vmm::config::host_memory_mib();
        let memory_mib = memory_mib.unwrap_or(host_mib);
        // Guests may take all memory (the default): overhead then shares it.
        let overhead_mib = match host_mib.saturating_sub(memory_mib) {
            0 => host_mib / 8,
            spare => spare,
        };
        let vms = max_vms.unwrap_or_else(|| derived_max_vms(host_task_limit(), fd_limit(), Some(overhead_mib)));
        Capacity { vcpus: cpus * cpu_allocation_ratio, memory_mib, vms }
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
        (PODS_RESOURCE, capacity.vms.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_vms_is_the_tightest_known_limit() {
        assert_eq!(derived_max_vms(Some(4_194_304), Some(1_048_576), Some(3072)), 1536, "memory");
        assert_eq!(derived_max_vms(Some(10_000), Some(1_048_576), Some(3072)), 1000, "tasks");
        assert_eq!(derived_max_vms(Some(4_194_304), Some(1024), Some(3072)), 96, "open files");
        assert_eq!(derived_max_vms(None, None, None), u64::MAX, "nothing known limits nothing");
        assert_eq!(derived_max_vms(Some(0), None, None), 1, "never zero");
        assert!(fd_limit().is_some_and(|fds| fds > 0), "this process has a limit");
    }
}
