//! Services that reach VMs (issue 14). kvmlet runs no pods, so what
//! Kubernetes does for pods it does for VMIs:
//!
//! - `identity`: the labels a VMI's endpoint carries (KubeVirt's
//!   virt-launcher pod labels, `vmi.kubevirt.io/id` among them).
//! - `expose`: the Service `kvmlet expose` creates, as `virtctl expose` does.
//! - `slices`: the EndpointSlices a Service selecting VMIs should have (pure);
//!   `endpoints`: the loop that writes them (inside the controller, so
//!   leader-elected in a cluster and running in standalone mode).
//! - `proxy`: standalone's service proxy, the node's nftables programmed
//!   as kube-proxy's nftables mode does (a cluster has kube-proxy).

pub mod endpoints;
pub mod expose;
pub mod identity;
pub mod proxy;
pub mod slices;
