//! The controller's finalizer on VMIs no VM looks after any more: an
//! orphan (`--cascade=orphan`, or its VM removed behind the controller's
//! back) still carries `kubevirt.io/virtualMachineControllerFinalize`, and
//! no VM sync will ever take it off, so deleting it would hang (KubeVirt's
//! "VMIs stuck terminating behind finalizers"). Once such a VMI is being
//! deleted, the finalizer goes; the node's own finalizer still holds it
//! until its VM process is gone.

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance};
use proto::labels::VM_CONTROLLER_FINALIZER;

use crate::finalizers;

/// Whether a live VM controls `vmi` (its controller reference names a VM of that UID).
async fn has_live_owner(client: &Client, vmi: &VirtualMachineInstance) -> kube::Result<bool> {
    let Some(owner) = vmi.owner_references().iter().find(|r| r.controller == Some(true) && r.kind == "VirtualMachine")
    else {
        return Ok(false);
    };
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default());
    Ok(vms.get_opt(&owner.name).await?.is_some_and(|vm| vm.uid().as_deref() == Some(owner.uid.as_str())))
}

async fn release(client: &Client, vmi: &VirtualMachineInstance) -> kube::Result<()> {
    if vmi.metadata.deletion_timestamp.is_none() || !finalizers::has(vmi, VM_CONTROLLER_FINALIZER) {
        return Ok(());
    }
    if has_live_owner(client, vmi).await? {
        return Ok(());
    }
    let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default());
    finalizers::remove(&api, vmi, VM_CONTROLLER_FINALIZER).await?;
    tracing::info!(namespace = ?vmi.namespace(), name = %vmi.name_any(), uid = ?vmi.uid(), "released a VMI no VM owns");
    Ok(())
}

/// Follows VMIs for as long as the controller runs.
pub async fn run(client: Client) {
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let mut changes = watcher(vmis, watcher::Config::default()).default_backoff().applied_objects().boxed();
    while let Some(change) = changes.next().await {
        match change {
            Ok(vmi) => {
                if let Err(e) = release(&client, &vmi).await {
                    // A conflict means the VMI changed; its next event retries.
                    tracing::debug!(namespace = ?vmi.namespace(), name = %vmi.name_any(), uid = ?vmi.uid(), error = %e, "cannot release the VMI");
                }
            }
            Err(e) => tracing::warn!(error = %e, "VMI watch failed; retrying"),
        }
    }
}
