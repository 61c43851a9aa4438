//! The EndpointSlices a Service should have when it selects VMIs: kvmlet
//! has no pods, so Kubernetes' EndpointSlice controller finds nothing and
//! kvmlet writes them itself, labelled `managed-by: kvmlet.io` (kube-proxy
//! uses every slice of a Service, whoever manages it). Pure: the writer in
//! `endpoints` compares these with what is stored.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};
use sha1::{Digest, Sha1};

use super::identity::{endpoint_labels, selects, template_endpoint_labels};
use crate::vmi::network::{pod_interface, Protocol};

/// Kubernetes' label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// kvmlet's value of [`MANAGED_BY_LABEL`].
pub const MANAGER: &str = "kvmlet.io";

/// The slices `service` should have, or `None` when it is not a VM's
/// Service: no selector, `ExternalName`, or selecting neither a VMI nor a
/// VM's future VMI (those are left to Kubernetes' own controller).
///
/// One slice per set of resolved ports (a named `targetPort` may resolve to
/// different numbers on different VMIs), named `<service>-kvmlet-<hash>`
/// so names are stable; with no endpoint, one empty slice, as Kubernetes
/// keeps one for a Service that selects nothing running.
pub fn wanted_slices(
    service: &Service,
    vmis: &[VirtualMachineInstance],
    vms: &[VirtualMachine],
) -> Option<Vec<EndpointSlice>> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let namespace = service.metadata.namespace.as_deref()?;
    let in_namespace = |ns: Option<&String>| ns.map(String::as_str) == Some(namespace);
    let selected: Vec<&VirtualMachineInstance> = vmis
        .iter()
        .filter(|vmi| in_namespace(vmi.metadata.namespace.as_ref()) && selects(selector, &endpoint_labels(vmi)))
        .collect();
    let a_vms = vms
        .iter()
        .any(|vm| in_namespace(vm.metadata.namespace.as_ref()) && selects(selector, &template_endpoint_labels(vm)));
    if selected.is_empty() && !a_vms {
        return None;
    }
    let service_ports = spec.ports.clone().unwrap_or_default();
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
    for vmi in selected {
        let Some(endpoint) = endpoint(vmi) else { continue };
        // A VMI lacking a named target port is not an endpoint of the Service
        // (as a pod lacking it is not).
        let Some(ports) = service_ports.iter().map(|port| resolve(port, vmi)).collect::<Option<Vec<_>>>() else {
            continue;
        };
        groups.entry(ports).or_default().push(endpoint);
    }
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    Some(groups.into_iter().map(|(ports, endpoints)| slice(service, namespace, ports, endpoints)).collect())
}

/// A running VMI's endpoint: its pod IP, readiness and node; `None` before
/// it has a pod IP or once it has stopped.
fn endpoint(vmi: &VirtualMachineInstance) -> Option<Endpoint> {
    let status = vmi.status.as_ref()?;
    if status.phase != Some(VirtualMachineInstancePhase::Running) {
        return None;
    }
    let address = status
        .interfaces
        .iter()
        .find(|i| i.get("podInterfaceName").and_then(|n| n.as_str()) == Some("eth0"))
        .and_then(|i| i.get("ipAddress")?.as_str())?;
    let ready_condition = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let terminating = vmi.metadata.deletion_timestamp.is_some();
    Some(Endpoint {
        addresses: vec![address.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready_condition && !terminating),
            serving: Some(ready_condition),
            terminating: Some(terminating),
        }),
        node_name: status.node_name.clone(),
        target_ref: Some(ObjectReference {
            api_version: Some("kubevirt.io/v1".into()),
            kind: Some("VirtualMachineInstance".into()),
            namespace: vmi.metadata.namespace.clone(),
            name: vmi.metadata.name.clone(),
            uid: vmi.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    })
}

/// A Service port as this VMI serves it: (name, target port number, protocol).
fn resolve(port: &ServicePort, vmi: &VirtualMachineInstance) -> Option<(String, i32, String)> {
    let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    let number = match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(number)) => *number,
        Some(IntOrString::String(name)) => named_port(vmi, name, &protocol)?,
    };
    Some((port.name.clone().unwrap_or_default(), number, protocol))
}

/// A port named on the VMI's pod interface (`interfaces[].ports[].name`).
fn named_port(vmi: &VirtualMachineInstance, name: &str, protocol: &str) -> Option<i32> {
    let devices = &vmi.spec.domain.devices;
    let interface =
        pod_interface(&devices.interfaces, &vmi.spec.networks, devices.autoattach_pod_interface).ok().flatten()?;
    let port = interface.ports.into_iter().find(|p| {
        let same_protocol = matches!((p.protocol, protocol), (Protocol::Tcp, "TCP") | (Protocol::Udp, "UDP"));
        p.name.as_deref() == Some(name) && same_protocol
    })?;
    Some(i32::from(port.port))
}

fn slice(
    service: &Service,
    namespace: &str,
    ports: Vec<(String, i32, String)>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let digest = Sha1::digest(format!("{ports:?}").as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let labels =
        [(SERVICE_NAME_LABEL.to_string(), service_name.clone()), (MANAGED_BY_LABEL.to_string(), MANAGER.into())];
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service_name}-kvmlet-{hash}")),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service_name,
                uid: service.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(
            ports
                .into_iter()
                .map(|(name, port, protocol)| EndpointPort {
                    name: Some(name),
                    port: Some(port),
                    protocol: Some(protocol),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
#[path = "slices_tests.rs"]
mod tests;
