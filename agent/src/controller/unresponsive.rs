//! VMIs on nodes whose agent stopped heartbeating: after the threshold
//! (KubeVirt: 5 minutes) they are `Failed` with reason `NodeUnresponsive`,
//! so their VMs' run strategies can start them elsewhere. The node's
//! finalizer is then taken off such a VMI once it is being deleted, since
//! no agent is there to do it; should the agent come back, it stops any VM
//! process whose VMI is gone.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use proto::kubevirt::{Condition, VirtualMachineInstance, VirtualMachineInstancePhase};
use proto::labels::VMI_FOREGROUND_FINALIZER;
use serde_json::json;
use tracing::Instrument;

use super::scheduler::heartbeat_fresh;

pub const REASON: &str = "NodeUnresponsive";

/// One pass over all VMIs placed on nodes.
pub async fn sweep(client: &Client, threshold: Duration) -> kube::Result<()> {
    let vmis = Api::<VirtualMachineInstance>::all(client.clone()).list(&ListParams::default()).await?.items;
    let placed: Vec<&VirtualMachineInstance> =
        vmis.iter().filter(|v| v.status.as_ref().is_some_and(|s| s.node_name.is_some())).collect();
    if placed.is_empty() {
        return Ok(());
    }
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let now = k8s_openapi::jiff::Timestamp::now();
    for vmi in placed {
        let status = vmi.status.clone().unwrap_or_default();
        let node_name = status.node_name.clone().unwrap_or_default();
        let alive =
            nodes.iter().find(|n| n.name_any() == node_name).is_some_and(|n| heartbeat_fresh(n, threshold, now));
        if alive {
            continue;
        }
        let span = tracing::info_span!("vmi", namespace = %vmi.namespace().unwrap_or_default(), name = %vmi.name_any(), uid = %vmi.uid().unwrap_or_default(), node = %node_name);
        // Instrumented, never entered across an await.
        fail_or_release(client, vmi, &node_name, threshold).instrument(span).await?;
    }
    Ok(())
}

async fn fail_or_release(
    client: &Client,
    vmi: &VirtualMachineInstance,
    node_name: &str,
    threshold: Duration,
) -> kube::Result<()> {
    let status = vmi.status.clone().unwrap_or_default();
    let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default());
    let name = vmi.name_any();
    let phase = status.phase.unwrap_or_default();
    if !phase.is_final() {
        tracing::warn!(?threshold, "node unresponsive; failing its VMI");
        let message = format!("node {node_name} sent no heartbeat within {}s", threshold.as_secs());
        let mut conditions: Vec<Condition> = status.conditions.iter().filter(|c| c.type_ != "Ready").cloned().collect();
        conditions.push(Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: Some(REASON.into()),
            message: Some(message),
            last_probe_time: None,
            last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        });
        let transitions = crate::phase_transitions::moving_to(&status, VirtualMachineInstancePhase::Failed);
        // Tested against what was read: an agent that came back and
        // wrote meanwhile wins.
        let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": vmi.resource_version()},
        {"op": "replace", "path": "/status/phase", "value": VirtualMachineInstancePhase::Failed},
        {"op": "add", "path": "/status/reason", "value": REASON},
        {"op": "add", "path": "/status/conditions", "value": conditions},
        {"op": "add", "path": "/status/phaseTransitionTimestamps", "value": transitions},
        ]);
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("a well-formed JSON patch");
        api.patch_status(&name, &PatchParams::default(), &Patch::Json::<()>(patch)).await?;
    } else if vmi.metadata.deletion_timestamp.is_some()
        && status.reason.as_deref() == Some(REASON)
        && crate::finalizers::remove(&api, vmi, VMI_FOREGROUND_FINALIZER).await?.is_some()
    {
        tracing::info!("removed the finalizer of the unresponsive node");
    }
    Ok(())
}
