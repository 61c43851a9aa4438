//! kube-apiserver's Service validation (`pkg/apis/core/validation`):
//! `ValidateServiceClusterIPsRelatedFields`, the spec part of
//! `ValidateService`, and what `ValidateServiceUpdate` adds, with its
//! field paths and messages.

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    cluster_ips, externally_accessible, ip_families, is_headless, needs_health_check_node_port, service_type, text,
    CLUSTER_IP, EXTERNAL_NAME, LOAD_BALANCER, NODE_PORT, NONE,
};
use crate::apiserver::field::{self, Shown, NOT_AN_IP, PORT_RANGE};
use crate::apiserver::validation::{self, go_quote, FieldError};

const SERVICE_TYPES: &[&str] = &[CLUSTER_IP, EXTERNAL_NAME, LOAD_BALANCER, NODE_PORT];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const IP_FAMILIES: &[&str] = &["IPv4", "IPv6"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
/// kube's `MaxClientIPServiceAffinitySeconds` (a day).
const MAX_AFFINITY_SECONDS: i32 = 86400;
/// The kubelet's port, which load balancers must not open.
const KUBELET_PORT: i32 = 10250;

/// `ValidateServiceClusterIPsRelatedFields`: clusterIP and clusterIPs agree,
/// hold addresses (or `None` alone), families and policy are known values.
pub(super) fn cluster_ip_fields(spec: &ServiceSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if service_type(spec) == EXTERNAL_NAME {
        return errors;
    }
    let ips = cluster_ips(spec);
    let shown_ips = || Shown::Strings(ips);
    if text(&spec.cluster_ip).is_empty() {
        if !ips.is_empty() {
            errors.push(field::invalid(
                "spec.clusterIPs",
                shown_ips(),
                "must be empty when `clusterIP` is not specified",
            ));
        }
    } else if ips.first().map(String::as_str) != Some(text(&spec.cluster_ip)) {
        errors.push(field::invalid("spec.clusterIPs", shown_ips(), "first value must match `clusterIP`"));
    }
    let mut seen = HashSet::new();
    for (index, family) in ip_families(spec).iter().enumerate() {
        let path = format!("spec.ipFamilies[{index}]");
        if !IP_FAMILIES.contains(&family.as_str()) {
            errors.push(field::unsupported(&path, family, IP_FAMILIES));
        }
        if !seen.insert(family) {
            errors.push(field::duplicate(&path, Shown::Text(family)));
        }
    }
    if let Some(policy) = spec.ip_family_policy.as_deref().filter(|p| !IP_FAMILY_POLICIES.contains(p)) {
        errors.push(field::unsupported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES));
    }
    let mut bad_ips = false;
    for (index, ip) in ips.iter().enumerate() {
        if index == 0 && ip == NONE {
            if ips.len() > 1 {
                bad_ips = true;
                errors.push(field::invalid("spec.clusterIPs", shown_ips(), "'None' must be the first and only value"));
            }
            continue;
        }
        if ip.parse::<IpAddr>().is_err() {
            bad_ips = true;
            errors.push(field::invalid(&format!("spec.clusterIPs[{index}]"), Shown::Text(ip), NOT_AN_IP));
        }
    }
    if ips.len() > 2 {
        errors.push(field::invalid("spec.clusterIPs", shown_ips(), "may only hold up to 2 values"));
    }
    if bad_ips {
        return errors;
    }
    if ips.len() == 2 {
        let v6 = |ip: &String| ip.parse::<std::net::Ipv6Addr>().is_ok();
        if v6(&ips[0]) == v6(&ips[1]) {
            errors.push(field::invalid(
                "spec.clusterIPs",
                shown_ips(),
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if !is_headless(spec) {
        for (index, (ip, family)) in ips.iter().zip(ip_families(spec)).enumerate() {
            let is_v6 = ip.parse::<std::net::Ipv6Addr>().is_ok();
            let expected = match family.as_str() {
                "IPv4" if is_v6 => "IPv4",
                "IPv6" if !is_v6 => "IPv6",
                _ => continue,
            };
            let message = format!("expected an {expected} value as indicated by `ipFamilies[{index}]`");
            errors.push(field::invalid(&format!("spec.clusterIPs[{index}]"), shown_ips(), &message));
        }
    }
    errors
}

/// The spec checks of `ValidateService`, in its order.
pub(super) fn service(spec: &ServiceSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let kind = service_type(spec);
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !is_headless(spec) && kind != EXTERNAL_NAME {
        errors.push(field::required("spec.ports", ""));
    }
    match kind {
        LOAD_BALANCER | NODE_PORT if is_headless(spec) => {
            let message = format!("may not be set to 'None' for {kind} services");
            errors.push(field::invalid("spec.clusterIPs[0]", Shown::Text(NONE), &message));
        }
        EXTERNAL_NAME => external_name(spec, &mut errors),
        _ => {}
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (index, port) in ports.iter().enumerate() {
        service_port(port, index, ports.len() > 1, &mut names, &mut errors);
        if !seen.insert((port.port, text(&port.protocol))) {
            let key = format!(
                "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                go_quote(text(&port.protocol)),
                port.port
            );
            errors.push(field::duplicate(&format!("spec.ports[{index}]"), Shown::Raw(&key)));
        }
    }
    for (key, value) in spec.selector.iter().flatten() {
        for message in validation::qualified_name(key) {
            errors.push(field::invalid("spec.selector", Shown::Text(key), &message));
        }
        for message in validation::label_value(value) {
            errors.push(field::invalid("spec.selector", Shown::Text(value), &message));
        }
    }
    session_affinity(spec, &mut errors);
    for (index, ip) in spec.external_ips.iter().flatten().enumerate() {
        let path = format!("spec.externalIPs[{index}]");
        match ip.parse::<IpAddr>() {
            Ok(address) => errors.extend(field::special_ip(&path, address)),
            Err(_) => errors.push(field::invalid(&path, Shown::Text(ip), NOT_AN_IP)),
        }
    }
    if !SERVICE_TYPES.contains(&kind) {
        errors.push(field::unsupported("spec.type", kind, SERVICE_TYPES));
    }
    if kind == CLUSTER_IP {
        for (index, _) in ports.iter().enumerate().filter(|(_, p)| p.node_port.is_some_and(|n| n != 0)) {
            let path = format!("spec.ports[{index}].nodePort");
            errors.push(field::forbidden(&path, "may not be used when `type` is 'ClusterIP'"));
        }
    }
    let mut node_ports = HashSet::new();
    for (index, port) in ports.iter().enumerate() {
        let Some(node_port) = port.node_port.filter(|n| *n != 0) else { continue };
        if !node_ports.insert((node_port, text(&port.protocol))) {
            let path = format!("spec.ports[{index}].nodePort");
            errors.push(field::duplicate(&path, Shown::Number(node_port.into())));
        }
    }
    if kind == LOAD_BALANCER {
        for (index, _) in ports.iter().enumerate().filter(|(_, p)| p.port == KUBELET_PORT) {
            let message = format!("may not expose port {KUBELET_PORT} externally since it is used by kubelet");
            errors.push(field::invalid(&format!("spec.ports[{index}]"), Shown::Number(KUBELET_PORT.into()), &message));
        }
    }
    traffic_policies(spec, &mut errors);
    if kind != LOAD_BALANCER {
        if spec.allocate_load_balancer_node_ports.is_some() {
            let message = "may only be used when `type` is 'LoadBalancer'";
            errors.push(field::forbidden("spec.allocateLoadBalancerNodePorts", message));
        }
        if spec.load_balancer_class.is_some() {
            errors.push(field::forbidden("spec.loadBalancerClass", "may only be used when `type` is 'LoadBalancer'"));
        }
    }
    errors
}

fn external_name(spec: &ServiceSpec, errors: &mut Vec<FieldError>) {
    let forbidden = "may not be set for ExternalName services";
    if !cluster_ips(spec).is_empty() {
        errors.push(field::forbidden("spec.clusterIPs", forbidden));
    }
    if !ip_families(spec).is_empty() {
        errors.push(field::forbidden("spec.ipFamilies", forbidden));
    }
    if spec.ip_family_policy.is_some() {
        errors.push(field::forbidden("spec.ipFamilyPolicy", forbidden));
    }
    // The CNAME may end in a dot (fully qualified).
    let external_name = text(&spec.external_name);
    let cname = external_name.strip_suffix('.').unwrap_or(external_name);
    if cname.is_empty() {
        errors.push(field::required("spec.externalName", ""));
    }
    for message in validation::dns1123_subdomain(cname).into_iter().filter(|_| !cname.is_empty()) {
        errors.push(field::invalid("spec.externalName", Shown::Text(cname), &message));
    }
}

/// `validateServicePort`.
fn service_port(
    port: &ServicePort,
    index: usize,
    name_required: bool,
    names: &mut HashSet<String>,
    errors: &mut Vec<FieldError>,
) {
    let path = |field: &str| format!("spec.ports[{index}].{field}");
    let name = text(&port.name);
    if name_required && name.is_empty() {
        errors.push(field::required(&path("name"), ""));
    } else if !name.is_empty() {
        for message in validation::dns1123_label(name) {
            errors.push(field::invalid(&path("name"), Shown::Text(name), &message));
        }
        if !names.insert(name.to_string()) {
            errors.push(field::duplicate(&path("name"), Shown::Text(name)));
        }
    }
    if !field::valid_port(port.port.into()) {
        errors.push(field::invalid(&path("port"), Shown::Number(port.port.into()), PORT_RANGE));
    }
    let protocol = text(&port.protocol);
    if protocol.is_empty() {
        errors.push(field::required(&path("protocol"), ""));
    } else if !PROTOCOLS.contains(&protocol) {
        errors.push(field::unsupported(&path("protocol"), protocol, PROTOCOLS));
    }
    match &port.target_port {
        Some(IntOrString::Int(number)) if !field::valid_port((*number).into()) => {
            errors.push(field::invalid(&path("targetPort"), Shown::Number((*number).into()), PORT_RANGE));
        }
        Some(IntOrString::String(name)) => {
            for message in field::port_name(name) {
                errors.push(field::invalid(&path("targetPort"), Shown::Text(name), message));
            }
        }
        _ => {}
    }
    if let Some(app_protocol) = &port.app_protocol {
        for message in validation::qualified_name(app_protocol) {
            errors.push(field::invalid(&path("appProtocol"), Shown::Text(app_protocol), &message));
        }
    }
}

fn session_affinity(spec: &ServiceSpec, errors: &mut Vec<FieldError>) {
    let affinity = text(&spec.session_affinity);
    if !SESSION_AFFINITIES.contains(&affinity) {
        errors.push(field::unsupported("spec.sessionAffinity", affinity, SESSION_AFFINITIES));
    }
    let timeout = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
    match timeout {
        Some(seconds) if affinity == "ClientIP" && !(1..=MAX_AFFINITY_SECONDS).contains(&seconds) => {
            let message = format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}");
            let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
            errors.push(field::invalid(path, Shown::Number(seconds.into()), &message));
        }
        _ => {}
    }
}

/// `validateServiceExternalTrafficPolicy` and `validateServiceInternalTrafficFieldsValue`.
fn traffic_policies(spec: &ServiceSpec, errors: &mut Vec<FieldError>) {
    let external = text(&spec.external_traffic_policy);
    if !externally_accessible(spec) {
        if !external.is_empty() {
            let message = "may only be set for externally-accessible services";
            errors.push(field::invalid("spec.externalTrafficPolicy", Shown::Text(external), message));
        }
    } else if external.is_empty() {
        errors.push(field::required("spec.externalTrafficPolicy", ""));
    } else if !TRAFFIC_POLICIES.contains(&external) {
        errors.push(field::unsupported("spec.externalTrafficPolicy", external, TRAFFIC_POLICIES));
    }
    // Allocation gives a health check port to those that need one.
    let health_check = spec.health_check_node_port.unwrap_or_default();
    if !needs_health_check_node_port(spec) && health_check != 0 {
        let message = "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'";
        errors.push(field::invalid("spec.healthCheckNodePort", Shown::Number(health_check.into()), message));
    }
    if let Some(internal) = spec.internal_traffic_policy.as_deref().filter(|p| !TRAFFIC_POLICIES.contains(p)) {
        errors.push(field::unsupported("spec.internalTrafficPolicy", internal, TRAFFIC_POLICIES));
    }
}

/// `validateUpgradeDowngradeClusterIPs` on a single-stack cluster: the
/// cluster IP stays what it was, unless the Service becomes or stops being
/// an ExternalName one.
pub(super) fn update(spec: &ServiceSpec, old: &ServiceSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let external_name = service_type(spec) == EXTERNAL_NAME || service_type(old) == EXTERNAL_NAME;
    if external_name || (is_headless(spec) && is_headless(old)) {
        return errors;
    }
    let (before, after) = (cluster_ips(old), cluster_ips(spec));
    if !before.is_empty() && after.is_empty() {
        errors.push(field::invalid("spec.clusterIPs[0]", Shown::Strings(after), "primary clusterIP can not be unset"));
    }
    for (index, (was, is)) in before.iter().zip(after).enumerate() {
        if was != is {
            let path = format!("spec.clusterIPs[{index}]");
            errors.push(field::invalid(&path, Shown::Strings(after), "may not change once set"));
        }
    }
    errors
}
