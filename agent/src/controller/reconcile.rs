//! One VirtualMachine brought in line with its run strategy: finalizer and
//! firmware identity first, then ownership of the VMI with its name, the
//! strategy's decision, the writes, and the status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use proto::kubevirt::{
    StateChangeAction, StateChangeRequest, VirtualMachine, VirtualMachineInstance, VirtualMachineStatus,
};
use proto::labels::{VMI_FOREGROUND_FINALIZER, VM_CONTROLLER_FINALIZER};
use tracing::Instrument;

use super::strategy::{self, Decision};
use super::{backoff, identity, status, Context, ControllerError};

/// Kubernetes' finalizer on an owner whose dependents are being orphaned.
const ORPHAN_FINALIZER: &str = "orphan";

/// How the VM stands to the VMI that carries its name.
enum Instance {
    Absent,
    /// Controlled by this VM.
    Ours(VirtualMachineInstance),
    /// No controller: the VM may adopt it.
    Orphan(VirtualMachineInstance),
    /// Controlled by something else: left alone, and in the way (fencing).
    Foreign(VirtualMachineInstance),
}

fn classify(vm: &VirtualMachine, vmi: Option<VirtualMachineInstance>) -> Instance {
    let Some(vmi) = vmi else { return Instance::Absent };
    let controller = vmi.owner_references().iter().find(|r| r.controller == Some(true)).map(|r| r.uid.clone());
    match controller {
        None => Instance::Orphan(vmi),
        Some(uid) if Some(uid.as_str()) == vm.metadata.uid.as_deref() => Instance::Ours(vmi),
        Some(_) => Instance::Foreign(vmi),
    }
}

/// The controller's finalizer may leave the VMI once its final state has
/// been seen (and recorded), or once it is being deleted and no node holds
/// it any more (a VMI no node ever ran must not be stuck).
fn vmi_releasable(vmi: &VirtualMachineInstance) -> bool {
    let node_holds = vmi.finalizers().iter().any(|f| f == VMI_FOREGROUND_FINALIZER);
    strategy::phase(vmi).is_final() || (vmi.metadata.deletion_timestamp.is_some() && !node_holds)
}

pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let span = tracing::info_span!(
        "vm",
        namespace = %vm.namespace().unwrap_or_default(),
        name = %vm.name_any(),
        uid = %vm.uid().unwrap_or_default(),
    );
    sync(&vm, &ctx).instrument(span).await
}

pub fn error_policy(vm: Arc<VirtualMachine>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    crate::metrics::global().reconcile_error("vm-controller");
    tracing::debug!(namespace = ?vm.namespace(), name = %vm.name_any(), uid = ?vm.uid(), %error, "sync failed; retrying");
    // Conflicts are the common case (someone wrote first): retry soon.
    Action::requeue(Duration::from_millis(500))
}

