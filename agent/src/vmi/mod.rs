//! What a VirtualMachineInstance asks for, by KubeVirt's rules, in one
//! place: the scheduler, the node and admission all read a VMI spec through
//! this module.
//!
//! - `quantity`: Kubernetes resource quantities (`1.5Gi`, `500m`, `1e9`).
//! - `resources`: the vCPUs and memory a VMI asks for.
//! - `cloud_init`: `cloudInitNoCloud` sources, limits and the seed's meta-data.
//! - `host_disk`: the `HostDisk` feature gate and the roots a hostDisk may use.
//! - `network`: the pod interface (masquerade binding), its MAC and DHCP lease.
//! - `validate`: every check that needs nothing but the spec (admission and node).

pub mod cloud_init;
pub mod host_disk;
pub mod network;
pub mod quantity;
pub mod resources;
pub mod validate;

/// A field of the VMI that cannot be run, with the reason. `field` is a
/// path from the VMI (`spec.volumes[0].name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError { field: field.into(), message: message.into() }
    }

    /// The same error about the template of a VirtualMachine
    /// (`spec.x` becomes `spec.template.spec.x`).
    pub fn in_template(self) -> SpecError {
        let field = match self.field.strip_prefix("spec.") {
            Some(rest) => format!("spec.template.spec.{rest}"),
            None => format!("spec.template.{}", self.field),
        };
        SpecError { field, ..self }
    }
}
