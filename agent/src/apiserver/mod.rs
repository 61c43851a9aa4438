//! The embedded Kubernetes-compatible API of `kvmlet standalone` (issue 7).
//!
//! Layers: `store` (durable objects and change log), `state` (what handlers
//! share: the store and the Service allocator, from an `ApiConfig`),
//! `resources` (what is served), `discovery`, `openapi` (v3, strict field
//! validation), `objects` (CRUD, patches, deletion with finalizers and
//! propagation policies), `selectors` (label and field selectors as
//! apimachinery parses them), `validation` (Kubernetes' metadata rules:
//! names, labels, annotations) and `field` (apimachinery's field errors),
//! `protobuf` (the protobuf request bodies kubectl sends for Namespaces,
//! Secrets and Services), `watch`, `gc` (ownerReferences, namespace
//! deletion), `table` (kubectl columns), `admission` (KubeVirt's
//! validation), `services` and `endpointslices` (those built-in kinds as
//! kube-apiserver serves them), `error` (errors as Status objects),
//! `health` (`/healthz`, `/livez`, `/readyz`), `private_files` (the data
//! directory 0700, secrets born 0600), `server` (router, listeners,
//! kubeconfig).
//!
//! Bad input is answered as kube-apiserver answers it: invalid names and
//! labels with a 422 `Kind.group "name" is invalid: ...`, malformed
//! selectors with a 400, bodies over 3 MiB with a 413, a watch from a
//! resourceVersion the store has not reached (after 3 s) with a 504
//! `ResourceVersionTooLarge`. Create and update of a resource with a status
//! subresource leave its status alone (only `/status` writes it).
//!
//! core/v1 Services are defaulted and validated as kube-apiserver does it,
//! and get a cluster IP from the service CIDR (`ApiConfig::service_cidr`,
//! `kvmlet standalone --service-cidr`, 10.96.0.0/16 by default; IPv4 only)
//! and node ports from 30000-32767; what is in use is what the stored
//! Services hold, so a delete frees it (see `services`).
//! discovery.k8s.io/v1 EndpointSlices are validated as kube-apiserver does
//! it and otherwise stored like any object (selectors, watch, garbage
//! collection through ownerReferences).
//!
//! `embedded` is the seam for the loops that run inside `kvmlet standalone`
//! (controller, node loop): [`embedded::EmbeddedApi::client`] gives them a
//! `kube::Client` that calls the router in-process, through the same
//! handlers kubectl reaches.
//!
//! Serving: kubectl cannot talk to a unix socket and sends bearer tokens
//! only over https, so kubectl gets TLS on a loopback TCP port (a CA of the
//! data directory's own, `tls`) with a bearer token, both in `DIR/kubeconfig`,
//! which is written atomically just before the "API ready" log line. Local
//! clients of the same user may use the unix socket `DIR/api.sock` (0600,
//! no token).
//!
//! OpenAPI: v3 (`openapi`) for kubectl 1.29 on and kube-rs, and the protobuf
//! /openapi/v2 (`openapi_v2`) that kubectl 1.27/1.28 fetch before `create`;
//! both tell kubectl the server validates fields, so kubectl sends
//! `fieldValidation=Strict` and shows the server's unknown-field errors.
//!
//! Server-side apply is a subset (see `objects::server_side_apply`): create
//! or merge, without managedFields or conflicts.
//!
//! Protobuf request bodies are decoded for Namespace, Secret and Service
//! (what kubectl 1.32 on sends them as); other kinds get a 415. Answers are
//! JSON.
//! Discovery is served both aggregated (apidiscovery.k8s.io v2 and v2beta1,
//! one request for everything) and in the legacy per-group form.
//!
//! events.k8s.io/v1 Events are the core v1 Events seen through the other
//! API's field names (`events`), as in Kubernetes.

pub mod admission;
pub mod discovery;
pub mod embedded;
pub mod endpointslices;
pub mod error;
pub mod events;
pub mod field;
pub mod gc;
pub mod health;
pub mod objects;
pub mod openapi;
pub mod openapi_v2;
pub mod patch;
pub mod private_files;
pub mod protobuf;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod services;
pub mod state;
pub mod store;
pub mod table;
#[cfg(test)]
pub mod test_requests;
pub mod tls;
pub mod validation;
pub mod watch;
