//! The embedded Kubernetes-compatible API of `kvmlet standalone` (issue 7).
//!
//! Layers: `store` (durable objects and change log), `resources` (what is
//! served), `discovery`, `openapi` (v3, strict field validation), `objects`
//! (CRUD, patches, deletion with finalizers and propagation policies,
//! selectors), `watch`, `gc` (ownerReferences), `table` (kubectl columns),
//! `admission` (KubeVirt's validation), `status` (errors as Status objects),
//! `server` (router, listeners, kubeconfig).
//!
//! kubectl talks HTTP to a loopback TCP port (kubectl cannot use a unix
//! socket); local clients may use the unix socket `DIR/api.sock` (0600).
//! Not yet served: server-side apply, protobuf request bodies and the
//! protobuf /openapi/v2 that kubectl 1.27/1.28 need, aggregated discovery,
//! events.k8s.io, bearer tokens on TCP.

pub mod admission;
pub mod discovery;
pub mod gc;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod resources;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
pub mod watch;
