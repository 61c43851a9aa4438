//! Node-local messages: the per-VM control socket between the node agent and
//! a VM process, and the agent's debugging socket (`/run/kvmlet/kvmlet.sock`).
//! Both are newline-delimited / HTTP JSON with these types, so `curl
//! --unix-socket` and `socat` can speak them too.

use serde::{Deserialize, Serialize};

use crate::kubevirt::VirtualMachineInstancePhase;

/// A request on a VM process's control socket (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
pub enum ControlRequest {
    // Unit-like variants are empty structs so that unknown fields are refused
    // (serde ignores extra fields next to the tag of a unit variant).
    /// Answer with the current [`VmProcessStatus`].
    Status {},
    /// Answer with the current status, then again on every change until the
    /// process exits (the connection then closes).
    Watch {},
    /// Press the ACPI power button.
    PowerButton {},
    /// Stop the guest at once.
    Kill {},
    /// Bytes typed on the serial console (base64, at most 4 KiB decoded).
    ConsoleInput { data: String },
    /// Test hook: the VM process tries something its jail forbids and answers
    /// with the outcome in `error`. Refused unless the agent started it with
    /// `--test-vm-hooks`.
    TestJail { check: JailCheck },
}

/// What a `testJail` request tries from inside the VM process's jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JailCheck {
    /// Open `/etc/passwd` and list `/`.
    Open,
    /// A TCP connect to 127.0.0.1:22.
    Connect,
    /// A syscall outside the control thread's seccomp list (getpgrp).
    ForbiddenSyscall,
    /// Allocate and touch up to 1 GiB of VMM memory, past a VM's memory cgroup limit.
    Allocate,
}

impl std::str::FromStr for JailCheck {
    type Err = String;

    fn from_str(text: &str) -> Result<JailCheck, String> {
        match text {
            "open" => Ok(JailCheck::Open),
            "connect" => Ok(JailCheck::Connect),
            "forbidden-syscall" => Ok(JailCheck::ForbiddenSyscall),
            "allocate" => Ok(JailCheck::Allocate),
            _ => Err(format!("`{text}`: expected open, connect, forbidden-syscall or allocate")),
        }
    }
}

/// Where a VM process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmProcessState {
    /// Building the VM (guest memory, devices, firmware).
    Starting,
    /// vCPUs run the guest.
    Running,
    /// The guest stopped for good; `exit` says why.
    Exited,
}

/// How a guest's run ended: the one mapping from an exit to the process
/// exit status (`kvmlet run`, `kvmlet vm-process`) and to the VMI's final
/// phase and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmExitKind {
    /// The guest powered off by itself (ACPI S5).
    PowerOff,
    /// The guest asked to reboot. A VM process boots it again instead of
    /// exiting; only `kvmlet run` ends with it.
    Reboot,
    /// A vCPU triple-faulted.
    TripleFault,
    /// Killed (control socket, a second Ctrl-C, the end of a grace period).
    Killed,
    /// The VM could not be built or the VMM hit an error.
    Error,
}

impl VmExitKind {
    pub const ALL: [VmExitKind; 5] =
        [VmExitKind::PowerOff, VmExitKind::Reboot, VmExitKind::TripleFault, VmExitKind::Killed, VmExitKind::Error];

    /// The exit status of the process that ran the VM.
    pub fn exit_code(self) -> u8 {
        match self {
            VmExitKind::PowerOff => 0,
            VmExitKind::Reboot => 3,
            VmExitKind::TripleFault => 4,
            VmExitKind::Error => 5,
            VmExitKind::Killed => 130,
        }
    }

    /// The VMI's final phase: only a guest that powered off succeeded.
    pub fn vmi_phase(self) -> VirtualMachineInstancePhase {
        match self {
            VmExitKind::PowerOff => VirtualMachineInstancePhase::Succeeded,
            _ => VirtualMachineInstancePhase::Failed,
        }
    }

    /// The VMI's `status.reason` (and the Ready condition's); a kill is
    /// `GracePeriodExpired` when the node killed the VM at the end of its
    /// grace period.
    pub fn vmi_reason(self, killed_after_grace: bool) -> &'static str {
        match self {
            VmExitKind::PowerOff => "GuestPoweredOff",
            VmExitKind::Reboot => "GuestRebooted",
            VmExitKind::TripleFault => "GuestCrashed",
            VmExitKind::Killed if killed_after_grace => "GracePeriodExpired",
            VmExitKind::Killed => "Killed",
            VmExitKind::Error => "VMProcessFailed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmExit {
    pub kind: VmExitKind,
    /// Human-readable detail ("the guest powered off", "VMM error: ...").
    pub message: String,
    /// Unix time in milliseconds.
    pub at_ms: u64,
}

/// A VM process's answer on its control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmProcessStatus {
    pub pid: u32,
    pub state: VmProcessState,
    /// Guest boots so far in this process (a guest reboot adds one).
    pub boots: u32,
    /// Unix time in milliseconds at which the current boot started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<VmExit>,
    /// Set on an answer to a request that failed (e.g. bad console input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One VM on this node, as `GET /v1/vms` on the debugging socket lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSummary {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The VM process, while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The VMI phase the agent last reported for it.
    pub phase: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Seconds since the current guest boot started, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    pub boots: u32,
    /// How the last run ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<VmExit>,
}

/// `GET /v1/namespaces/{ns}/vms/{name}`: the summary and the VM's config
/// (a `vmm::VmConfig` as JSON; proto does not know the VMM's types).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDetail {
    #[serde(flatten)]
    pub summary: VmSummary,
    pub config: serde_json::Value,
    /// Which kernel boots and why, when the node took it from the VMI's
    /// boot disk: `kernel /boot/vmlinuz-6.1 from /boot/grub/grub.cfg menuentry
    /// "Debian" (default "0") on disk rootdisk partition 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
}

/// An error from the debugging socket (non-2xx answers carry one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSocketError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_requests_are_tagged_by_op() {
        let request: ControlRequest = serde_json::from_str(r#"{"op":"consoleInput","data":"aGk="}"#).unwrap();
        assert_eq!(request, ControlRequest::ConsoleInput { data: "aGk=".into() });
        assert_eq!(serde_json::to_string(&ControlRequest::PowerButton {}).unwrap(), r#"{"op":"powerButton"}"#);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"reformat"}"#).is_err());
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"kill","now":true}"#).is_err());
    }

    #[test]
    fn each_exit_has_its_own_status_and_only_a_power_off_succeeds() {
        let codes: Vec<u8> = VmExitKind::ALL.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes, [0, 3, 4, 130, 5]);
        for kind in VmExitKind::ALL {
            assert_eq!(kind.vmi_phase() == VirtualMachineInstancePhase::Succeeded, kind == VmExitKind::PowerOff);
            assert_eq!(kind.exit_code() == 0, kind == VmExitKind::PowerOff);
        }
        assert_eq!(VmExitKind::Killed.vmi_reason(true), "GracePeriodExpired");
        assert_eq!(VmExitKind::Killed.vmi_reason(false), "Killed");
        assert_eq!(VmExitKind::Error.vmi_reason(false), "VMProcessFailed");
    }
}
