//! Start-failure backoff: a VMI that reached a final phase without ever
//! running counts as a failed start; the next one waits 10·n² s (plus up to
//! half of that again as jitter, so crash-looping VMs spread out), at most
//! 300 s. The base is configurable so tests need not wait minutes.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proto::kubevirt::{RunStrategy, StartFailure, VirtualMachineInstance, VirtualMachineInstancePhase};

/// The delay cap, as in KubeVirt.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay after the first failure (KubeVirt: 10 s).
    pub base: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { base: Duration::from_secs(10) }
    }
}

impl Backoff {
    /// base·n² plus `jitter` (0..=1) times half of that, capped.
    pub fn delay(&self, failures: i32, jitter: f64) -> Duration {
        let n = u32::try_from(failures.max(1)).unwrap_or(u32::MAX).min(1000);
        let delay = self.base.saturating_mul(n * n).min(MAX_DELAY);
        delay.saturating_add(delay.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)).min(MAX_DELAY)
    }
}

/// A random number in 0..=1 (the uuid crate's v4 randomness; no extra RNG needed).
pub fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as f64 / f64::from(u16::MAX)
}

/// Whether the strategy restarts VMIs, so start failures are tracked.
pub fn tracked(strategy: RunStrategy) -> bool {
    matches!(strategy, RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once)
}

/// Whether the VMI ever reached Running (its phase history says so).
pub fn ever_ran(vmi: &VirtualMachineInstance) -> bool {
    vmi.status.as_ref().is_some_and(|s| {
        s.phase == Some(VirtualMachineInstancePhase::Running)
            || s.phase_transition_timestamps.iter().any(|t| t.phase == VirtualMachineInstancePhase::Running)
    })
}

/// The start failure to record after seeing `vmi`, from `current`.
pub fn next(
    backoff: &Backoff,
    strategy: RunStrategy,
    current: Option<&StartFailure>,
    vmi: Option<&VirtualMachineInstance>,
    now: Timestamp,
) -> Option<StartFailure> {
    if !tracked(strategy) {
        return None;
    }
    let Some(vmi) = vmi else { return current.cloned() };
    let phase = vmi.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    if phase == VirtualMachineInstancePhase::Running {
        return None;
    }
    let already_counted = current.is_some_and(|f| f.last_failed_vmi_uid == vmi.metadata.uid);
    if !phase.is_final() || ever_ran(vmi) || already_counted {
        return current.cloned();
    }
    let count = current.map_or(0, |f| f.consecutive_fail_count) + 1;
    let delay = backoff.delay(count, jitter());
    let retry = now.checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX)).unwrap_or(now);
    Some(StartFailure {
        consecutive_fail_count: count,
        last_failed_vmi_uid: vmi.metadata.uid.clone(),
        retry_after_timestamp: Some(Time(retry)),
    })
}

/// How long a new VMI must still wait, if at all.
pub fn wait(failure: Option<&StartFailure>, now: Timestamp) -> Option<Duration> {
    let retry = failure?.retry_after_timestamp.as_ref()?.0;
    let left = now.duration_until(retry);
    (left > SignedDuration::ZERO).then(|| Duration::try_from(left).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use proto::kubevirt::{PhaseTransitionTimestamp, VirtualMachineInstanceStatus};

    use super::*;

    fn vmi(uid: &str, phases: &[VirtualMachineInstancePhase]) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm", Default::default());
        vmi.metadata.uid = Some(uid.into());
        let history = phases
            .iter()
            .map(|p| PhaseTransitionTimestamp { phase: *p, phase_transition_timestamp: Time(Timestamp::now()) })
            .collect();
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: phases.last().copied(),
            phase_transition_timestamps: history,
            ..Default::default()
        });
        vmi
    }

    #[test]
    fn delay_grows_quadratically_with_bounded_jitter_and_a_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.0), Duration::from_secs(10));
        assert_eq!(b.delay(2, 0.0), Duration::from_secs(40));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(135));
        assert_eq!(b.delay(6, 0.0), MAX_DELAY);
        assert_eq!(b.delay(100, 1.0), MAX_DELAY);
        assert!(b.delay(2, jitter()) <= Duration::from_secs(60));
    }

    #[test]
    fn failures_count_once_per_vmi_and_clear_on_running() {
        use VirtualMachineInstancePhase::*;
        let b = Backoff { base: Duration::from_millis(100) };
        let now = Timestamp::now();
        let first = next(&b, RunStrategy::Always, None, Some(&vmi("a", &[Scheduled, Failed])), now).unwrap();
        assert_eq!(first.consecutive_fail_count, 1);
        let again = next(&b, RunStrategy::Always, Some(&first), Some(&vmi("a", &[Scheduled, Failed])), now);
        assert_eq!(again.as_ref(), Some(&first), "the same VMI counts once");
        let second = next(&b, RunStrategy::Always, Some(&first), Some(&vmi("b", &[Succeeded])), now).unwrap();
        assert_eq!(second.consecutive_fail_count, 2);
        assert!(wait(Some(&second), now).is_some());
        let ran = next(&b, RunStrategy::Always, Some(&second), Some(&vmi("c", &[Running, Failed])), now);
        assert_eq!(ran, Some(second.clone()), "a VMI that ran is no start failure");
        assert_eq!(next(&b, RunStrategy::Always, Some(&second), Some(&vmi("c", &[Running])), now), None);
        assert_eq!(next(&b, RunStrategy::Manual, Some(&second), None, now), None);
    }
}
