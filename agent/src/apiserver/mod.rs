//! The embedded Kubernetes-compatible API of `kvmlet standalone` (issue 7).
//!
//! Built in layers; this is the first: the durable store. The HTTP layer
//! (discovery, CRUD, patches, watch, deletion, tables, validation) serves
//! from it.

pub mod store;
