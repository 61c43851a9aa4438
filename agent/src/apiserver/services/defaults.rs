//! What kube-apiserver fills in or carries over on a Service before it
//! validates it: `SetDefaults_Service`, and on updates
//! `patchAllocatedValues`, `normalizeClusterIPs` and
//! `dropTypeDependentFields`; then `initIPFamilyFields` for a single-stack
//! IPv4 cluster.

use k8s_openapi::api::core::v1::{ClientIPConfig, ServiceSpec, SessionAffinityConfig};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    cluster_ips, externally_accessible, ip_families, is_headless, needs_cluster_ip, needs_health_check_node_port,
    needs_node_port, service_type, text, CLUSTER_IP, LOAD_BALANCER, NODE_PORT, NONE,
};
use crate::apiserver::field::{self, Shown};
use crate::apiserver::validation::FieldError;

const SINGLE_STACK: &str = "SingleStack";
const REQUIRE_DUAL_STACK: &str = "RequireDualStack";
const IPV4: &str = "IPv4";
const IPV6: &str = "IPv6";
/// kube's `DefaultClientIPServiceAffinitySeconds` (3 hours).
const CLIENT_IP_AFFINITY_SECONDS: i32 = 10800;

fn set(value: &mut Option<String>, default: &str) {
    if value.as_deref().is_none_or(str::is_empty) {
        *value = Some(default.to_string());
    }
}

