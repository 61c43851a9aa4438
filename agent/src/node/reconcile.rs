//! The node loop's reconcile: one VMI assigned to this node, and its VM
//! process, brought in line.
//!
//! | VMI | VM process | action |
//! |---|---|---|
//! | being deleted | alive | power button every 5 s; kill at the end of the grace period |
//! | being deleted | gone / none | final phase, clean up, drop the finalizer |
//! | not final | none | finalizer, translate, start (or `Failed` naming the field) |
//! | not final | running | `Running`, Ready |
//! | not final | exited | `Succeeded` (powered off) or `Failed` (with why), clean up |
//! | final | any exited | clean up, drop the finalizer |

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use proto::debug::{ControlRequest, VmExit, VmExitKind};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use proto::labels::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS;
use tracing::Instrument;

use super::report::PhaseChange;
use super::vms::{Process, Shutdown, VmEntry};
use super::{disks, translate, NodeContext};
use crate::images;
use crate::vmprocess::client;
use crate::vmprocess::state_dir::{StateDir, VmIdentity, VmRecord};

/// How often the power button is pressed again while a guest shuts down.
const POWER_BUTTON_REPEAT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("API: {0}")]
    Api(#[from] kube::Error),
    #[error("VMI without {0}")]
    Incomplete(&'static str),
}

pub async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<NodeContext>) -> Result<Action, NodeError> {
    let uid = vmi.metadata.uid.clone().ok_or(NodeError::Incomplete("metadata.uid"))?;
    let status = vmi.status.clone().unwrap_or_default();
    if status.node_name.as_deref() != Some(ctx.config.node_name.as_str()) {
        return Ok(Action::await_change());
    }
    let namespace = vmi.namespace().unwrap_or_default();
    let name = vmi.name_any();
    let span = tracing::info_span!("vmi", %namespace, vmi = %name, %uid);
    // Instrumented, not entered: an entered span held across an await
    // corrupts the worker thread's span stack (and panics other tasks).
    async move {
        let phase = status.phase.unwrap_or_default();
        let entry = ctx.vms.get(&uid);

        if vmi.metadata.deletion_timestamp.is_some() {
            ctx.images.forget(&uid);
            return shut_down(&vmi, entry, phase, &ctx).await;
        }
        match entry {
            None if phase.is_final() => {
                ctx.reporter.remove_finalizer(&vmi).await?;
                Ok(Action::await_change())
            }
            None if phase == Phase::Running => {
                // Running, yet no state directory here: the node lost the VM
                // (state wiped while the agent was away). Never start a second one.
                let exit = lost();
                finish(&vmi, phase, &exit, None, &ctx).await?;
                Ok(Action::await_change())
            }
            None => start(&vmi, &uid, &ctx).await,
            Some(entry) => sync(&vmi, entry, phase, &ctx).await,
        }
    }
    .instrument(span)
    .await
}

