//! What the node loop does next for one VMI, given what it read: a pure
//! function from (phase, being deleted, VM process, graceful shutdown, now)
//! to a [`Step`]. `reconcile` carries the step out.
//!
//! | VMI | VM process | step |
//! |---|---|---|
//! | not final | none | `Start` (finalizer, translate, spawn; `Failed` naming the field) |
//! | `Running` | none | `FinishLost`: the node lost the VM; never start a second one |
//! | final | none | `Release` the finalizer |
//! | any | starting | `Wait` (unless being deleted) |
//! | not final | running | `ReportRunning` (once), then `Wait` |
//! | final | running | `Kill`: a final phase is never undone |
//! | any | exited | `Finish`: final phase for how it ended, clean up, release |
//! | being deleted | none | `Release` (`FinishLost` first if it was running) |
//! | being deleted | alive | `BeginShutdown`, `PressPowerButton` every 5 s, `KillAfterGrace` |

use std::time::{Duration, Instant};

use proto::kubevirt::VirtualMachineInstancePhase as Phase;

use super::vms::{Process, Shutdown};

/// How often the power button is pressed again while a guest shuts down.
pub const POWER_BUTTON_REPEAT: Duration = Duration::from_secs(5);

/// How soon a killed VM is looked at again.
pub const AFTER_KILL: Duration = Duration::from_secs(1);

/// What the node loop read about one VMI and its VM.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub phase: Phase,
    pub deleting: bool,
    /// None: no VM process for this VMI on this node.
    pub process: Option<&'a Process>,
    pub shutdown: Option<&'a Shutdown>,
    /// `terminationGracePeriodSeconds` (its default applied).
    pub grace: Duration,
    pub now: Instant,
}

/// One step of the node loop for a VMI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until the VMI or its VM process changes.
    Wait,
    /// Nothing now; look again after this long.
    CheckAgainIn(Duration),
    /// Add the finalizer, prepare the VM and start its process.
    Start,
    /// The guest runs: phase `Running`, Ready.
    ReportRunning,
    /// The VM process is gone: the final phase for how it ended (killed
    /// after the grace period, if so), clean up, release the finalizer.
    Finish { killed_after_grace: Option<Duration> },
    /// The VMI ran but no VM is here (its state was wiped): `Failed`, release.
    FinishLost,
    /// Release the node's finalizer; nothing runs here.
    Release,
    /// Kill a VM that must not run (its VMI is already final).
    Kill,
    /// Being deleted: start the graceful shutdown (grace 0 kills at once).
    BeginShutdown { grace: Duration },
    /// Press the power button again; look again after `next_check`.
    PressPowerButton { next_check: Duration },
    /// The grace period ran out: kill the VM.
    KillAfterGrace,
}

pub fn decide(seen: &Observed) -> Step {
    let phase = seen.phase;
    match seen.process {
        None if seen.deleting => {
            // A VMI deleted before its VM started (or after it was lost).
            if phase == Phase::Running {
                Step::FinishLost
            } else {
                Step::Release
            }
        }
        None if phase.is_final() => Step::Release,
        None if phase == Phase::Running => Step::FinishLost,
        None => Step::Start,
        Some(Process::Exited(_)) => {
            let killed_after_grace = seen.shutdown.filter(|s| s.killed).map(|s| s.grace);
            Step::Finish { killed_after_grace }
        }
        Some(_) if seen.deleting => shut_down(seen),
        Some(Process::Starting) => Step::Wait,
        Some(Process::Running) if phase.is_final() => Step::Kill,
        Some(Process::Running) if phase != Phase::Running => Step::ReportRunning,
        Some(Process::Running) => Step::Wait,
    }
}

/// A live VM whose VMI is being deleted.
fn shut_down(seen: &Observed) -> Step {
    let Some(shutdown) = seen.shutdown else {
        return Step::BeginShutdown { grace: seen.grace };
    };
    let deadline = shutdown.started + shutdown.grace;
    if seen.now >= deadline {
        return Step::KillAfterGrace;
    }
    let next_check = POWER_BUTTON_REPEAT.min(deadline - seen.now);
    if seen.now >= shutdown.last_press + POWER_BUTTON_REPEAT {
        Step::PressPowerButton { next_check }
    } else {
        Step::CheckAgainIn(next_check)
    }
}

