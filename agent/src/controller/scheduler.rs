//! The scheduler (`kvmlet controller`, and `kvmlet standalone` over its own
//! node and any agents'): each new VMI goes to a node whose agent is
//! alive (label `kubevirt.io/schedulable=true`, a fresh heartbeat), that
//! matches its `nodeSelector`, and whose published capacity
//! (`kvmlet.io/vcpus`, `kvmlet.io/memory`, and `pods`: the node's
//! `--max-vms`, as a kubelet's `--max-pods`, since each KubeVirt VMI is one
//! virt-launcher pod) still fits it after what the node's other live VMIs
//! ask for. Among those, the one with the most free
//! memory wins, so VMs spread out. A VMI that fits nowhere gets
//! `PodScheduled=False` (reason `Unschedulable`) saying why.
//!
//! One pass at a time over all pending VMIs, so two VMIs never take the
//! same free space.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use proto::kubevirt::{Condition, VirtualMachineInstance, VirtualMachineInstancePhase};
use proto::labels::{HEARTBEAT_ANNOTATION, NODE_NAME_LABEL, SCHEDULABLE_LABEL};
use serde_json::json;
use tracing::Instrument;

use crate::node::registration::{MEMORY_RESOURCE, PODS_RESOURCE, VCPUS_RESOURCE};
pub use crate::vmi::resources::Request;

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// A node whose last heartbeat is older than this takes no new VMIs.
    pub heartbeat_threshold: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig { heartbeat_threshold: Duration::from_secs(300) }
    }
}

/// Mebibytes a node offers: its published memory quantity, rounded down.
fn quantity_mib(quantity: &str) -> Option<u64> {
    crate::vmi::quantity::capacity_mib(quantity).ok()
}

/// What the VMI asks for (`vmi::resources`, the rule the node runs it
/// by). A spec that asks for nothing valid counts as nothing here: admission
/// refuses such specs, and its node fails an old one naming the field.
pub fn request(vmi: &VirtualMachineInstance) -> Request {
    crate::vmi::resources::request(&vmi.spec).unwrap_or_default()
}

fn status(vmi: &VirtualMachineInstance) -> (Option<&str>, VirtualMachineInstancePhase) {
    let status = vmi.status.as_ref();
    (status.and_then(|s| s.node_name.as_deref()), status.and_then(|s| s.phase).unwrap_or_default())
}

/// What a node's live VMIs take: their requests, and how many they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub vms: u64,
}

impl NodeUsage {
    fn add(&mut self, want: Request) {
        self.vcpus += want.vcpus;
        self.memory_mib += want.memory_mib;
        self.vms += 1;
    }
}

/// Whether the node's agent heartbeated within `threshold` (a node that
/// never did is not alive).
pub fn heartbeat_fresh(node: &Node, threshold: Duration, now: Timestamp) -> bool {
    let heartbeat = node.annotations().get(HEARTBEAT_ANNOTATION).and_then(|h| h.parse::<Timestamp>().ok());
    heartbeat.is_some_and(|h| Duration::try_from(now.duration_since(h)).unwrap_or_default() <= threshold)
}

/// Why a node cannot take a VMI, or None if it can.
fn unfit(
    node: &Node,
    vmi: &VirtualMachineInstance,
    used: NodeUsage,
    threshold: Duration,
    now: Timestamp,
) -> Option<&'static str> {
    if node.labels().get(SCHEDULABLE_LABEL).map(String::as_str) != Some("true") {
        return Some("were not schedulable");
    }
    if !heartbeat_fresh(node, threshold, now) {
        return Some("had a stale heartbeat");
    }
    let selector = vmi.spec.node_selector.clone().unwrap_or_default();
    if selector.iter().any(|(k, v)| node.labels().get(k) != Some(v)) {
        return Some("didn't match the VMI's node selector");
    }
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
    let vcpus = allocatable.get(VCPUS_RESOURCE).and_then(|q| q.0.parse::<u64>().ok()).unwrap_or(0);
    let memory = allocatable.get(MEMORY_RESOURCE).and_then(|q| quantity_mib(&q.0)).unwrap_or(0);
    // A node that publishes no `pods` (an agent older than --max-vms) is
    // not limited by count.
    let max_vms = allocatable.get(PODS_RESOURCE).and_then(|q| q.0.parse::<u64>().ok()).unwrap_or(u64::MAX);
    if used.vms >= max_vms {
        return Some("had too many pods (the node's --max-vms)");
    }
    let want = request(vmi);
    if used.vcpus + want.vcpus > vcpus {
        return Some("had insufficient kvmlet.io/vcpus");
    }
    if used.memory_mib + want.memory_mib > memory {
        return Some("had insufficient kvmlet.io/memory");
    }
    None
}

