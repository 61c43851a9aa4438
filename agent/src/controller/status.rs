//! The VM's status as KubeVirt reports it: `created`, `ready`,
//! `printableStatus` (first match wins), the recorded run strategy, the
//! start failure and the conditions (Ready, Failure, RestartRequired, and
//! the VMI's own, copied).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use proto::kubevirt::{
    Condition, RunStrategy, StartFailure, VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase,
    VirtualMachineStatus,
};
use proto::labels::VM_GENERATION_ANNOTATION;
use serde_json::{json, Map, Value};

use super::backoff;
use super::strategy::phase;

/// What one sync saw and did, from which the status follows.
pub struct Inputs<'a> {
    pub vm: &'a VirtualMachine,
    /// The VM's own VMI (a just-created one included).
    pub vmi: Option<&'a VirtualMachineInstance>,
    pub strategy: RunStrategy,
    /// A VMI is about to be created (asked for and not held back by the backoff).
    pub create_pending: bool,
    pub start_failure: Option<StartFailure>,
    /// Reason and message of an action that failed in this sync.
    pub failure: Option<(String, String)>,
    pub now: Time,
}

/// `printableStatus`, in KubeVirt's order of precedence (the states kvmlet
/// cannot be in — migrations, volumes, image pulls — never match).
pub fn printable(inputs: &Inputs) -> &'static str {
    let vmi = inputs.vmi;
    let vmi_phase = vmi.map(phase);
    let live = vmi.is_some_and(|v| !phase(v).is_final());
    if inputs.vm.metadata.deletion_timestamp.is_some() {
        return "Terminating";
    }
    if live && vmi.is_some_and(|v| v.metadata.deletion_timestamp.is_some()) {
        return "Stopping";
    }
    if vmi.is_some_and(|v| condition(v, "Paused").is_some_and(|c| c.status == "True")) {
        return "Paused";
    }
    if vmi_phase == Some(VirtualMachineInstancePhase::Running) {
        return "Running";
    }
    let unschedulable = condition_is(vmi, "PodScheduled", "False", Some("Unschedulable"));
    if live && unschedulable {
        return "ErrorUnschedulable";
    }
    let starting = matches!(
        vmi_phase,
        Some(
            VirtualMachineInstancePhase::Pending
                | VirtualMachineInstancePhase::Scheduling
                | VirtualMachineInstancePhase::Scheduled
        )
    );
    if starting || (vmi.is_none() && inputs.create_pending) {
        return "Starting";
    }
    if backoff::tracked(inputs.strategy) && inputs.start_failure.as_ref().is_some_and(|f| f.consecutive_fail_count > 0)
    {
        return "CrashLoopBackOff";
    }
    if vmi.is_none() || vmi_phase.is_some_and(|p| p.is_final()) {
        return "Stopped";
    }
    "Unknown"
}

fn condition<'a>(vmi: &'a VirtualMachineInstance, type_: &str) -> Option<&'a Condition> {
    vmi.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn condition_is(vmi: Option<&VirtualMachineInstance>, type_: &str, status: &str, reason: Option<&str>) -> bool {
    vmi.and_then(|v| condition(v, type_)).is_some_and(|c| c.status == status && c.reason.as_deref() == reason)
}

/// The VMI runs an older template: a spec change waits for a restart.
/// The grace period is left out: `stop --grace-period` writes it into the
/// VMI on purpose.
pub fn restart_required(vm: &VirtualMachine, vmi: &VirtualMachineInstance) -> bool {
    let mut template = vm.spec.template.spec.clone();
    let mut running = vmi.spec.clone();
    template.termination_grace_period_seconds = None;
    running.termination_grace_period_seconds = None;
    template != running
}

fn new_condition(type_: &str, status: &str, reason: Option<&str>, message: Option<String>, now: &Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message,
        last_probe_time: None,
        last_transition_time: Some(now.clone()),
    }
}

fn conditions(inputs: &Inputs, old: &[Condition]) -> Vec<Condition> {
    let now = &inputs.now;
    let mut out = Vec::new();
    match inputs.vmi {
        None => out.push(new_condition("Ready", "False", Some("VMINotExists"), Some("VMI does not exist".into()), now)),
        Some(vmi) => {
            match condition(vmi, "Ready") {
                Some(ready) => out.push(ready.clone()),
                None => out.push(new_condition(
                    "Ready",
                    "False",
                    Some("VMIConditionMissing"),
                    Some("VMI is missing the Ready condition".into()),
                    now,
                )),
            }
            let copied = vmi.status.iter().flat_map(|s| &s.conditions).filter(|c| c.type_ != "Ready");
            out.extend(copied.cloned());
            if !phase(vmi).is_final() && restart_required(inputs.vm, vmi) {
                let message = "the template changed while the VMI runs; restart the VM to apply it";
                out.push(new_condition("RestartRequired", "True", None, Some(message.into()), now));
            }
        }
    }
    if let Some((reason, message)) = failure(inputs, old) {
        out.push(new_condition("Failure", "True", Some(&reason), Some(message), now));
    }
    // A condition whose status did not change keeps its transition time.
    for condition in &mut out {
        if let Some(before) = old.iter().find(|c| c.type_ == condition.type_ && c.status == condition.status) {
            condition.last_transition_time = before.last_transition_time.clone();
        }
    }
    out
}

