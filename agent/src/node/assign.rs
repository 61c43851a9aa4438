//! Standalone mode's scheduler: one node, so every new VMI goes to it.
//! (In a cluster the VM controller picks nodes by capacity and selectors.)

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase};
use proto::labels::NODE_NAME_LABEL;
use serde_json::json;

/// Assigns each unassigned, live VMI to `node_name`: `status.nodeName` and
/// phase `Scheduled` first, then the label the node loop selects on.
pub async fn run(client: Client, node_name: String) {
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let mut events = watcher(vmis, watcher::Config::default()).default_backoff().applied_objects().boxed();
    while let Some(event) = events.next().await {
        let vmi = match event {
            Ok(vmi) => vmi,
            Err(e) => {
                tracing::warn!(error = %e, "VMI watch failed; retrying");
                continue;
            }
        };
        if let Err(e) = assign(&client, &vmi, &node_name).await {
            let (namespace, uid) = (vmi.namespace().unwrap_or_default(), vmi.uid().unwrap_or_default());
            tracing::warn!(%namespace, vmi = %vmi.name_any(), %uid, error = %e, "cannot assign the VMI");
        }
    }
}

async fn assign(client: &Client, vmi: &VirtualMachineInstance, node_name: &str) -> kube::Result<()> {
    let status = vmi.status.clone().unwrap_or_default();
    let labelled = vmi.labels().get(NODE_NAME_LABEL).is_some();
    let phase = status.phase.unwrap_or_default();
    if vmi.metadata.deletion_timestamp.is_some() || phase.is_final() || (labelled && status.node_name.is_some()) {
        return Ok(());
    }
    let namespace = vmi.namespace().unwrap_or_default();
    let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &namespace);
    let name = vmi.name_any();
    // The status patch's own watch event can arrive before the label is
    // seen; then only the (idempotent) label patch is repeated, silently.
    let scheduling = status.node_name.is_none();
    if scheduling {
        let mut transitions = serde_json::to_value(&status.phase_transition_timestamps).unwrap_or_default();
        if let Some(list) = transitions.as_array_mut() {
            list.push(json!({"phase": VirtualMachineInstancePhase::Scheduled, "phaseTransitionTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}));
        }
        let patch = json!({"status": {"nodeName": node_name, "phase": VirtualMachineInstancePhase::Scheduled, "phaseTransitionTimestamps": transitions}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    let patch = json!({"metadata": {"labels": {NODE_NAME_LABEL: node_name}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    if scheduling {
        tracing::info!(%namespace, vmi = %name, uid = vmi.uid().unwrap_or_default(), node = node_name, "VMI scheduled");
    }
    Ok(())
}