/// The node for `vmi`, or the reason it fits nowhere ("0/3 nodes are
/// available: 2 node(s) had insufficient kvmlet.io/memory, 1 node(s) were not schedulable").
pub fn choose(
    nodes: &[Node],
    vmi: &VirtualMachineInstance,
    used: &BTreeMap<String, NodeUsage>,
    threshold: Duration,
    now: Timestamp,
) -> Result<String, String> {
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<(u64, String)> = None;
    for node in nodes {
        let name = node.name_any();
        let in_use = used.get(&name).copied().unwrap_or_default();
        match unfit(node, vmi, in_use, threshold, now) {
            Some(reason) => *reasons.entry(reason).or_default() += 1,
            None => {
                let memory =
                    node.status.as_ref().and_then(|s| s.allocatable.as_ref()).and_then(|a| a.get(MEMORY_RESOURCE));
                let free = memory.and_then(|q| quantity_mib(&q.0)).unwrap_or(0).saturating_sub(in_use.memory_mib);
                if best.as_ref().is_none_or(|(f, n)| free > *f || (free == *f && name < *n)) {
                    best = Some((free, name));
                }
            }
        }
    }
    best.map(|(_, name)| name).ok_or_else(|| {
        let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} node(s) {r}")).collect();
        format!(
            "0/{} nodes are available: {}",
            nodes.len(),
            if why.is_empty() { "no nodes".into() } else { why.join(", ") }
        )
    })
}

/// Runs the scheduler until the task is dropped.
pub async fn run(client: Client, config: SchedulerConfig) {
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let mut changes = watcher(vmis, watcher::Config::default()).default_backoff().applied_objects().boxed();
    // Nodes come, go and heartbeat: VMIs that fit nowhere are retried now and then.
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    tracing::info!(heartbeat_threshold = ?config.heartbeat_threshold, "scheduler started");
    loop {
        tokio::select! {
            change = changes.next() => match change {
                None => return,
                Some(Err(e)) => { tracing::warn!(error = %e, "VMI watch failed; retrying"); continue; }
                Some(Ok(vmi)) => {
                    // A placed VMI that runs on changes nothing; a pending one
                    // needs a place, and one that ends or goes frees room.
                    let (node, phase) = status(&vmi);
                    if node.is_some() && !phase.is_final() && vmi.metadata.deletion_timestamp.is_none() {
                        continue;
                    }
                }
            },
            _ = retry.tick() => {
                if let Err(e) = super::unresponsive::sweep(&client, config.heartbeat_threshold).await {
                    tracing::warn!(error = %e, "checking for unresponsive nodes failed; retrying");
                }
            }
        }
        // The changes already waiting (a watch's initial list, a burst of
        // creations) are all covered by the one pass that follows.
        while let Some(Some(_)) = changes.next().now_or_never() {}
        if let Err(e) = pass(&client, &config).await {
            tracing::warn!(error = %e, "scheduling pass failed; retrying");
        }
    }
}

