//! The node loop's reconcile: one VMI assigned to this node, and its VM
//! process, brought in line. `decision::decide` says what to do (its table
//! is there); this module carries the step out against the API and the VM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use proto::debug::{ControlRequest, VmExit, VmExitKind};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use proto::labels::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS;
use tracing::Instrument;

use super::decision::{self, Observed, Step, AFTER_KILL, POWER_BUTTON_REPEAT};
use super::report::PhaseChange;
use super::vms::{Shutdown, VmEntry};
use super::{boot_disk, disks, translate, vm_network, NodeContext};
use crate::images;
use crate::vmprocess::cgroup;
use crate::vmprocess::state_dir::{StateDir, VmIdentity, VmRecord};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("API")]
    Api(#[from] kube::Error),
    #[error("VMI without {0}")]
    Incomplete(&'static str),
}

pub async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<NodeContext>) -> Result<Action, NodeError> {
    let uid = vmi.metadata.uid.clone().ok_or(NodeError::Incomplete("metadata.uid"))?;
    let status = vmi.status.clone().unwrap_or_default();
    // Placed here by the scheduler (status.nodeName); the label alone places nothing.
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
        // What `kvmlet ps` shows, also for a VM re-attached after a restart.
        ctx.vms.set_phase(&uid, phase);
        let grace = vmi.spec.termination_grace_period_seconds.unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
        let seen = Observed {
            phase,
            deleting: vmi.metadata.deletion_timestamp.is_some(),
            process: entry.as_ref().map(|e| &e.process),
            shutdown: entry.as_ref().and_then(|e| e.shutdown.as_ref()),
            grace: Duration::from_secs(grace.max(0) as u64),
            now: Instant::now(),
        };
        if seen.deleting {
            ctx.images.forget(&uid);
        }
        let step = decision::decide(&seen);
        tracing::trace!(?step, "node step");
        carry_out(step, &vmi, &uid, phase, entry, &ctx).await
    }
    .instrument(span)
    .await
}

async fn carry_out(
    step: Step,
    vmi: &VirtualMachineInstance,
    uid: &str,
    phase: Phase,
    entry: Option<VmEntry>,
    ctx: &NodeContext,
) -> Result<Action, NodeError> {
    match (step, entry) {
        (Step::Wait, _) => Ok(Action::await_change()),
        (Step::CheckAgainIn(delay), _) => Ok(Action::requeue(delay)),
        (Step::Start, _) => start(vmi, uid, ctx).await,
        (Step::Release, _) => {
            ctx.reporter.remove_finalizer(vmi).await?;
            Ok(Action::await_change())
        }
        (Step::FinishLost, _) => {
            finish(vmi, phase, &lost(), None, ctx).await?;
            ctx.reporter.remove_finalizer(vmi).await?;
            Ok(Action::await_change())
        }
        (Step::Finish { killed_after_grace }, Some(entry)) => {
            let exit = entry.exit().unwrap_or_else(lost);
            finish(vmi, phase, &exit, killed_after_grace, ctx).await?;
            ctx.clean_up(&entry);
            ctx.reporter.remove_finalizer(vmi).await?;
            Ok(Action::await_change())
        }
        (Step::ReportRunning, entry) => {
            let change = PhaseChange { phase: Phase::Running, reason: None, message: None, ready: true };
            ctx.reporter.phase(vmi, &change).await?;
            if let Some(entry) = &entry {
                report_interfaces(vmi, entry, ctx).await?;
            }
            ctx.vms.set_phase(uid, Phase::Running);
            if let Some(created) = &vmi.metadata.creation_timestamp {
                let seconds = k8s_openapi::jiff::Timestamp::now().duration_since(created.0).as_secs_f64();
                crate::metrics::global().vmi_started(seconds.max(0.0));
            }
            ctx.reporter.event(vmi, EventType::Normal, "Started", "the guest is running".into()).await;
            Ok(Action::await_change())
        }
        (Step::Kill, Some(entry)) => {
            ctx.request(&entry.dir, ControlRequest::Kill {}).await;
            Ok(Action::await_change())
        }
        (Step::BeginShutdown { grace }, Some(entry)) => {
            let now = Instant::now();
            let shutdown = Shutdown { started: now, last_press: now, grace, killed: grace.is_zero() };
            ctx.vms.update(uid, |e| e.shutdown = Some(shutdown));
            if grace.is_zero() {
                ctx.reporter
                    .event(vmi, EventType::Normal, "ShuttingDown", "grace period 0: killing the VM".into())
                    .await;
                ctx.request(&entry.dir, ControlRequest::Kill {}).await;
                return Ok(Action::requeue(AFTER_KILL));
            }
            let note = format!("pressing the power button; the VM is killed after {}s", grace.as_secs());
            ctx.reporter.event(vmi, EventType::Normal, "ShuttingDown", note).await;
            ctx.request(&entry.dir, ControlRequest::PowerButton {}).await;
            Ok(Action::requeue(POWER_BUTTON_REPEAT.min(grace)))
        }
        (Step::PressPowerButton { next_check }, Some(entry)) => {
            ctx.request(&entry.dir, ControlRequest::PowerButton {}).await;
            ctx.vms.update(uid, |e| {
                if let Some(shutdown) = e.shutdown.as_mut() {
                    shutdown.last_press = Instant::now();
                }
            });
            Ok(Action::requeue(next_check))
        }
        (Step::KillAfterGrace, Some(entry)) => {
            if entry.shutdown.as_ref().is_some_and(|s| !s.killed) {
                let grace_seconds = entry.shutdown.as_ref().map_or(0, |s| s.grace.as_secs());
                tracing::info!(grace_seconds, "grace period over; killing the VM");
                ctx.vms.update(uid, |e| {
                    if let Some(shutdown) = e.shutdown.as_mut() {
                        shutdown.killed = true;
                    }
                });
            }
            ctx.request(&entry.dir, ControlRequest::Kill {}).await;
            Ok(Action::requeue(AFTER_KILL))
        }
        // Steps about a VM process are only decided when there is one.
        (step, None) => unreachable_step(step),
    }
}

