//! What a run strategy asks for, given the VM's instance and its pending
//! state change requests (KubeVirt's table; see docs/kubevirt-compat.md).
//! Pure functions: the reconciler feeds them what it read and carries out
//! the answer.

use proto::kubevirt::{
    RunStrategy, StateChangeAction, StateChangeRequest, VirtualMachineInstance, VirtualMachineInstancePhase,
};

/// What the controller does with the instance in one sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Create a VMI (unless a start-failure backoff is pending).
    Create,
    /// Delete the current VMI.
    Delete,
    /// Delete the current (failed) VMI and queue a Start so it is recreated.
    DeleteAndQueueStart,
}

/// The phase of a VMI as the controller sees it (no status yet = Pending).
pub fn phase(vmi: &VirtualMachineInstance) -> VirtualMachineInstancePhase {
    vmi.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

fn is_final(vmi: &VirtualMachineInstance) -> bool {
    phase(vmi).is_final()
}

fn deleting(vmi: &VirtualMachineInstance) -> bool {
    vmi.metadata.deletion_timestamp.is_some()
}

/// A Stop request applies to `vmi` when it names its UID (or names none).
fn stop_applies(request: &StateChangeRequest, vmi: &VirtualMachineInstance) -> bool {
    request.action == StateChangeAction::Stop && (request.uid.is_none() || request.uid == vmi.metadata.uid)
}

/// Drops requests that are done or can no longer apply, front first: a
/// Stop whose VMI is gone (or is another one), a Start while a live
/// non-final VMI exists or under Halted. The first request left is the one
/// to act on.
pub fn trim_requests(
    requests: &[StateChangeRequest],
    vmi: Option<&VirtualMachineInstance>,
    strategy: RunStrategy,
) -> Vec<StateChangeRequest> {
    let mut left = requests.to_vec();
    while let Some(first) = left.first() {
        let done = match first.action {
            StateChangeAction::Stop => !vmi.is_some_and(|vmi| stop_applies(first, vmi)),
            StateChangeAction::Start => {
                strategy == RunStrategy::Halted || vmi.is_some_and(|vmi| !is_final(vmi) && !deleting(vmi))
            }
        };
        if !done {
            break;
        }
        left.remove(0);
    }
    left
}

/// The action for `strategy`. `requests` are already trimmed;
/// `recorded` is `status.runStrategy` (what the controller last acted on).
pub fn decide(
    strategy: RunStrategy,
    vmi: Option<&VirtualMachineInstance>,
    requests: &[StateChangeRequest],
    recorded: Option<RunStrategy>,
) -> Decision {
    let first = requests.first();
    let start_requested = first.is_some_and(|r| r.action == StateChangeAction::Start);
    let Some(vmi) = vmi else {
        return match strategy {
            RunStrategy::Always | RunStrategy::Once => Decision::Create,
            RunStrategy::RerunOnFailure if start_requested || recorded != Some(strategy) => Decision::Create,
            RunStrategy::Manual if start_requested => Decision::Create,
            _ => Decision::Nothing,
        };
    };
    // Fencing: a VMI on its way out is waited for, never replaced early.
    if deleting(vmi) {
        return Decision::Nothing;
    }
    let stop_requested = first.is_some_and(|r| stop_applies(r, vmi));
    match (strategy, phase(vmi)) {
        (RunStrategy::Halted, _) => Decision::Delete,
        (RunStrategy::Once, _) => Decision::Nothing,
        (RunStrategy::Always, p) if p.is_final() => Decision::Delete,
        (RunStrategy::RerunOnFailure, VirtualMachineInstancePhase::Succeeded) => Decision::Delete,
        (RunStrategy::RerunOnFailure, VirtualMachineInstancePhase::Failed) => Decision::DeleteAndQueueStart,
        // Manual leaves a final VMI until asked (start sends Stop{uid} first).
        (_, _) if stop_requested => Decision::Delete,
        _ => Decision::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use proto::kubevirt::VirtualMachineInstanceStatus;

    use super::*;

    fn vmi(uid: &str, phase: VirtualMachineInstancePhase) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm", Default::default());
        vmi.metadata.uid = Some(uid.into());
        vmi.status = Some(VirtualMachineInstanceStatus { phase: Some(phase), ..Default::default() });
        vmi
    }

    fn stop(uid: &str) -> StateChangeRequest {
        StateChangeRequest { action: StateChangeAction::Stop, uid: Some(uid.into()), data: None }
    }

    fn start() -> StateChangeRequest {
        StateChangeRequest { action: StateChangeAction::Start, uid: None, data: None }
    }

    use RunStrategy::*;
    use VirtualMachineInstancePhase::*;

    #[test]
    fn the_fact_sheet_table() {
        let running = vmi("a", Running);
        let succeeded = vmi("a", Succeeded);
        let failed = vmi("a", Failed);
        let cases: &[(RunStrategy, Option<&VirtualMachineInstance>, Decision)] = &[
            (Always, None, Decision::Create),
            (Always, Some(&running), Decision::Nothing),
            (Always, Some(&succeeded), Decision::Delete),
            (Always, Some(&failed), Decision::Delete),
            (RerunOnFailure, Some(&running), Decision::Nothing),
            (RerunOnFailure, Some(&succeeded), Decision::Delete),
            (RerunOnFailure, Some(&failed), Decision::DeleteAndQueueStart),
            (Manual, None, Decision::Nothing),
            (Manual, Some(&running), Decision::Nothing),
            (Manual, Some(&succeeded), Decision::Nothing),
            (Manual, Some(&failed), Decision::Nothing),
            (Halted, None, Decision::Nothing),
            (Halted, Some(&running), Decision::Delete),
            (Halted, Some(&succeeded), Decision::Delete),
            (Once, None, Decision::Create),
            (Once, Some(&running), Decision::Nothing),
            (Once, Some(&failed), Decision::Nothing),
        ];
        for (strategy, vmi, expected) in cases {
            assert_eq!(decide(*strategy, *vmi, &[], Some(*strategy)), *expected, "{strategy:?} {:?}", vmi.map(phase));
        }
    }

    #[test]
    fn rerun_on_failure_creates_only_on_start_or_a_switch() {
        assert_eq!(decide(RerunOnFailure, None, &[], Some(RerunOnFailure)), Decision::Nothing);
        assert_eq!(decide(RerunOnFailure, None, &[start()], Some(RerunOnFailure)), Decision::Create);
        assert_eq!(decide(RerunOnFailure, None, &[], Some(Manual)), Decision::Create);
        assert_eq!(decide(RerunOnFailure, None, &[], None), Decision::Create);
        assert_eq!(decide(Manual, None, &[start()], Some(Manual)), Decision::Create);
    }

    #[test]
    fn stop_requests_delete_only_their_vmi() {
        let running = vmi("a", Running);
        for strategy in [Always, RerunOnFailure, Manual] {
            assert_eq!(decide(strategy, Some(&running), &[stop("a")], Some(strategy)), Decision::Delete);
        }
        let trimmed = trim_requests(&[stop("b"), start()], Some(&running), Manual);
        assert_eq!(trimmed, vec![], "a Stop for another VMI is dropped, then the Start while one runs");
        let final_vmi = vmi("a", Succeeded);
        let trimmed = trim_requests(&[stop("a"), start()], Some(&final_vmi), Manual);
        assert_eq!(trimmed, vec![stop("a"), start()]);
        assert_eq!(decide(Manual, Some(&final_vmi), &trimmed, Some(Manual)), Decision::Delete);
        let trimmed = trim_requests(&trimmed, None, Manual);
        assert_eq!(trimmed, vec![start()], "the Stop is done once its VMI is gone");
        assert_eq!(decide(Manual, None, &trimmed, Some(Manual)), Decision::Create);
    }

    #[test]
    fn a_vmi_being_deleted_is_waited_for() {
        let mut going = vmi("a", Running);
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        for strategy in RunStrategy::ALL {
            assert_eq!(decide(strategy, Some(&going), &[start()], None), Decision::Nothing, "{strategy:?}");
        }
        assert_eq!(trim_requests(&[start()], Some(&going), Manual), vec![start()], "the Start waits for it");
        assert_eq!(trim_requests(&[start()], None, Halted), vec![]);
    }
}