/// One pass: every pending VMI, oldest first, placed or told why not.
async fn pass(client: &Client, config: &SchedulerConfig) -> kube::Result<()> {
    let all = Api::<VirtualMachineInstance>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut pending: Vec<&VirtualMachineInstance> = all
        .iter()
        .filter(|v| {
            let (node, phase) = status(v);
            node.is_none() && !phase.is_final() && v.metadata.deletion_timestamp.is_none()
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    pending.sort_by_key(|v| v.metadata.creation_timestamp.clone());
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let mut used: BTreeMap<String, NodeUsage> = BTreeMap::new();
    for vmi in &all {
        if let (Some(node), phase) = status(vmi) {
            if !phase.is_final() {
                used.entry(node.to_string()).or_default().add(request(vmi));
            }
        }
    }
    let now = Timestamp::now();
    for vmi in pending {
        let span = tracing::info_span!("vmi", namespace = %vmi.namespace().unwrap_or_default(), name = %vmi.name_any(), uid = %vmi.uid().unwrap_or_default());
        // Instrumented, never entered across an await.
        let placed =
            place(client, vmi, choose(&nodes, vmi, &used, config.heartbeat_threshold, now)).instrument(span).await?;
        if let Some(node) = placed {
            used.entry(node).or_default().add(request(vmi));
        }
    }
    Ok(())
}

/// Carries out a placement decision; the node when the VMI was placed.
async fn place(
    client: &Client,
    vmi: &VirtualMachineInstance,
    choice: Result<String, String>,
) -> kube::Result<Option<String>> {
    match choice {
        Ok(node) => {
            assign(client, vmi, &node).await?;
            tracing::info!(%node, "VMI scheduled");
            Ok(Some(node))
        }
        Err(message) => {
            unschedulable(client, vmi, &message).await?;
            Ok(None)
        }
    }
}

fn api(client: &Client, vmi: &VirtualMachineInstance) -> Api<VirtualMachineInstance> {
    Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default())
}

fn pod_scheduled(status: &str, reason: Option<&str>, message: Option<&str>) -> Condition {
    Condition {
        type_: "PodScheduled".into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message: message.map(str::to_string),
        last_probe_time: None,
        last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        )),
    }
}