/// Why the VM is failing, for its `Failure` condition: an action of this
/// sync that failed, else a VMI that failed (its Ready condition's reason
/// and message, as the node wrote them), else the failure recorded before,
/// kept after the failed VMI is gone until a VMI runs again.
fn failure(inputs: &Inputs, old: &[Condition]) -> Option<(String, String)> {
    if let Some(failure) = &inputs.failure {
        return Some(failure.clone());
    }
    let vmi_phase = inputs.vmi.map(phase);
    if vmi_phase == Some(VirtualMachineInstancePhase::Failed) {
        let vmi = inputs.vmi?;
        let ready = condition(vmi, "Ready");
        let status_reason = vmi.status.as_ref().and_then(|s| s.reason.clone());
        let reason = ready.and_then(|c| c.reason.clone()).or(status_reason).unwrap_or_else(|| "Failed".into());
        let message = ready
            .and_then(|c| c.message.clone())
            .unwrap_or_else(|| format!("the virtual machine instance {} failed", vmi.name_any()));
        return Some((reason, message));
    }
    let ran = matches!(vmi_phase, Some(VirtualMachineInstancePhase::Running | VirtualMachineInstancePhase::Succeeded));
    if ran {
        return None;
    }
    let before = old.iter().find(|c| c.type_ == "Failure" && c.status == "True")?;
    Some((before.reason.clone().unwrap_or_default(), before.message.clone().unwrap_or_default()))
}

/// The status this sync leads to. `stateChangeRequests` are kept as they
/// were: they are written separately, guarded by a JSON patch test.
pub fn compute(inputs: &Inputs) -> VirtualMachineStatus {
    let old = inputs.vm.status.clone().unwrap_or_default();
    let vmi = inputs.vmi;
    let recorded = old.run_strategy.is_some() || old.created || vmi.is_some();
    VirtualMachineStatus {
        created: vmi.is_some(),
        ready: vmi.and_then(|v| condition(v, "Ready")).is_some_and(|c| c.status == "True"),
        printable_status: Some(printable(inputs).to_string()),
        run_strategy: if recorded { Some(inputs.strategy) } else { old.run_strategy },
        conditions: conditions(inputs, &old.conditions),
        start_failure: inputs.start_failure.clone(),
        desired_generation: inputs.vm.metadata.generation,
        observed_generation: vmi
            .and_then(|v| v.annotations().get(VM_GENERATION_ANNOTATION))
            .and_then(|g| g.parse().ok())
            .or(old.observed_generation),
        ..old
    }
}

/// A merge patch from `old` to `new` for the fields the controller owns,
/// or None when nothing changed.
pub fn merge_patch(old: &VirtualMachineStatus, new: &VirtualMachineStatus) -> Option<Value> {
    const OWNED: [&str; 8] = [
        "created",
        "ready",
        "printableStatus",
        "runStrategy",
        "conditions",
        "startFailure",
        "observedGeneration",
        "desiredGeneration",
    ];
    let old = serde_json::to_value(old).unwrap_or_default();
    let new = serde_json::to_value(new).unwrap_or_default();
    let mut patch = Map::new();
    for key in OWNED {
        if old.get(key) != new.get(key) {
            patch.insert(key.into(), new.get(key).cloned().unwrap_or(Value::Null));
        }
    }
    (!patch.is_empty()).then(|| json!({ "status": patch }))
}

#[cfg(test)]
mod tests {
    use proto::kubevirt::{VirtualMachineInstanceStatus, VirtualMachineSpec};

    use super::*;

