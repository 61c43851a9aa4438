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

/// On a VMI's endpoints (KubeVirt's virt-launcher pod): the VMI's id, see
/// `agent::services::identity::vmi_id`; what `virtctl expose` selects.
pub const VMI_ID_LABEL: &str = "vmi.kubevirt.io/id";
/// On a VMI's endpoints: the VMI's name (KubeVirt's label on the launcher pod).
pub const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";
/// On a VMI's endpoints: the VMI's UID.
pub const CREATED_BY_LABEL: &str = "kubevirt.io/created-by";
/// On a VMI's endpoints: `virt-launcher`, the component KubeVirt runs a VMI in.
pub const APP_LABEL: &str = "kubevirt.io";