/// `status.nodeName` and phase Scheduled (tested against the status read,
/// so a VMI another replica placed meanwhile is not placed twice), then the
/// label the node agents select on.
async fn assign(client: &Client, vmi: &VirtualMachineInstance, node: &str) -> kube::Result<()> {
    let status = vmi.status.clone().unwrap_or_default();
    let mut conditions: Vec<Condition> =
        status.conditions.iter().filter(|c| c.type_ != "PodScheduled").cloned().collect();
    conditions.push(pod_scheduled("True", None, None));
    let transitions = crate::phase_transitions::moving_to(&status, VirtualMachineInstancePhase::Scheduled);
    let new_status = proto::kubevirt::VirtualMachineInstanceStatus {
        node_name: Some(node.to_string()),
        phase: Some(VirtualMachineInstancePhase::Scheduled),
        conditions,
        phase_transition_timestamps: transitions,
        ..status
    };
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": vmi.resource_version()},
        {"op": "add", "path": "/status", "value": new_status},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("a well-formed JSON patch");
    let name = vmi.name_any();
    api(client, vmi).patch_status(&name, &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
    let label = json!({"metadata": {"labels": {NODE_NAME_LABEL: node}}});
    api(client, vmi).patch(&name, &PatchParams::default(), &Patch::Merge(&label)).await?;
    Ok(())
}

/// `PodScheduled=False`, reason `Unschedulable`, unless it already says so.
async fn unschedulable(client: &Client, vmi: &VirtualMachineInstance, message: &str) -> kube::Result<()> {
    let status = vmi.status.clone().unwrap_or_default();
    let current = status.conditions.iter().find(|c| c.type_ == "PodScheduled");
    if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message)) {
        return Ok(());
    }
    tracing::info!(%message, "VMI unschedulable");
    let mut conditions: Vec<Condition> =
        status.conditions.iter().filter(|c| c.type_ != "PodScheduled").cloned().collect();
    conditions.push(pod_scheduled("False", Some("Unschedulable"), Some(message)));
    let patch = json!({"status": {"conditions": conditions}});
    api(client, vmi).patch_status(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], vcpus: &str, memory: &str, heartbeat_age_s: i64) -> Node {
        let heartbeat = (Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(heartbeat_age_s)).to_string();
        let mut all: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.insert(SCHEDULABLE_LABEL.into(), "true".into());
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": all, "annotations": {HEARTBEAT_ANNOTATION: heartbeat}},
            "status": {"allocatable": {VCPUS_RESOURCE: vcpus, MEMORY_RESOURCE: memory}},
        }))
        .unwrap()
    }

    fn vmi(memory: &str, cores: u32, selector: Option<(&str, &str)>) -> VirtualMachineInstance {
        let mut spec =
            json!({"domain": {"cpu": {"cores": cores}, "resources": {"requests": {"memory": memory}}, "devices": {}}});
        if let Some((k, v)) = selector {
            spec["nodeSelector"] = json!({k: v});
        }
        serde_json::from_value(json!({"metadata": {"name": "v"}, "spec": spec})).unwrap()
    }

    #[test]
    fn quantities_and_requests() {
        assert_eq!(quantity_mib("64Mi"), Some(64));
        assert_eq!(quantity_mib("1Gi"), Some(1024));
        assert_eq!(quantity_mib("64M"), Some(61));
        assert_eq!(quantity_mib("1.5Gi"), Some(1536));
        assert_eq!(quantity_mib("lots"), None);
        assert_eq!(request(&vmi("128Mi", 2, None)), Request { vcpus: 2, memory_mib: 128 });
        assert_eq!(request(&vmi("1.5Gi", 2, None)), Request { vcpus: 2, memory_mib: 1536 });
        let mut by_cpu_request = vmi("64Mi", 1, None);
        by_cpu_request.spec.domain.cpu = None;
        by_cpu_request
            .spec
            .domain
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert("cpu".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("4".into()));
        assert_eq!(request(&by_cpu_request).vcpus, 4, "scheduled as it will run");
    }

    #[test]
    fn picks_a_live_fitting_matching_node_with_the_most_free_memory() {
        let t = Duration::from_secs(300);
        let now = Timestamp::now();
        let nodes = vec![
            node("small", &[], "4", "100Mi", 0),
            node("big", &[], "4", "1Gi", 0),
            node("stale", &[], "64", "64Gi", 600),
            node("gpu", &[("gpu", "yes")], "4", "512Mi", 0),
        ];
        let used = BTreeMap::new();
        assert_eq!(choose(&nodes, &vmi("64Mi", 1, None), &used, t, now), Ok("big".into()));
        assert_eq!(choose(&nodes, &vmi("64Mi", 1, Some(("gpu", "yes"))), &used, t, now), Ok("gpu".into()));
        let full = BTreeMap::from([("big".to_string(), NodeUsage { vcpus: 1, memory_mib: 1000, vms: 1 })]);
        assert_eq!(choose(&nodes, &vmi("64Mi", 1, None), &full, t, now), Ok("gpu".into()));
        let err = choose(&nodes, &vmi("2Gi", 1, None), &used, t, now).unwrap_err();
        assert_eq!(
            err,
            "0/4 nodes are available: 1 node(s) had a stale heartbeat, 3 node(s) had insufficient kvmlet.io/memory"
        );
        let err = choose(&nodes, &vmi("64Mi", 8, None), &used, t, now).unwrap_err();
        assert!(err.contains("insufficient kvmlet.io/vcpus"), "{err}");
    }

    #[test]
    fn a_node_at_its_max_vms_takes_no_more() {
        let t = Duration::from_secs(300);
        let now = Timestamp::now();
        let mut capped = node("capped", &[], "64", "64Gi", 0);
        capped
            .status
            .as_mut()
            .unwrap()
            .allocatable
            .as_mut()
            .unwrap()
            .insert(PODS_RESOURCE.into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()));
        let one = BTreeMap::from([("capped".to_string(), NodeUsage { vcpus: 1, memory_mib: 16, vms: 1 })]);
        let nodes = [capped];
        assert_eq!(choose(&nodes, &vmi("16Mi", 1, None), &one, t, now), Ok("capped".into()));
        let two = BTreeMap::from([("capped".to_string(), NodeUsage { vcpus: 2, memory_mib: 32, vms: 2 })]);
        let err = choose(&nodes, &vmi("16Mi", 1, None), &two, t, now).unwrap_err();
        assert_eq!(err, "0/1 nodes are available: 1 node(s) had too many pods (the node's --max-vms)");
        // A node that publishes no count is limited by its resources only.
        let uncapped = [node("old", &[], "64", "64Gi", 0)];
        let many = BTreeMap::from([("old".to_string(), NodeUsage { vcpus: 2, memory_mib: 32, vms: 5000 })]);
        assert_eq!(choose(&uncapped, &vmi("16Mi", 1, None), &many, t, now), Ok("old".into()));
    }
}
