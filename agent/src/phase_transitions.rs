//! `status.phaseTransitionTimestamps`: one entry, stamped now, each time a
//! VMI's phase changes. The one rule for every writer of a VMI's phase (the
//! node, the scheduler, the unresponsive-node sweep).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proto::kubevirt::{PhaseTransitionTimestamp, VirtualMachineInstancePhase, VirtualMachineInstanceStatus};

/// The transitions to write when the VMI moves to `phase`: the ones it has,
/// plus `phase` now unless it is already in that phase.
pub fn moving_to(
    status: &VirtualMachineInstanceStatus,
    phase: VirtualMachineInstancePhase,
) -> Vec<PhaseTransitionTimestamp> {
    let mut transitions = status.phase_transition_timestamps.clone();
    if status.phase != Some(phase) {
        transitions.push(PhaseTransitionTimestamp {
            phase,
            phase_transition_timestamp: Time(k8s_openapi::jiff::Timestamp::now()),
        });
    }
    transitions
}

#[cfg(test)]
mod tests {
    use VirtualMachineInstancePhase::*;

    use super::*;

    #[test]
    fn a_new_phase_is_stamped_once() {
        let status = VirtualMachineInstanceStatus::default();
        let scheduled = VirtualMachineInstanceStatus {
            phase: Some(Scheduled),
            phase_transition_timestamps: moving_to(&status, Scheduled),
            ..status
        };
        assert_eq!(scheduled.phase_transition_timestamps.iter().map(|t| t.phase).collect::<Vec<_>>(), [Scheduled]);
        assert_eq!(moving_to(&scheduled, Scheduled), scheduled.phase_transition_timestamps, "no change, no entry");
        let phases: Vec<_> = moving_to(&scheduled, Running).iter().map(|t| t.phase).collect();
        assert_eq!(phases, [Scheduled, Running]);
    }
}