async fn sync(vm: &VirtualMachine, ctx: &Context) -> Result<Action, ControllerError> {
    let w = &ctx.writer;
    let api: Api<VirtualMachineInstance> = Api::namespaced(w.client.clone(), &vm.namespace().unwrap_or_default());
    let instance = classify(vm, api.get_opt(&vm.name_any()).await?);

    if vm.metadata.deletion_timestamp.is_some() {
        return finish_deletion(vm, ctx, instance).await;
    }
    if !vm.finalizers().iter().any(|f| f == VM_CONTROLLER_FINALIZER) {
        w.add_vm_finalizer(vm).await?;
        return Ok(Action::await_change());
    }
    let old_status = vm.status.clone().unwrap_or_default();
    // A VMI of this VM, or one orphaned by an earlier VM of this name, means
    // guests already saw the name-derived identity.
    let had_vmi = old_status.created || matches!(instance, Instance::Ours(_) | Instance::Orphan(_));
    if let Some(firmware) = identity::missing(vm, had_vmi) {
        w.persist_firmware(vm, &firmware).await?;
        tracing::info!(uuid = ?firmware.uuid, "firmware identity persisted");
        return Ok(Action::await_change());
    }
    let vmi = match instance {
        Instance::Absent => None,
        Instance::Ours(vmi) => Some(vmi),
        Instance::Orphan(vmi) if vmi.metadata.deletion_timestamp.is_none() => {
            // The cached VM may predate a delete (an orphaning one strips
            // the VMI's owner reference right after marking the VM): adopt
            // only for what a fresh read says is still a live VM of this UID.
            let vms: Api<VirtualMachine> = Api::namespaced(w.client.clone(), &vm.namespace().unwrap_or_default());
            let fresh = vms.get_opt(&vm.name_any()).await?;
            if !fresh.is_some_and(|f| f.uid() == vm.uid() && f.metadata.deletion_timestamp.is_none()) {
                return Ok(Action::await_change());
            }
            w.adopt(vm, &vmi).await?;
            tracing::info!(vmi_uid = ?vmi.uid(), "adopted an orphan VMI");
            return Ok(Action::await_change());
        }
        Instance::Orphan(vmi) | Instance::Foreign(vmi) => {
            // Someone else's VMI (or an orphan on its way out) holds the
            // name: nothing may be created until it is gone.
            tracing::debug!(vmi_uid = ?vmi.uid(), "a VMI this VM does not own has its name; waiting");
            return Ok(Action::await_change());
        }
    };
    let strategy = vm.spec.effective_run_strategy().ok_or(ControllerError::NoRunStrategy)?;
    let now = Timestamp::now();
    let start_failure = backoff::next(&ctx.backoff, strategy, old_status.start_failure.as_ref(), vmi.as_ref(), now);
    if start_failure != old_status.start_failure {
        if let Some(failure) = &start_failure {
            tracing::info!(count = failure.consecutive_fail_count, retry_after = ?failure.retry_after_timestamp, "VMI failed to start");
        }
    }

    let mut requests = strategy::trim_requests(&old_status.state_change_requests, vmi.as_ref(), strategy);
    let decision = strategy::decide(strategy, vmi.as_ref(), &requests, old_status.run_strategy);
    let mut requeue = None;
    let mut current = vmi.clone();
    let mut failure = None;
    let mut create_pending = false;
    match decision {
        Decision::Nothing => {}
        Decision::Create => match backoff::wait(start_failure.as_ref(), now) {
            Some(wait) => {
                tracing::debug!(?wait, "start held back by the start-failure backoff");
                requeue = Some(wait);
            }
            None => {
                create_pending = true;
                match w.create_vmi(vm).await {
                    Ok(created) => {
                        tracing::info!(vmi_uid = ?created.uid(), ?strategy, "VMI created");
                        let note = format!(
                            "Started the virtual machine by creating the new virtual machine instance {}",
                            created.name_any()
                        );
                        w.event(vm, EventType::Normal, "SuccessfulCreate", note).await;
                        current = Some(created);
                    }
                    // Fencing: the old VMI's name is still taken; its deletion event brings us back.
                    Err(kube::Error::Api(e)) if e.code == 409 => requeue = Some(Duration::from_secs(1)),
                    Err(e) => {
                        let message = format!("Error creating virtual machine instance: {e}");
                        w.event(vm, EventType::Warning, "FailedCreate", message.clone()).await;
                        failure = Some(("FailedCreate".to_string(), message));
                        requeue = Some(Duration::from_secs(5));
                    }
                }
            }
        },
        Decision::Delete | Decision::DeleteAndQueueStart => {
            let vmi = vmi.as_ref().expect("a delete decision has a VMI");
            w.delete_vmi(vm, vmi).await?;
            tracing::info!(vmi_uid = ?vmi.uid(), ?strategy, phase = ?strategy::phase(vmi), "VMI deleted");
            let note = format!(
                "Stopped the virtual machine by deleting the virtual machine instance {}",
                vmi.uid().unwrap_or_default()
            );
            w.event(vm, EventType::Normal, "SuccessfulDelete", note).await;
            if decision == Decision::DeleteAndQueueStart
                && !requests.first().is_some_and(|r| r.action == StateChangeAction::Start)
            {
                requests.insert(0, StateChangeRequest { action: StateChangeAction::Start, uid: None, data: None });
            }
        }
    }

    w.write_requests(vm, &old_status.state_change_requests, &requests).await?;
    let inputs =
        status::Inputs { vm, vmi: current.as_ref(), strategy, create_pending, start_failure, failure, now: Time(now) };
    let new_status = VirtualMachineStatus { state_change_requests: requests, ..status::compute(&inputs) };
    w.write_status(vm, &new_status).await?;
    // Only now, with its final state recorded, may the VMI go.
    if let Some(vmi) = vmi.as_ref().filter(|v| vmi_releasable(v)) {
        w.remove_vmi_finalizer(vm, vmi).await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The VM is being deleted: its VMI goes first, then the VM's finalizer. A
/// VMI that is not ours (orphaned by `--cascade=orphan`) does not hold the VM.
async fn finish_deletion(vm: &VirtualMachine, ctx: &Context, instance: Instance) -> Result<Action, ControllerError> {
    let w = &ctx.writer;
    // An orphaning delete: the API strips the VMI's owner reference, then
    // drops this finalizer; the VMI must be left running.
    if vm.finalizers().iter().any(|f| f == ORPHAN_FINALIZER) {
        return Ok(Action::await_change());
    }
    if let Instance::Ours(vmi) = instance {
        if vmi.metadata.deletion_timestamp.is_none() {
            w.delete_vmi(vm, &vmi).await?;
            tracing::info!(vmi_uid = ?vmi.uid(), "VMI deleted with its VM");
            let note = format!(
                "Stopped the virtual machine by deleting the virtual machine instance {}",
                vmi.uid().unwrap_or_default()
            );
            w.event(vm, EventType::Normal, "SuccessfulDelete", note).await;
        }
        if vmi_releasable(&vmi) {
            w.remove_vmi_finalizer(vm, &vmi).await?;
        }
        let old = vm.status.clone().unwrap_or_default();
        let printable = Some("Terminating".to_string());
        w.write_status(vm, &VirtualMachineStatus { printable_status: printable, ..old }).await?;
        return Ok(Action::await_change());
    }
    w.remove_vm_finalizer(vm).await?;
    tracing::info!("VM deleted");
    Ok(Action::await_change())
}
