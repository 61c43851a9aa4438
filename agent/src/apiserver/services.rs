//! core/v1 Services as kube-apiserver serves them: defaulted (type,
//! protocols, target ports, traffic policies, IP families), validated with
//! its messages, and given a cluster IP from the service CIDR and node ports
//! from 30000-32767.
//!
//! A create or update runs, in kube-apiserver's order: defaults; on update
//! the values the client left out are taken from the stored object
//! (`patchAllocatedValues`), clusterIP and clusterIPs are reconciled, and
//! fields a type change leaves meaningless are dropped
//! (`dropTypeDependentFields`); then the cluster IP fields are checked, the
//! IP families set, the whole Service validated, and finally addresses and
//! ports allocated while the allocator's [`Turn`] is held (see `allocator`).
//!
//! The cluster is single-stack IPv4: dual-stack requests are refused with
//! kube-apiserver's messages for such a cluster.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::ServiceSpec;
use serde_json::{json, Value};

use super::error::ApiError;
use super::field::{self, Shown};
use super::state::ApiState;
use super::store::ObjectKey;
use super::validation::FieldError;

mod allocator;
mod cidr;
mod defaults;
mod validate;

use allocator::{AllocationError, InUse};
pub use allocator::{Allocator, Turn, NODE_PORTS};
pub use cidr::{ServiceCidr, ServiceCidrError, DEFAULT_SERVICE_CIDR};

/// `clusterIP` of a headless Service.
const NONE: &str = "None";
const CLUSTER_IP: &str = "ClusterIP";
const NODE_PORT: &str = "NodePort";
const LOAD_BALANCER: &str = "LoadBalancer";
const EXTERNAL_NAME: &str = "ExternalName";

/// Defaults, validates and allocates a Service about to be stored
/// (replacing `current`, on updates), rewriting its `spec`. The [`Turn`]
/// returned must be held until the object is stored; there is none when the
/// spec is unchanged (status and metadata writes need no allocation).
pub fn admit<'a>(
    state: &'a ApiState,
    key: &ObjectKey,
    object: &mut Value,
    current: Option<&Value>,
) -> Result<Option<Turn<'a>>, ApiError> {
    if current.is_some_and(|current| current.get("spec") == object.get("spec")) {
        return Ok(None);
    }
    let name = key.name.as_str();
    let invalid = |errors: Vec<FieldError>| ApiError::invalid_in("", "Service", name, errors);
    let mut spec = decode(object.get("spec"))?;
    // A stored Service this server could not have written (an older kvmlet
    // stored them as they came) has nothing to carry over.
    let old: Option<ServiceSpec> = current.and_then(|c| decode(c.get("spec")).ok());
    defaults::set_defaults(&mut spec);
    if let Some(old) = &old {
        defaults::patch_allocated_values(&mut spec, old);
    }
    defaults::normalize_cluster_ips(&mut spec, old.as_ref());
    if let Some(old) = &old {
        defaults::drop_type_dependent_fields(&mut spec, old);
    }
    let errors = validate::cluster_ip_fields(&spec);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let errors = defaults::init_ip_families(&mut spec);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let mut errors = validate::service(&spec);
    if let Some(old) = &old {
        errors.extend(validate::update(&spec, old));
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let turn = state.services().turn();
    let mut in_use = InUse::read(state, state.services().cidr(), key).map_err(|e| ApiError::internal(e.to_string()))?;
    assign(&mut spec, old.as_ref(), &mut in_use, name)?;
    defaults::omit_empty(&mut spec);
    object["spec"] = serde_json::to_value(&spec).map_err(|e| ApiError::internal(e.to_string()))?;
    // As kube's dropTypeDependentFields: only load balancers have a load balancer status.
    if service_type(&spec) != LOAD_BALANCER && object.get("status").is_none_or(Value::is_object) {
        object["status"]["loadBalancer"] = json!({});
    }
    Ok(Some(turn))
}

/// The spec as its Rust type; a field of the wrong type is a 400, as a body
/// kube-apiserver cannot decode.
fn decode(spec: Option<&Value>) -> Result<ServiceSpec, ApiError> {
    let spec = spec.filter(|s| !s.is_null()).cloned().unwrap_or_else(|| json!({}));
    serde_json::from_value(spec)
        .map_err(|e| ApiError::bad_request(format!("Service in version \"v1\" cannot be handled as a Service: {e}")))
}

fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or_default()
}

fn service_type(spec: &ServiceSpec) -> &str {
    Some(text(&spec.type_)).filter(|t| !t.is_empty()).unwrap_or(CLUSTER_IP)
}

fn cluster_ips(spec: &ServiceSpec) -> &[String] {
    spec.cluster_ips.as_deref().unwrap_or_default()
}

fn ip_families(spec: &ServiceSpec) -> &[String] {
    spec.ip_families.as_deref().unwrap_or_default()
}

fn needs_cluster_ip(spec: &ServiceSpec) -> bool {
    service_type(spec) != EXTERNAL_NAME
}

fn needs_node_port(spec: &ServiceSpec) -> bool {
    matches!(service_type(spec), NODE_PORT | LOAD_BALANCER)
}

/// kube's `ExternallyAccessible`: reachable from outside the cluster.
fn externally_accessible(spec: &ServiceSpec) -> bool {
    needs_node_port(spec)
        || (service_type(spec) == CLUSTER_IP && spec.external_ips.as_ref().is_some_and(|ips| !ips.is_empty()))
}

