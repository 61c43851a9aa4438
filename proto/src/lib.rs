//! kvmlet's wire types: the `kubevirt.io/v1` objects (with KubeVirt's serde
//! names, so existing manifests load unchanged) and the well-known labels,
//! annotations and finalizers. Nothing here knows about KVM.

pub mod debug;
pub mod kubevirt;
pub mod labels;

pub use kubevirt::*;
