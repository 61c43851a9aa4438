//! Labels, annotations and finalizers KubeVirt defines and kvmlet honours.

/// The node a VMI runs on (label on the VMI; `status.nodeName` says the same).
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// "true" on nodes whose agent accepts VMIs.
pub const SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";
/// RFC 3339 time of the node agent's last heartbeat (annotation on the Node).
pub const HEARTBEAT_ANNOTATION: &str = "kubevirt.io/heartbeat";
/// Held by the VM controller on VMs and VMIs until it recorded the final state.
pub const VM_CONTROLLER_FINALIZER: &str = "kubevirt.io/virtualMachineControllerFinalize";
/// Held by the node agent on a VMI until its VM process is gone.
pub const VMI_FOREGROUND_FINALIZER: &str = "kubevirt.io/foregroundDeleteVirtualMachine";
/// Default termination grace period, as in KubeVirt.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// On a VMI: the generation of the VM whose template it was made from.
pub const VM_GENERATION_ANNOTATION: &str = "kubevirt.io/vm-generation";
