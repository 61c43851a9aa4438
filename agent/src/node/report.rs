//! What the node tells the API about its VMIs: phase, reason and the Ready
//! condition (status subresource), its finalizer, and events.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use proto::kubevirt::{Condition, VirtualMachineInstance, VirtualMachineInstancePhase};
use proto::labels::VMI_FOREGROUND_FINALIZER;
use serde_json::json;

pub struct VmiReporter {
    client: Client,
    recorder: Recorder,
}

/// A phase change with its reason, as written to `status`.
#[derive(Debug, Clone)]
pub struct PhaseChange {
    pub phase: VirtualMachineInstancePhase,
    /// Machine-readable reason (`status.reason`, Ready condition reason).
    pub reason: Option<String>,
    pub message: Option<String>,
    pub ready: bool,
}

impl VmiReporter {
    pub fn new(client: Client, node_name: &str) -> VmiReporter {
        let reporter = Reporter { controller: "virt-handler".into(), instance: Some(node_name.to_string()) };
        VmiReporter { recorder: Recorder::new(client.clone(), reporter), client }
    }

    fn api(&self, vmi: &VirtualMachineInstance) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), &vmi.namespace().unwrap_or_default())
    }

    /// Writes the phase, reason and Ready condition, keeping the rest of the
    /// status. Does nothing when the VMI already says all of it.
    pub async fn phase(&self, vmi: &VirtualMachineInstance, change: &PhaseChange) -> kube::Result<()> {
        let status = vmi.status.clone().unwrap_or_default();
        let ready = ready_condition(change);
        let current_ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let same_ready = current_ready.is_some_and(|c| c.status == ready.status && c.reason == ready.reason);
        if status.phase == Some(change.phase) && status.reason == change.reason && same_ready {
            return Ok(());
        }
        let mut conditions: Vec<Condition> = status.conditions.iter().filter(|c| c.type_ != "Ready").cloned().collect();
        let ready = match current_ready {
            Some(c) if c.status == ready.status => {
                Condition { last_transition_time: c.last_transition_time.clone(), ..ready }
            }
            _ => ready,
        };
        conditions.push(ready);
        let transitions = crate::phase_transitions::moving_to(&status, change.phase);
        let patch = json!({
            "status": {
                "phase": change.phase,
                "reason": change.reason,
                "conditions": conditions,
                "phaseTransitionTimestamps": transitions,
            }
        });
        self.api(vmi).patch_status(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
    }

    /// Writes `status.interfaces` unless the VMI already says it.
    pub async fn interfaces(
        &self,
        vmi: &VirtualMachineInstance,
        interfaces: Vec<serde_json::Value>,
    ) -> kube::Result<()> {
        if vmi.status.as_ref().is_some_and(|s| s.interfaces == interfaces) {
            return Ok(());
        }
        let patch = json!({"status": {"interfaces": interfaces}});
        self.api(vmi).patch_status(&vmi.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
    }

    /// Adds the node's finalizer; the VMI as it is now.
    pub async fn add_finalizer(&self, vmi: &VirtualMachineInstance) -> kube::Result<VirtualMachineInstance> {
        let written = crate::finalizers::add(&self.api(vmi), vmi, VMI_FOREGROUND_FINALIZER).await?;
        Ok(written.unwrap_or_else(|| vmi.clone()))
    }

    /// Removes the node's finalizer: the VM process is gone and cleaned up.
    pub async fn remove_finalizer(&self, vmi: &VirtualMachineInstance) -> kube::Result<()> {
        crate::finalizers::remove(&self.api(vmi), vmi, VMI_FOREGROUND_FINALIZER).await.map(|_| ())
    }

    /// Records an event on the VMI; a failure is logged, never fatal.
    pub async fn event(&self, vmi: &VirtualMachineInstance, type_: EventType, reason: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &vmi.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "cannot record an event");
        }
    }
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn ready_condition(change: &PhaseChange) -> Condition {
    let (status, reason) = if change.ready {
        ("True", None)
    } else {
        ("False", Some(change.reason.clone().unwrap_or_else(|| "GuestNotRunning".into())))
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason,
        message: change.message.clone(),
        last_probe_time: None,
        last_transition_time: Some(Time(now())),
    }
}