/// `status.interfaces` for a VM with a NIC: its MAC and the pod IP CNI gave it.
async fn report_interfaces(vmi: &VirtualMachineInstance, entry: &VmEntry, ctx: &NodeContext) -> Result<(), NodeError> {
    let Some(net) = entry.config.nets.first() else { return Ok(()) };
    let spec = &vmi.spec;
    let devices = &spec.domain.devices;
    let name =
        crate::vmi::network::pod_interface(&devices.interfaces, &spec.networks, devices.autoattach_pod_interface)
            .ok()
            .flatten()
            .map_or_else(|| crate::vmi::network::DEFAULT_NAME.to_string(), |i| i.name);
    let pod_ip = vm_network::pod_address(&entry.dir).map(|a| a.ip);
    let status = crate::vmi::network::interface_status(&name, net.mac, pod_ip);
    ctx.reporter.interfaces(vmi, vec![status]).await?;
    Ok(())
}

/// `decide` returns process steps only with a process; should that ever
/// break, the VMI is looked at again rather than the agent panicking.
fn unreachable_step(step: Step) -> Result<Action, NodeError> {
    tracing::error!(?step, "a VM step without a VM process; looking again");
    Ok(Action::requeue(Duration::from_secs(1)))
}

pub fn error_policy(_vmi: Arc<VirtualMachineInstance>, error: &NodeError, _ctx: Arc<NodeContext>) -> Action {
    crate::metrics::global().reconcile_error("node");
    tracing::warn!(error = %crate::errors::with_causes(error), "reconcile failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

fn lost() -> VmExit {
    VmExit {
        kind: VmExitKind::Error,
        message: "the VM process is gone and left no exit record".into(),
        at_ms: crate::vmprocess::server::now_ms(),
    }
}

/// How often a VMI waiting for a free VM slot looks again.
const SLOT_RETRY: Duration = Duration::from_secs(2);

async fn start(vmi: &VirtualMachineInstance, uid: &str, ctx: &NodeContext) -> Result<Action, NodeError> {
    let Some(_slot) = ctx.slots.take(uid, &ctx.vms) else {
        return unschedulable(vmi, ctx).await;
    };
    let vmi = &ctx.reporter.add_finalizer(vmi).await?;
    // Images first: a pull runs in the background and pokes this VMI when done.
    match ctx.images.ensure(vmi) {
        images::Ensure::Ready(pulled) => record_image_events(vmi, pulled, ctx).await,
        images::Ensure::Waiting(waiting) => return pulling(vmi, waiting, ctx).await,
        images::Ensure::Failed { field, message } => return fail(vmi, &field, &message, ctx).await,
    }
    let dir = match StateDir::new(&ctx.config.run_dir, uid) {
        Ok(dir) => dir,
        Err(e) => return fail(vmi, "metadata.uid", &crate::errors::with_causes(&e), ctx).await,
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
    // No kernelBoot: the boot disk's own kernel, read off the disk file just made.
    let (plan, boot) = {
        let (mut plan, boot_dir, defaults) = (plan, dir.boot(), ctx.config.defaults.clone());
        let read = tokio::task::spawn_blocking(move || {
            let note = boot_disk::prepare(&mut plan, &boot_dir, &defaults);
            (plan, note)
        });
        match read.await {
            Ok((plan, Ok(note))) => (plan, note),
            Ok((_, Err(e))) => {
                let _ = dir.remove();
                return fail(vmi, &e.field, &e.message, ctx).await;
            }
            Err(e) => {
                let _ = dir.remove();
                return fail(vmi, "spec.domain.devices.disks", &format!("reading the boot disk: {e}"), ctx).await;
            }
        }
    };
    if let Some(note) = &boot {
        let type_ = if note.warning { EventType::Warning } else { EventType::Normal };
        tracing::info!(boot = %note.message, "boot kernel chosen from the disk");
        ctx.reporter.event(vmi, type_, "BootKernel", note.message.clone()).await;
    }
    if let Err(e) = plan.config.validate() {
        let _ = dir.remove();
        let e = plan.spec_error(&e);
        return fail(vmi, &e.field, &e.message, ctx).await;
    }
    let identity = VmIdentity { namespace: vmi.namespace().unwrap_or_default(), name: vmi.name_any(), uid: uid.into() };
    let mut record = VmRecord {
        identity,
        config: plan.config,
        netns: None,
        cgroups: Vec::new(),
        vm_user: Some(ctx.config.vm_user),
        boot: boot.map(|note| note.message),
        test_hooks: ctx.config.test_vm_hooks,
    };
    if let (Some(cni), Some(interface)) = (&ctx.config.cni, &plan.interface) {
        match vm_network::attach(cni, &dir, uid, &interface.ports) {
            Ok(attached) => {
                tracing::info!(pod_ip = %attached.address.ip, "pod network attached");
                if let (Some(net), Some(mtu)) = (record.config.nets.first_mut(), attached.mtu) {
                    net.mtu = mtu;
                }
                record.netns = Some(attached.netns);
            }
            Err(e) => {
                let _ = dir.remove();
                let message = format!("cannot attach the pod network: {}", crate::errors::with_causes(&e));
                return fail(vmi, "spec.networks", &message, ctx).await;
            }
        }
    }
    let (vcpus, memory) = (record.config.vcpus, record.config.memory_mib);
    let limits = cgroup::VmLimits::of(&record.config);
    match cgroup::prepare(&ctx.config.cgroup_parents, &dir, &limits) {
        Ok(cgroups) => record.cgroups = cgroups,
        Err(e) => {
            cgroup::remove(&ctx.config.cgroup_parents, &dir);
            if let Some(cni) = &ctx.config.cni {
                vm_network::detach(cni, &dir, uid);
            }
            let _ = dir.remove();
            return fail(vmi, "node", &format!("cannot prepare the VM's cgroups: {e}"), ctx).await;
        }
    }
    if let Err(e) = ctx.vms.start(record, dir.clone(), &ctx.config.exe) {
        cgroup::remove(&ctx.config.cgroup_parents, &dir);
        if let Some(cni) = &ctx.config.cni {
            vm_network::detach(cni, &dir, uid);
        }
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

/// Fails a VMI that cannot run here: phase, condition and event name the field.
/// The node runs its maximum of VMs: this VMI waits, `Unschedulable`, and
/// starts once a slot is free (nothing of it was prepared).
async fn unschedulable(vmi: &VirtualMachineInstance, ctx: &NodeContext) -> Result<Action, NodeError> {
    let max = ctx.slots.max();
    let message = format!("node {} already runs its maximum of {max} VMs (--max-vms)", ctx.config.node_name);
    let already =
        vmi.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.reason.as_deref() == Some(UNSCHEDULABLE)));
    if !already {
        tracing::warn!(%message, "VMI waits for a free VM slot");
        ctx.reporter.event(vmi, EventType::Warning, UNSCHEDULABLE, message.clone()).await;
    }
    let phase = vmi.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Scheduled);
    let change = PhaseChange { phase, reason: Some(UNSCHEDULABLE.into()), message: Some(message), ready: false };
    ctx.reporter.phase(vmi, &change).await?;
    Ok(Action::requeue(SLOT_RETRY))
}

/// Kubernetes' reason for what the node cannot take now.
const UNSCHEDULABLE: &str = "Unschedulable";

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
    let (final_phase, reason) = (exit.kind.vmi_phase(), exit.kind.vmi_reason(killed_after_grace.is_some()));
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
    if let Some(uid) = vmi.metadata.uid.as_deref() {
        ctx.vms.set_phase(uid, final_phase);
    }
    let (type_, event) =
        if final_phase == Phase::Succeeded { (EventType::Normal, "Stopped") } else { (EventType::Warning, "Failed") };
    tracing::info!(phase = ?final_phase, reason, %message, "VM stopped");
    ctx.reporter.event(vmi, type_, event, format!("{reason}: {message}")).await;
    Ok(())
}
