//! discovery.k8s.io/v1 EndpointSlices: defaulted and validated as
//! kube-apiserver does (`pkg/apis/discovery/validation`), with its messages.
//! Stored like any other object otherwise: list, watch, label selectors
//! (`kubernetes.io/service-name=NAME`) and garbage collection through
//! ownerReferences are the generic ones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use serde_json::Value;

use super::error::ApiError;
use super::field::{self, Shown, PORT_RANGE};
use super::validation::{self, FieldError};

pub const GROUP: &str = "discovery.k8s.io";
const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 20000;

/// Defaults and validates an EndpointSlice about to be stored (replacing
/// `current`, on updates): ports get their default name ("") and protocol
/// (TCP); errors are a 422 naming the fields.
pub fn admit(name: &str, object: &mut Value, current: Option<&Value>) -> Result<(), ApiError> {
    let mut slice: EndpointSlice = serde_json::from_value(object.clone()).map_err(|e| {
        ApiError::bad_request(format!("EndpointSlice in version \"v1\" cannot be handled as a EndpointSlice: {e}"))
    })?;
    for port in slice.ports.iter_mut().flatten() {
        port.name.get_or_insert_with(String::new);
        port.protocol.get_or_insert_with(|| "TCP".into());
    }
    let mut errors = validate(&slice);
    let old_type = current.and_then(|c| c["addressType"].as_str());
    if old_type.is_some_and(|old| old != slice.address_type) {
        errors.push(field::invalid("addressType", Shown::Text(&slice.address_type), "field is immutable"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_in(GROUP, "EndpointSlice", name, errors));
    }
    if let Some(ports) = &slice.ports {
        object["ports"] = serde_json::to_value(ports).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(())
}

/// `ValidateEndpointSlice` without the metadata (checked for every kind).
fn validate(slice: &EndpointSlice) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let address_type = slice.address_type.as_str();
    if address_type.is_empty() {
        errors.push(field::required("addressType", ""));
    } else if !ADDRESS_TYPES.contains(&address_type) {
        errors.push(field::unsupported("addressType", address_type, ADDRESS_TYPES));
    }
    if slice.endpoints.len() > MAX_ENDPOINTS {
        errors.push(field::too_many("endpoints", slice.endpoints.len(), MAX_ENDPOINTS));
    } else {
        for (index, endpoint) in slice.endpoints.iter().enumerate() {
            endpoint_errors(endpoint, index, address_type, &mut errors);
        }
    }
    let ports = slice.ports.as_deref().unwrap_or_default();
    if ports.len() > MAX_PORTS {
        errors.push(field::too_many("ports", ports.len(), MAX_PORTS));
    } else {
        let mut names = std::collections::HashSet::new();
        for (index, port) in ports.iter().enumerate() {
            port_errors(port, index, &mut names, &mut errors);
        }
    }
    errors
}

fn endpoint_errors(endpoint: &Endpoint, index: usize, address_type: &str, errors: &mut Vec<FieldError>) {
    let path = format!("endpoints[{index}].addresses");
    let addresses = &endpoint.addresses;
    if addresses.is_empty() {
        errors.push(field::required(&path, "must contain at least 1 address"));
    } else if addresses.len() > MAX_ADDRESSES {
        errors.push(field::too_many(&path, addresses.len(), MAX_ADDRESSES));
    }
    for (position, address) in addresses.iter().enumerate() {
        let path = format!("{path}[{position}]");
        match address_type {
            "IPv4" => match address.parse::<Ipv4Addr>() {
                Ok(ip) => errors.extend(field::special_ip(&path, IpAddr::V4(ip))),
                Err(_) => errors.push(field::invalid(&path, Shown::Text(address), "must be a valid IPv4 address")),
            },
            "IPv6" => match address.parse::<Ipv6Addr>() {
                Ok(ip) => errors.extend(field::special_ip(&path, IpAddr::V6(ip))),
                Err(_) => errors.push(field::invalid(&path, Shown::Text(address), "must be a valid IPv6 address")),
            },
            "FQDN" => errors.extend(fully_qualified_domain_name(&path, address)),
            // An unknown type is reported once, above.
            _ => {}
        }
    }
    if let Some(node) = &endpoint.node_name {
        for message in validation::dns1123_subdomain(node) {
            errors.push(field::invalid(&format!("endpoints[{index}].nodeName"), Shown::Text(node), &message));
        }
    }
    if let Some(hostname) = &endpoint.hostname {
        for message in validation::dns1123_label(hostname) {
            errors.push(field::invalid(&format!("endpoints[{index}].hostname"), Shown::Text(hostname), &message));
        }
    }
}

fn port_errors(
    port: &EndpointPort,
    index: usize,
    names: &mut std::collections::HashSet<String>,
    errors: &mut Vec<FieldError>,
) {
    let path = |field: &str| format!("ports[{index}].{field}");
    let name = port.name.as_deref().unwrap_or_default();
    if !name.is_empty() {
        for message in validation::dns1123_label(name) {
            errors.push(field::invalid(&path("name"), Shown::Text(name), &message));
        }
    }
    if !names.insert(name.to_string()) {
        errors.push(field::duplicate(&path("name"), Shown::Text(name)));
    }
    if let Some(number) = port.port.filter(|n| !field::valid_port((*n).into())) {
        errors.push(field::invalid(&path("port"), Shown::Number(number.into()), PORT_RANGE));
    }
    match port.protocol.as_deref() {
        None => errors.push(field::required(&path("protocol"), "")),
        Some(protocol) if !PROTOCOLS.contains(&protocol) => {
            errors.push(field::unsupported(&path("protocol"), protocol, PROTOCOLS));
        }
        Some(_) => {}
    }
    if let Some(app_protocol) = &port.app_protocol {
        for message in validation::qualified_name(app_protocol) {
            errors.push(field::invalid(&path("appProtocol"), Shown::Text(app_protocol), &message));
        }
    }
}

/// apimachinery's `IsFullyQualifiedDomainName`: a DNS subdomain of at least
/// two labels, a trailing dot allowed.
fn fully_qualified_domain_name(path: &str, name: &str) -> Vec<FieldError> {
    if name.is_empty() {
        return vec![field::required(path, "")];
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let problems = validation::dns1123_subdomain(name);
    if !problems.is_empty() {
        return vec![field::invalid(path, Shown::Text(name), &problems.join(","))];
    }
    if !name.contains('.') {
        return vec![field::invalid(
            path,
            Shown::Text(name),
            "should be a domain with at least two segments separated by dots",
        )];
    }
    for label in name.split('.') {
        let problems = validation::dns1123_label(label);
        if !problems.is_empty() {
            return vec![field::invalid(path, Shown::Text(label), &problems.join(","))];
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests;