/// A load balancer that keeps client addresses gets a health check port.
fn needs_health_check_node_port(spec: &ServiceSpec) -> bool {
    service_type(spec) == LOAD_BALANCER && text(&spec.external_traffic_policy) == "Local"
}

fn is_headless(spec: &ServiceSpec) -> bool {
    cluster_ips(spec) == [NONE]
}

/// Gives the Service what it needs and does not have (cluster IP, node
/// ports, health check port), and takes what it asks for, from what no
/// other stored Service holds.
fn assign(spec: &mut ServiceSpec, old: Option<&ServiceSpec>, in_use: &mut InUse, name: &str) -> Result<(), ApiError> {
    if needs_cluster_ip(spec) {
        assign_cluster_ip(spec, old, in_use, name)?;
    }
    if needs_node_port(spec) {
        assign_node_ports(spec, old, in_use, name)?;
    }
    if needs_health_check_node_port(spec) {
        assign_health_check_node_port(spec, old, in_use)?;
    }
    Ok(())
}

fn assign_cluster_ip(
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    in_use: &mut InUse,
    name: &str,
) -> Result<(), ApiError> {
    let requested = text(&spec.cluster_ip).to_string();
    if requested == NONE {
        return Ok(());
    }
    // Kept from before: this Service's own, even if the range changed since.
    let kept = old.filter(|o| needs_cluster_ip(o)).is_some_and(|o| text(&o.cluster_ip) == requested);
    if requested.is_empty() {
        let ip = in_use
            .next_ip()
            .map_err(|e| ApiError::internal(format!("Internal error occurred: failed to allocate a serviceIP: {e}")))?;
        spec.cluster_ip = Some(ip.to_string());
        spec.cluster_ips = Some(vec![ip.to_string()]);
    } else if !kept {
        // Validation let only IPv4 addresses through; kube's allocator answers so otherwise too.
        let address: std::net::Ipv4Addr = requested.parse().map_err(|_| {
            ApiError::internal(format!("Internal error occurred: failed to parse service IP {requested:?}"))
        })?;
        in_use.claim_ip(address).map_err(|e| {
            let message = format!("failed to allocate IP {requested}: {e}");
            let error = field::invalid("spec.clusterIPs", Shown::Strings(cluster_ips(spec)), &message);
            ApiError::invalid_in("", "Service", name, vec![error])
        })?;
    }
    Ok(())
}

/// kube's `initNodePorts`/`updateNodePorts`: requested node ports are taken
/// (a Service's own are kept), the others allocated; ports of one number
/// (53/TCP and 53/UDP) share one node port.
fn assign_node_ports(
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    in_use: &mut InUse,
    name: &str,
) -> Result<(), ApiError> {
    let allocate = service_type(spec) == NODE_PORT || spec.allocate_load_balancer_node_ports != Some(false);
    let owned: HashSet<i32> = old
        .filter(|o| needs_node_port(o))
        .map(|o| o.ports.iter().flatten().filter_map(|p| p.node_port).collect())
        .unwrap_or_default();
    let Some(ports) = spec.ports.as_mut() else { return Ok(()) };
    let mut by_port: HashMap<i32, i32> = HashMap::new();
    let mut taken_here = HashSet::new();
    for (index, port) in ports.iter().enumerate() {
        let Some(node_port) = port.node_port.filter(|n| *n != 0) else { continue };
        if !owned.contains(&node_port) && !taken_here.contains(&node_port) {
            in_use.claim_node_port(i64::from(node_port)).map_err(|e| {
                let error = field::invalid(
                    &format!("spec.ports[{index}].nodePort"),
                    Shown::Number(node_port.into()),
                    &e.to_string(),
                );
                ApiError::invalid_in("", "Service", name, vec![error])
            })?;
        }
        taken_here.insert(node_port);
        by_port.entry(port.port).or_insert(node_port);
    }
    for port in ports.iter_mut().filter(|p| p.node_port.is_none_or(|n| n == 0)) {
        if !allocate {
            continue;
        }
        let node_port = match by_port.get(&port.port) {
            Some(shared) => *shared,
            None => in_use.next_node_port().map_err(node_ports_full)?,
        };
        port.node_port = Some(node_port);
        by_port.insert(port.port, node_port);
    }
    Ok(())
}

fn node_ports_full(error: AllocationError) -> ApiError {
    ApiError::internal(format!("Internal error occurred: failed to allocate a nodePort: {error}"))
}

/// kube's `allocHealthCheckNodePort`, whose failures are plain errors (500s).
fn assign_health_check_node_port(
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    in_use: &mut InUse,
) -> Result<(), ApiError> {
    match spec.health_check_node_port.filter(|n| *n != 0) {
        Some(requested) => {
            let kept =
                old.is_some_and(|o| needs_health_check_node_port(o) && o.health_check_node_port == Some(requested));
            if !kept {
                in_use.claim_node_port(i64::from(requested)).map_err(|e| {
                    ApiError::internal(format!("failed to allocate requested HealthCheck NodePort {requested}: {e}"))
                })?;
            }
        }
        None => {
            // Kube's message names the port it could not get: always 0.
            let port = in_use
                .next_node_port()
                .map_err(|e| ApiError::internal(format!("failed to allocate a HealthCheck NodePort 0: {e}")))?;
            spec.health_check_node_port = Some(port);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod allocation_tests;