pub fn error_policy(_vmi: Arc<VirtualMachineInstance>, error: &NodeError, _ctx: Arc<NodeContext>) -> Action {
    crate::metrics::global().reconcile_error("node");
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

fn lost() -> VmExit {
    VmExit {
        kind: VmExitKind::Error,
        message: "the VM process is gone and left no exit record".into(),
        at_ms: crate::vmprocess::server::now_ms(),
    }
}

async fn start(vmi: &VirtualMachineInstance, uid: &str, ctx: &NodeContext) -> Result<Action, NodeError> {
    ctx.reporter.add_finalizer(vmi).await?;
    // --- images: containerDisk / kernelBoot images pulled (in the background) before translate ---
    match ctx.images.ensure(vmi) {
        images::Ensure::Ready(pulled) => record_image_events(vmi, pulled, ctx).await,
        images::Ensure::Waiting(waiting) => return pulling(vmi, waiting, ctx).await,
        images::Ensure::Failed { field, message } => return fail(vmi, &field, &message, ctx).await,
    }
    // --- end images ---
    let dir = match StateDir::new(&ctx.config.run_dir, uid) {
        Ok(dir) => dir,
        Err(e) => return fail(vmi, "metadata.uid", &e.to_string(), ctx).await,
    };
    let secrets = ctx.secrets(vmi).await?;
    let plan = match translate::translate(vmi, &ctx.config.defaults, &secrets, &dir.disks()) {
        Ok(plan) => plan,
        Err(e) => return fail(vmi, &e.field, &e.message, ctx).await,
    };
    if let Err(e) = std::fs::create_dir_all(dir.path()).and_then(|()| disks::make(&plan.files)) {
        let _ = dir.remove();
        return fail(vmi, "spec.volumes", &format!("cannot prepare the disks: {e}"), ctx).await;
    }
    if let Err(e) = plan.config.validate() {
        let _ = dir.remove();
        let e = plan.spec_error(&e);
        return fail(vmi, &e.field, &e.message, ctx).await;
    }
    let identity = VmIdentity { namespace: vmi.namespace().unwrap_or_default(), name: vmi.name_any(), uid: uid.into() };
    let record = VmRecord { identity, config: plan.config };
    let (vcpus, memory) = (record.config.vcpus, record.config.memory_mib);
    if let Err(e) = ctx.vms.start(record, dir.clone(), &ctx.config.exe, ctx.config.cgroup_parent.as_deref()) {
        let _ = dir.remove();
        return fail(vmi, "node", &format!("cannot start the VM process: {e}"), ctx).await;
    }
    tracing::info!(vcpus, memory_mib = memory, "VM process started");
    ctx.reporter
        .event(
            vmi,
            EventType::Normal,
            "Created",
            format!("VM process started on {} ({vcpus} vCPUs, {memory} MiB)", ctx.config.node_name),
        )
        .await;
    Ok(Action::await_change())
}

// --- images: the VMI while its images are pulled ---
/// `Scheduled` with the pull's reason (`PullingImage`, `ErrImagePull`, `ImagePullBackOff`) and its events.
async fn pulling(
    vmi: &VirtualMachineInstance,
    waiting: images::Waiting,
    ctx: &NodeContext,
) -> Result<Action, NodeError> {
    let change = PhaseChange {
        phase: Phase::Scheduled,
        reason: Some(waiting.reason.into()),
        message: Some(waiting.message),
        ready: false,
    };
    ctx.reporter.phase(vmi, &change).await?;
    record_image_events(vmi, waiting.events, ctx).await;
    Ok(waiting
        .retry_in
        .map_or_else(Action::await_change, |retry| Action::requeue(retry.max(Duration::from_millis(100)))))
}

async fn record_image_events(vmi: &VirtualMachineInstance, events: Vec<images::Notice>, ctx: &NodeContext) {
    for notice in events {
        let type_ = if notice.warning { EventType::Warning } else { EventType::Normal };
        ctx.reporter.event(vmi, type_, notice.reason, notice.note).await;
    }
}
// --- end images ---

/// Fails a VMI that cannot run here: phase, condition and event name the field.
async fn fail(
    vmi: &VirtualMachineInstance,
    field: &str,
    message: &str,
    ctx: &NodeContext,
) -> Result<Action, NodeError> {
    let message = format!("{field}: {message}");
    tracing::warn!(%message, "VMI cannot run");
    let change = PhaseChange {
        phase: Phase::Failed,
        reason: Some("Unsupported".into()),
        message: Some(message.clone()),
        ready: false,
    };
    ctx.reporter.phase(vmi, &change).await?;
    ctx.reporter.event(vmi, EventType::Warning, "Failed", message).await;
    ctx.reporter.remove_finalizer(vmi).await?;
    Ok(Action::await_change())
}

async fn sync(
    vmi: &VirtualMachineInstance,
    entry: VmEntry,
    phase: Phase,
    ctx: &NodeContext,
) -> Result<Action, NodeError> {
    match &entry.process {
        Process::Starting => Ok(Action::await_change()),
        Process::Running if phase.is_final() => {
            // A final VMI whose VM still runs (restored API data, a second
            // agent's mistake): a final phase is never undone, so stop it.
            request(&entry.dir, ControlRequest::Kill {}).await;
            Ok(Action::await_change())
        }
        Process::Running => {
            if phase != Phase::Running {
                let change = PhaseChange { phase: Phase::Running, reason: None, message: None, ready: true };
                ctx.reporter.phase(vmi, &change).await?;
                set_phase(ctx, &entry, Phase::Running);
                if let Some(created) = &vmi.metadata.creation_timestamp {
                    let seconds = k8s_openapi::jiff::Timestamp::now().duration_since(created.0).as_secs_f64();
                    crate::metrics::global().vmi_started(seconds.max(0.0));
                }
                ctx.reporter.event(vmi, EventType::Normal, "Started", "the guest is running".into()).await;
            }
            Ok(Action::await_change())
        }
        Process::Exited(exit) => {
            let exit = exit.clone().unwrap_or_else(|| crashed(&entry));
            finish(vmi, phase, &exit, None, ctx).await?;
            cleanup(ctx, &entry);
            ctx.reporter.remove_finalizer(vmi).await?;
            Ok(Action::await_change())
        }
    }
}

fn crashed(entry: &VmEntry) -> VmExit {
    let pid = entry.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let log = std::fs::read_to_string(entry.dir.vmm_log()).unwrap_or_default();
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).map(|l| format!(": {}", l.trim())).unwrap_or_default();
    VmExit {
        kind: VmExitKind::Error,
        message: format!("the VM process{pid} died unexpectedly{last}"),
        at_ms: crate::vmprocess::server::now_ms(),
    }
}