/// `SetDefaults_Service`.
pub(super) fn set_defaults(spec: &mut ServiceSpec) {
    set(&mut spec.session_affinity, "None");
    match text(&spec.session_affinity) {
        "None" => spec.session_affinity_config = None,
        "ClientIP" => {
            let timeout = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
            if timeout.is_none() {
                spec.session_affinity_config = Some(SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig { timeout_seconds: Some(CLIENT_IP_AFFINITY_SECONDS) }),
                });
            }
        }
        _ => {}
    }
    set(&mut spec.type_, CLUSTER_IP);
    for port in spec.ports.iter_mut().flatten() {
        set(&mut port.protocol, "TCP");
        let unset = match &port.target_port {
            None => true,
            Some(IntOrString::Int(number)) => *number == 0,
            Some(IntOrString::String(name)) => name.is_empty(),
        };
        if unset {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
    if externally_accessible(spec) {
        set(&mut spec.external_traffic_policy, "Cluster");
    }
    if spec.internal_traffic_policy.is_none() && matches!(service_type(spec), CLUSTER_IP | NODE_PORT | LOAD_BALANCER) {
        spec.internal_traffic_policy = Some("Cluster".into());
    }
    if service_type(spec) == LOAD_BALANCER && spec.allocate_load_balancer_node_ports.is_none() {
        spec.allocate_load_balancer_node_ports = Some(true);
    }
}

/// `patchAllocatedValues`: what an update leaves out of what was allocated
/// is kept (a client replacing the object without `clusterIP` or
/// `nodePort` means no change). Node ports carry over to the port of the
/// same number and protocol, unless the new object gives that node port to
/// another of its ports.
pub(super) fn patch_allocated_values(spec: &mut ServiceSpec, old: &ServiceSpec) {
    if needs_cluster_ip(old) && needs_cluster_ip(spec) {
        if text(&spec.cluster_ip).is_empty() {
            spec.cluster_ip.clone_from(&old.cluster_ip);
        }
        if cluster_ips(spec).is_empty() && !cluster_ips(old).is_empty() {
            spec.cluster_ips.clone_from(&old.cluster_ips);
        }
    }
    if needs_node_port(old) && needs_node_port(spec) {
        let requested: Vec<i32> = spec.ports.iter().flatten().filter_map(|p| p.node_port).collect();
        let old_ports = old.ports.as_deref().unwrap_or_default();
        for port in spec.ports.iter_mut().flatten().filter(|p| p.node_port.is_none_or(|n| n == 0)) {
            let same = old_ports.iter().find(|o| o.port == port.port && text(&o.protocol) == text(&port.protocol));
            port.node_port = same.and_then(|o| o.node_port).filter(|n| *n != 0 && !requested.contains(n));
        }
    }
    if needs_health_check_node_port(old)
        && needs_health_check_node_port(spec)
        && spec.health_check_node_port.is_none_or(|n| n == 0)
    {
        spec.health_check_node_port = old.health_check_node_port;
    }
}

/// `normalizeClusterIPs`: `clusterIP` (what old clients set) and
/// `clusterIPs` kept in step.
pub(super) fn normalize_cluster_ips(spec: &mut ServiceSpec, old: Option<&ServiceSpec>) {
    let single = text(&spec.cluster_ip).to_string();
    if let Some(old) = old {
        let same_ips = cluster_ips(old) == cluster_ips(spec);
        let old_single = text(&old.cluster_ip);
        // An old client dropped clusterIP and sent clusterIPs back unchanged.
        if !old_single.is_empty() && single.is_empty() && same_ips {
            spec.cluster_ips = None;
        }
        // An old client changed clusterIP only: validation will judge the change.
        if !old_single.is_empty() && !single.is_empty() && old_single != single && same_ips {
            if let Some(first) = spec.cluster_ips.as_mut().and_then(|ips| ips.first_mut()) {
                first.clone_from(&single);
            }
        }
    }
    if !single.is_empty() && cluster_ips(spec).is_empty() {
        spec.cluster_ips = Some(vec![single]);
    }
}

/// `dropTypeDependentFields`: fields the old type had and the new one does
/// not need are dropped when the client left them as they were (a changed
/// value is the client's, and validation judges it).
pub(super) fn drop_type_dependent_fields(spec: &mut ServiceSpec, old: &ServiceSpec) {
    if needs_cluster_ip(old) && !needs_cluster_ip(spec) {
        if cluster_ips(old) == cluster_ips(spec) && old.cluster_ip == spec.cluster_ip {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
        if ip_families(old) == ip_families(spec) {
            spec.ip_families = None;
        }
        if old.ip_family_policy == spec.ip_family_policy {
            spec.ip_family_policy = None;
        }
    }
    if needs_node_port(old) && !needs_node_port(spec) {
        let node_ports = |s: &ServiceSpec| s.ports.iter().flatten().map(|p| p.node_port).collect::<Vec<_>>();
        if node_ports(old) == node_ports(spec) {
            for port in spec.ports.iter_mut().flatten() {
                port.node_port = None;
            }
        }
    }
    if needs_health_check_node_port(old)
        && !needs_health_check_node_port(spec)
        && old.health_check_node_port == spec.health_check_node_port
    {
        spec.health_check_node_port = None;
    }
    let was_load_balancer = service_type(old) == LOAD_BALANCER && service_type(spec) != LOAD_BALANCER;
    if was_load_balancer && old.allocate_load_balancer_node_ports == spec.allocate_load_balancer_node_ports {
        spec.allocate_load_balancer_node_ports = None;
    }
    if was_load_balancer && old.load_balancer_class == spec.load_balancer_class {
        spec.load_balancer_class = None;
    }
    if externally_accessible(old)
        && !externally_accessible(spec)
        && old.external_traffic_policy == spec.external_traffic_policy
    {
        spec.external_traffic_policy = None;
    }
}

/// `initIPFamilyFields` on a cluster with IPv4 only: the policy defaults to
/// SingleStack and the families to `[IPv4]`; dual-stack or IPv6 requests
/// are errors. A headless Service without a selector may name both
/// families (its policy defaults to RequireDualStack), as in Kubernetes.
pub(super) fn init_ip_families(spec: &mut ServiceSpec) -> Vec<FieldError> {
    if !needs_cluster_ip(spec) {
        return Vec::new();
    }
    let mut errors = Vec::new();
    let policy = spec.ip_family_policy.clone();
    if policy.as_deref().is_none_or(|p| p == SINGLE_STACK) {
        let shown = policy.as_deref().unwrap_or("null");
        if cluster_ips(spec).len() == 2 {
            let message = "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified";
            errors.push(field::invalid("spec.ipFamilyPolicy", Shown::Text(shown), message));
        }
        if ip_families(spec).len() == 2 {
            let message = "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified";
            errors.push(field::invalid("spec.ipFamilyPolicy", Shown::Text(shown), message));
        }
    }
    // Families follow the addresses asked for.
    let ips = cluster_ips(spec).to_vec();
    let mut families = ip_families(spec).to_vec();
    for (index, ip) in ips.iter().enumerate().take_while(|(_, ip)| *ip != NONE) {
        if index < families.len() {
            continue;
        }
        if ip.parse::<std::net::Ipv6Addr>().is_ok() {
            let field = format!("spec.clusterIPs[{index}]");
            errors.push(field::invalid(&field, Shown::Strings(&ips), "IPv6 is not configured on this cluster"));
        } else {
            families.push(IPV4.into());
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    let selectorless = spec.selector.as_ref().is_none_or(|s| s.is_empty());
    if is_headless(spec) && selectorless {
        let policy = policy.unwrap_or_else(|| REQUIRE_DUAL_STACK.into());
        if families.is_empty() {
            families.push(IPV4.into());
        }
        if families.len() < 2 && policy != SINGLE_STACK {
            let other = if families[0] == IPV4 { IPV6 } else { IPV4 };
            families.push(other.into());
        }
        spec.ip_family_policy = Some(policy);
        spec.ip_families = Some(families);
        return errors;
    }
    let policy = policy.unwrap_or_else(|| SINGLE_STACK.into());
    if policy == REQUIRE_DUAL_STACK {
        let message = "this cluster is not configured for dual-stack services";
        errors.push(field::invalid("spec.ipFamilyPolicy", Shown::Text(&policy), message));
    }
    for (index, family) in families.iter().enumerate().filter(|(_, f)| *f != IPV4) {
        let field = format!("spec.ipFamilies[{index}]");
        errors.push(field::invalid(&field, Shown::Text(family), "not configured on this cluster"));
    }
    if families.is_empty() {
        families.push(IPV4.into());
    }
    spec.ip_family_policy = Some(policy);
    spec.ip_families = Some(families);
    errors
}

/// Empty values dropped, as Go's `omitempty` leaves them out of
/// kube-apiserver's answers (`"clusterIP": ""` is no cluster IP).
pub(super) fn omit_empty(spec: &mut ServiceSpec) {
    for text in [
        &mut spec.cluster_ip,
        &mut spec.external_name,
        &mut spec.external_traffic_policy,
        &mut spec.load_balancer_ip,
        &mut spec.session_affinity,
        &mut spec.type_,
    ] {
        if text.as_deref() == Some("") {
            *text = None;
        }
    }
    for list in
        [&mut spec.cluster_ips, &mut spec.external_ips, &mut spec.ip_families, &mut spec.load_balancer_source_ranges]
    {
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    if spec.ports.as_ref().is_some_and(Vec::is_empty) {
        spec.ports = None;
    }
    if spec.selector.as_ref().is_some_and(|s| s.is_empty()) {
        spec.selector = None;
    }
    if spec.health_check_node_port == Some(0) {
        spec.health_check_node_port = None;
    }
    for port in spec.ports.iter_mut().flatten() {
        if port.name.as_deref() == Some("") {
            port.name = None;
        }
        if port.node_port == Some(0) {
            port.node_port = None;
        }
    }
}