    fn vmi(phase: VirtualMachineInstancePhase, conditions: Vec<Condition>) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm", Default::default());
        vmi.status = Some(VirtualMachineInstanceStatus { phase: Some(phase), conditions, ..Default::default() });
        vmi
    }

    fn inputs<'a>(vm: &'a VirtualMachine, vmi: Option<&'a VirtualMachineInstance>) -> Inputs<'a> {
        Inputs {
            vm,
            vmi,
            strategy: RunStrategy::Always,
            create_pending: false,
            start_failure: None,
            failure: None,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        }
    }

    #[test]
    fn printable_status_precedence() {
        let vm = VirtualMachine::new("vm", VirtualMachineSpec::default());
        assert_eq!(printable(&inputs(&vm, None)), "Stopped");
        assert_eq!(printable(&Inputs { create_pending: true, ..inputs(&vm, None) }), "Starting");
        let failure =
            StartFailure { consecutive_fail_count: 2, last_failed_vmi_uid: None, retry_after_timestamp: None };
        let crashing = Inputs { start_failure: Some(failure.clone()), ..inputs(&vm, None) };
        assert_eq!(printable(&crashing), "CrashLoopBackOff");
        let manual = Inputs { strategy: RunStrategy::Manual, start_failure: Some(failure), ..inputs(&vm, None) };
        assert_eq!(printable(&manual), "Stopped");
        let running = vmi(VirtualMachineInstancePhase::Running, vec![]);
        assert_eq!(printable(&inputs(&vm, Some(&running))), "Running");
        let mut stopping = running.clone();
        stopping.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(printable(&inputs(&vm, Some(&stopping))), "Stopping");
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let unschedulable = new_condition("PodScheduled", "False", Some("Unschedulable"), None, &now);
        let pending = vmi(VirtualMachineInstancePhase::Pending, vec![unschedulable]);
        assert_eq!(printable(&inputs(&vm, Some(&pending))), "ErrorUnschedulable");
        assert_eq!(printable(&inputs(&vm, Some(&vmi(VirtualMachineInstancePhase::Scheduled, vec![])))), "Starting");
        assert_eq!(printable(&inputs(&vm, Some(&vmi(VirtualMachineInstancePhase::Failed, vec![])))), "Stopped");
        let mut deleted = vm.clone();
        deleted.metadata.deletion_timestamp = Some(now);
        assert_eq!(printable(&inputs(&deleted, Some(&stopping))), "Terminating");
    }

    #[test]
    fn ready_conditions_and_restart_required() {
        let vm = VirtualMachine::new("vm", VirtualMachineSpec::default());
        let status = compute(&inputs(&vm, None));
        assert!(!status.created && !status.ready && status.run_strategy.is_none());
        assert_eq!(status.conditions[0].reason.as_deref(), Some("VMINotExists"));
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut running =
            vmi(VirtualMachineInstancePhase::Running, vec![new_condition("Ready", "True", None, None, &now)]);
        let status = compute(&inputs(&vm, Some(&running)));
        assert!(status.created && status.ready);
        assert_eq!(status.run_strategy, Some(RunStrategy::Always));
        assert!(!status.conditions.iter().any(|c| c.type_ == "RestartRequired"));
        running.spec.hostname = Some("older".into());
        let status = compute(&inputs(&vm, Some(&running)));
        assert!(status.conditions.iter().any(|c| c.type_ == "RestartRequired" && c.status == "True"));
        running.spec.hostname = None;
        running.spec.termination_grace_period_seconds = Some(0);
        assert!(!restart_required(&vm, &running), "a grace period written by stop is no template change");
    }

    #[test]
    fn a_failed_vmi_leaves_a_failure_condition_until_a_vmi_runs() {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut vm = VirtualMachine::new("vm", VirtualMachineSpec::default());
        let message = "spec.volumes[0].containerDisk.image: image \"no/such:1\" is not on this node";
        let ready = new_condition("Ready", "False", Some("Unsupported"), Some(message.into()), &now);
        let failed = vmi(VirtualMachineInstancePhase::Failed, vec![ready]);
        let failure_of = |status: &VirtualMachineStatus| {
            status.conditions.iter().find(|c| c.type_ == "Failure").map(|c| {
                (c.status.clone(), c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default())
            })
        };
        let status = compute(&inputs(&vm, Some(&failed)));
        let expected = Some(("True".to_string(), "Unsupported".to_string(), message.to_string()));
        assert_eq!(failure_of(&status), expected);
        // The VMI is deleted: the reason stays.
        vm.status = Some(status);
        let gone = compute(&inputs(&vm, None));
        assert_eq!(failure_of(&gone), expected);
        // A new VMI still starting: still there.
        vm.status = Some(gone);
        let starting = compute(&inputs(&vm, Some(&vmi(VirtualMachineInstancePhase::Scheduled, vec![]))));
        assert_eq!(failure_of(&starting), expected);
        // One runs: gone.
        vm.status = Some(starting);
        let running = compute(&inputs(&vm, Some(&vmi(VirtualMachineInstancePhase::Running, vec![]))));
        assert_eq!(failure_of(&running), None);
        vm.status = Some(running);
        assert_eq!(failure_of(&compute(&inputs(&vm, None))), None, "nothing to keep once a VMI ran");
        // A failure of this sync wins over the VMI's.
        let create = Inputs { failure: Some(("FailedCreate".into(), "no".into())), ..inputs(&vm, Some(&failed)) };
        assert_eq!(failure_of(&compute(&create)).unwrap().1, "FailedCreate");
    }

    #[test]
    fn merge_patch_only_for_changes_and_nulls_for_removals() {
        let old = VirtualMachineStatus { created: true, ready: true, ..Default::default() };
        assert_eq!(merge_patch(&old, &old), None);
        let new = VirtualMachineStatus { printable_status: Some("Stopped".into()), ..Default::default() };
        let patch = merge_patch(&old, &new).unwrap();
        assert_eq!(patch, json!({"status": {"created": null, "ready": null, "printableStatus": "Stopped"}}));
    }
}
