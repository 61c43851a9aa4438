//! Why a guest stopped, and the one-shot signal that carries it from whichever
//! device or vCPU saw it first to whoever waits on the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How a VM's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5 through the sleep-control register).
    PowerOff,
    /// The guest asked to reboot (ACPI reset register or i8042 reset).
    Reboot,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// The VMM's caller killed the VM.
    Killed,
    /// The VMM could not go on: an unexpected KVM exit or a failing ioctl.
    Error(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "the guest powered off"),
            ExitReason::Reboot => write!(f, "the guest requested a reboot"),
            ExitReason::TripleFault => write!(f, "a vCPU triple-faulted"),
            ExitReason::Killed => write!(f, "the VM was killed"),
            ExitReason::Error(why) => write!(f, "VMM error: {why}"),
        }
    }
}

/// Set once; later requests are ignored (the first cause is the real one).
#[derive(Default)]
pub struct ExitSignal {
    stop: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    changed: Condvar,
}

impl ExitSignal {
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::debug!(%reason, "VM exit requested");
            *slot = Some(reason);
            self.stop.store(true, Ordering::SeqCst);
            self.changed.notify_all();
        }
    }

    /// True once an exit was requested: vCPUs stop running the guest.
    pub fn is_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for a reason.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let (slot, _) =
            self.changed.wait_timeout_while(slot, timeout, |r| r.is_none()).unwrap_or_else(|p| p.into_inner());
        slot.clone()
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let signal = ExitSignal::default();
        assert!(!signal.is_requested());
        assert_eq!(signal.wait_timeout(Duration::from_millis(1)), None);
        signal.request(ExitReason::PowerOff);
        signal.request(ExitReason::Killed);
        assert!(signal.is_requested());
        assert_eq!(signal.wait_timeout(Duration::from_secs(1)), Some(ExitReason::PowerOff));
    }
}