/// Writes the final phase for how the guest ended (once).
async fn finish(
    vmi: &VirtualMachineInstance,
    phase: Phase,
    exit: &VmExit,
    killed_after_grace: Option<Duration>,
    ctx: &NodeContext,
) -> Result<(), NodeError> {
    if phase.is_final() {
        return Ok(());
    }
    let (final_phase, reason) = match exit.kind {
        VmExitKind::PowerOff => (Phase::Succeeded, "GuestPoweredOff"),
        VmExitKind::Killed if killed_after_grace.is_some() => (Phase::Failed, "GracePeriodExpired"),
        VmExitKind::Killed => (Phase::Failed, "Killed"),
        VmExitKind::TripleFault => (Phase::Failed, "GuestCrashed"),
        VmExitKind::Error => (Phase::Failed, "VMProcessFailed"),
    };
    let message = match killed_after_grace {
        Some(grace) if grace.is_zero() => "grace period 0: the VM was killed".to_string(),
        Some(grace) => {
            format!("the guest did not power off within its {}s grace period and was killed", grace.as_secs())
        }
        None => exit.message.clone(),
    };
    let change =
        PhaseChange { phase: final_phase, reason: Some(reason.into()), message: Some(message.clone()), ready: false };
    ctx.reporter.phase(vmi, &change).await?;
    if let Some(entry) = vmi.metadata.uid.as_deref().and_then(|uid| ctx.vms.get(uid)) {
        set_phase(ctx, &entry, final_phase);
    }
    let (type_, event) =
        if final_phase == Phase::Succeeded { (EventType::Normal, "Stopped") } else { (EventType::Warning, "Failed") };
    tracing::info!(phase = ?final_phase, reason, %message, "VM stopped");
    ctx.reporter.event(vmi, type_, event, format!("{reason}: {message}")).await;
    Ok(())
}

/// A VMI marked for deletion: stop its guest gracefully, then let it go.
async fn shut_down(
    vmi: &VirtualMachineInstance,
    entry: Option<VmEntry>,
    phase: Phase,
    ctx: &NodeContext,
) -> Result<Action, NodeError> {
    let Some(entry) = entry else {
        if !phase.is_final() && phase != Phase::Pending && phase != Phase::Scheduled {
            finish(vmi, phase, &lost(), None, ctx).await?;
        }
        ctx.reporter.remove_finalizer(vmi).await?;
        return Ok(Action::await_change());
    };
    if let Process::Exited(exit) = &entry.process {
        let exit = exit.clone().unwrap_or_else(|| crashed(&entry));
        let killed_after = entry.shutdown.as_ref().filter(|s| s.killed).map(|s| s.grace);
        finish(vmi, phase, &exit, killed_after, ctx).await?;
        cleanup(ctx, &entry);
        ctx.reporter.remove_finalizer(vmi).await?;
        return Ok(Action::await_change());
    }
    let now = Instant::now();
    let uid = entry.identity.uid.clone();
    let Some(shutdown) = entry.shutdown.clone() else {
        let grace = vmi.spec.termination_grace_period_seconds.unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
        let grace = Duration::from_secs(grace.max(0) as u64);
        let shutdown = Shutdown { started: now, last_press: now, grace, killed: grace.is_zero() };
        ctx.vms.update(&uid, |e| e.shutdown = Some(shutdown));
        if grace.is_zero() {
            ctx.reporter.event(vmi, EventType::Normal, "ShuttingDown", "grace period 0: killing the VM".into()).await;
            request(&entry.dir, ControlRequest::Kill {}).await;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let note = format!("pressing the power button; the VM is killed after {}s", grace.as_secs());
        ctx.reporter.event(vmi, EventType::Normal, "ShuttingDown", note).await;
        request(&entry.dir, ControlRequest::PowerButton {}).await;
        return Ok(Action::requeue(POWER_BUTTON_REPEAT.min(grace)));
    };
    let deadline = shutdown.started + shutdown.grace;
    if now >= deadline {
        if !shutdown.killed {
            tracing::info!(grace_seconds = shutdown.grace.as_secs(), "grace period over; killing the VM");
            ctx.vms.update(&uid, |e| e.shutdown.as_mut().unwrap().killed = true);
        }
        request(&entry.dir, ControlRequest::Kill {}).await;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if now >= shutdown.last_press + POWER_BUTTON_REPEAT {
        request(&entry.dir, ControlRequest::PowerButton {}).await;
        ctx.vms.update(&uid, |e| e.shutdown.as_mut().unwrap().last_press = now);
    }
    Ok(Action::requeue(POWER_BUTTON_REPEAT.min(deadline - now)))
}

/// A control request whose failure only matters through the next status.
async fn request(dir: &StateDir, request: ControlRequest) {
    if let Err(e) = client::request(dir, &request).await {
        tracing::debug!(?request, error = %e, "control request failed");
    }
}

fn set_phase(ctx: &NodeContext, entry: &VmEntry, phase: Phase) {
    ctx.vms.update(&entry.identity.uid, |e| e.phase = format!("{phase:?}"));
}

/// Removes the state directory (and cgroup) of a VM whose process is gone.
fn cleanup(ctx: &NodeContext, entry: &VmEntry) {
    if entry.cleaned {
        return;
    }
    if let Err(e) = entry.dir.remove() {
        tracing::warn!(error = %e, "cannot remove the VM's state directory");
    }
    if let Some(parent) = &ctx.config.cgroup_parent {
        crate::vmprocess::cgroup::remove(parent, &entry.dir);
    }
    ctx.vms.update(&entry.identity.uid, |e| e.cleaned = true);
}