#[cfg(test)]
mod tests {
    use proto::debug::{VmExit, VmExitKind};
    use Phase::*;

    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn seen<'a>(phase: Phase, deleting: bool, process: Option<&'a Process>, now: Instant) -> Observed<'a> {
        Observed { phase, deleting, process, shutdown: None, grace: GRACE, now }
    }

    #[test]
    fn the_node_table() {
        let now = Instant::now();
        let exited = Process::Exited(VmExit { kind: VmExitKind::PowerOff, message: String::new(), at_ms: 0 });
        let crashed = Process::Exited(VmExit { kind: VmExitKind::Error, message: String::new(), at_ms: 0 });
        let (starting, running) = (Process::Starting, Process::Running);
        let finish = Step::Finish { killed_after_grace: None };
        let cases: &[(Phase, bool, Option<&Process>, Step)] = &[
            (Pending, false, None, Step::Start),
            (Scheduled, false, None, Step::Start),
            (Running, false, None, Step::FinishLost),
            (Succeeded, false, None, Step::Release),
            (Failed, false, None, Step::Release),
            (Scheduled, false, Some(&starting), Step::Wait),
            (Running, false, Some(&starting), Step::Wait),
            (Scheduled, false, Some(&running), Step::ReportRunning),
            (Running, false, Some(&running), Step::Wait),
            (Succeeded, false, Some(&running), Step::Kill),
            (Failed, false, Some(&running), Step::Kill),
            (Running, false, Some(&exited), finish),
            (Running, false, Some(&crashed), finish),
            (Succeeded, false, Some(&exited), finish),
            (Scheduled, true, None, Step::Release),
            (Pending, true, None, Step::Release),
            (Running, true, None, Step::FinishLost),
            (Failed, true, None, Step::Release),
            (Running, true, Some(&exited), finish),
            (Scheduled, true, Some(&starting), Step::BeginShutdown { grace: GRACE }),
            (Running, true, Some(&running), Step::BeginShutdown { grace: GRACE }),
            (Succeeded, true, Some(&running), Step::BeginShutdown { grace: GRACE }),
        ];
        for (phase, deleting, process, expected) in cases {
            let step = decide(&seen(*phase, *deleting, *process, now));
            assert_eq!(step, *expected, "{phase:?}, deleting: {deleting}, process: {process:?}");
        }
    }

    #[test]
    fn a_graceful_shutdown_presses_the_button_every_5s_then_kills_at_the_deadline() {
        let started = Instant::now();
        let running = Process::Running;
        let shutdown = Shutdown { started, last_press: started, grace: Duration::from_secs(12), killed: false };
        let at = |secs: u64, last_press: u64| {
            let shutdown = Shutdown { last_press: started + Duration::from_secs(last_press), ..shutdown.clone() };
            let now = started + Duration::from_secs(secs);
            decide(&Observed { shutdown: Some(&shutdown), ..seen(Running, true, Some(&running), now) })
        };
        assert_eq!(at(1, 0), Step::CheckAgainIn(Duration::from_secs(5)));
        assert_eq!(at(5, 0), Step::PressPowerButton { next_check: Duration::from_secs(5) });
        assert_eq!(at(9, 5), Step::CheckAgainIn(Duration::from_secs(3)), "never past the deadline");
        assert_eq!(at(10, 5), Step::PressPowerButton { next_check: Duration::from_secs(2) });
        assert_eq!(at(12, 10), Step::KillAfterGrace);
        assert_eq!(at(40, 10), Step::KillAfterGrace, "again until the process is gone");
    }

    #[test]
    fn an_exit_after_the_grace_period_ran_out_says_so() {
        let started = Instant::now();
        let gone = Process::Exited(VmExit { kind: VmExitKind::Killed, message: String::new(), at_ms: 0 });
        let killed = Shutdown { started, last_press: started, grace: Duration::from_secs(7), killed: true };
        let seen = Observed { shutdown: Some(&killed), ..seen(Running, true, Some(&gone), started) };
        assert_eq!(decide(&seen), Step::Finish { killed_after_grace: Some(Duration::from_secs(7)) });
        let pressed_only = Shutdown { killed: false, ..killed.clone() };
        let seen = Observed { shutdown: Some(&pressed_only), ..seen };
        assert_eq!(decide(&seen), Step::Finish { killed_after_grace: None }, "the guest powered off in time");
    }
}
