//! The Service `kvmlet expose` creates, built as `virtctl expose` builds it:
//! selector `vmi.kubevirt.io/id`, the ports given or else those listed on
//! the VMI's pod-network interface, and for a VM an owner reference so the
//! Service goes with the VM.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proto::kubevirt::{VirtualMachine, VirtualMachineInstanceSpec};
use proto::labels::VMI_ID_LABEL;

use super::identity::vmi_id;
use crate::vmi::network::{pod_interface, Protocol};

/// What is exposed: `vm`/`virtualmachine` or `vmi`/`virtualmachineinstance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExposedKind {
    VirtualMachine,
    VirtualMachineInstance,
}

impl ExposedKind {
    /// virtctl's spellings, case-insensitive, singular and plural.
    pub fn parse(text: &str) -> Result<ExposedKind, ExposeError> {
        match text.to_ascii_lowercase().as_str() {
            "vm" | "vms" | "virtualmachine" | "virtualmachines" => Ok(ExposedKind::VirtualMachine),
            "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => {
                Ok(ExposedKind::VirtualMachineInstance)
            }
            _ => Err(ExposeError::UnsupportedKind(text.to_string())),
        }
    }
}

/// The command line's choices, as written.
#[derive(Debug, Clone, Default)]
pub struct ExposeOptions {
    pub service_name: String,
    pub port: Option<i32>,
    pub target_port: Option<String>,
    pub protocol: String,
    pub service_type: String,
    pub port_name: Option<String>,
    pub cluster_ip: Option<String>,
    pub external_ip: Option<String>,
    pub ip_family: Option<String>,
    pub ip_family_policy: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExposeError {
    #[error("unsupported resource type: {0} (use vm, virtualmachine, vmi or virtualmachineinstance)")]
    UnsupportedKind(String),
    #[error("unknown protocol: {0} (use TCP, UDP or SCTP)")]
    UnknownProtocol(String),
    #[error("type: ExternalName not supported")]
    ExternalName,
    #[error("unknown service type: {0} (use ClusterIP, NodePort or LoadBalancer)")]
    UnknownType(String),
    #[error("unknown IP family: {0} (use IPv4 or IPv6)")]
    UnknownIpFamily(String),
    #[error("unknown IP family policy: {0} (use SingleStack, PreferDualStack or RequireDualStack)")]
    UnknownIpFamilyPolicy(String),
    #[error("--port {0}: must be between 1 and 65535")]
    Port(i32),
    #[error("--target-port {0:?}: must be a port number (1-65535) or a port name")]
    TargetPort(String),
    #[error("--target-port and --port-name apply to the port given with --port")]
    NeedsPort,
    #[error("couldn't find port via --port flag or introspection: {0} lists no ports on its pod network interface")]
    NoPorts(String),
    #[error("the interfaces of {what} are not valid: {message}")]
    Interfaces { what: String, message: String },
}

/// The object being exposed, as read from the API.
pub enum Exposed<'a> {
    Vm(&'a VirtualMachine),
    Vmi { name: &'a str, spec: &'a VirtualMachineInstanceSpec },
}

impl Exposed<'_> {
    /// The name of the VMI whose id the Service selects (a VM's VMI has the VM's name).
    fn vmi_name(&self) -> &str {
        match self {
            Exposed::Vm(vm) => vm.metadata.name.as_deref().unwrap_or_default(),
            Exposed::Vmi { name, .. } => name,
        }
    }

    fn spec(&self) -> &VirtualMachineInstanceSpec {
        match self {
            Exposed::Vm(vm) => &vm.spec.template.spec,
            Exposed::Vmi { spec, .. } => spec,
        }
    }
}

/// The Service for `exposed` in `namespace`, or why there is none.
pub fn service(exposed: &Exposed<'_>, namespace: &str, options: &ExposeOptions) -> Result<Service, ExposeError> {
    let protocol = match options.protocol.as_str() {
        "TCP" | "UDP" | "SCTP" => options.protocol.clone(),
        other => return Err(ExposeError::UnknownProtocol(other.into())),
    };
    let service_type = match options.service_type.as_str() {
        "ClusterIP" | "NodePort" | "LoadBalancer" => options.service_type.clone(),
        "ExternalName" => return Err(ExposeError::ExternalName),
        other => return Err(ExposeError::UnknownType(other.into())),
    };
    let ip_families = match options.ip_family.as_deref() {
        None => None,
        Some(family @ ("IPv4" | "IPv6")) => Some(vec![family.to_string()]),
        Some(other) => return Err(ExposeError::UnknownIpFamily(other.into())),
    };
    let ip_family_policy = match options.ip_family_policy.as_deref() {
        None => None,
        Some(policy @ ("SingleStack" | "PreferDualStack" | "RequireDualStack")) => Some(policy.to_string()),
        Some(other) => return Err(ExposeError::UnknownIpFamilyPolicy(other.into())),
    };
    let ports = match options.port {
        Some(port) => vec![given_port(port, &protocol, options)?],
        None if options.target_port.is_some() || options.port_name.is_some() => return Err(ExposeError::NeedsPort),
        None => interface_ports(exposed)?,
    };
    let owner_references = match exposed {
        // As virtctl: the VM owns its Service, without blocking the VM's deletion.
        Exposed::Vm(vm) => Some(vec![OwnerReference {
            api_version: "kubevirt.io/v1".into(),
            kind: "VirtualMachine".into(),
            name: vm.metadata.name.clone().unwrap_or_default(),
            uid: vm.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }]),
        Exposed::Vmi { .. } => None,
    };
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(options.service_name.clone()),
            namespace: Some(namespace.to_string()),
            owner_references,
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([(VMI_ID_LABEL.to_string(), vmi_id(exposed.vmi_name()))].into()),
            ports: Some(ports),
            type_: Some(service_type),
            cluster_ip: options.cluster_ip.clone(),
            external_ips: options.external_ip.clone().map(|ip| vec![ip]),
            ip_families,
            ip_family_policy,
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn given_port(port: i32, protocol: &str, options: &ExposeOptions) -> Result<ServicePort, ExposeError> {
    if !(1..=65535).contains(&port) {
        return Err(ExposeError::Port(port));
    }
    let target_port = match options.target_port.as_deref() {
        None | Some("") => None,
        Some(text) => Some(match text.parse::<i32>() {
            Ok(number) if (1..=65535).contains(&number) => IntOrString::Int(number),
            Ok(_) => return Err(ExposeError::TargetPort(text.into())),
            Err(_) if crate::vmi::validate::dns1123_label(text).is_ok() && text.len() <= 15 => {
                IntOrString::String(text.into())
            }
            Err(_) => return Err(ExposeError::TargetPort(text.into())),
        }),
    };
    Ok(ServicePort {
        name: options.port_name.clone().filter(|n| !n.is_empty()),
        protocol: Some(protocol.into()),
        port,
        target_port,
        ..ServicePort::default()
    })
}

/// virtctl without `--port`: each port listed on the pod-network interface,
/// named `port-1`, `port-2`, ... with its own protocol.
fn interface_ports(exposed: &Exposed<'_>) -> Result<Vec<ServicePort>, ExposeError> {
    let spec = exposed.spec();
    let what = exposed.vmi_name().to_string();
    let autoattach = spec.domain.devices.autoattach_pod_interface;
    let interface = pod_interface(&spec.domain.devices.interfaces, &spec.networks, autoattach)
        .map_err(|e| ExposeError::Interfaces { what: what.clone(), message: e.to_string() })?;
    let ports: Vec<ServicePort> = interface
        .map(|i| i.ports)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, port)| ServicePort {
            name: Some(format!("port-{}", index + 1)),
            protocol: Some(match port.protocol {
                Protocol::Tcp => "TCP".into(),
                Protocol::Udp => "UDP".into(),
            }),
            port: i32::from(port.port),
            ..ServicePort::default()
        })
        .collect();
    if ports.is_empty() {
        return Err(ExposeError::NoPorts(what));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vm(name: &str, ports: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "uid": "vm-uid"},
            "spec": {"running": false, "template": {"spec": {
                "networks": [{"name": "default", "pod": {}}],
                "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}, "ports": ports}]}},
            }}},
        }))
        .unwrap()
    }

    fn options() -> ExposeOptions {
        ExposeOptions {
            service_name: "svc".into(),
            protocol: "TCP".into(),
            service_type: "ClusterIP".into(),
            ..ExposeOptions::default()
        }
    }

    #[test]
    fn a_vm_is_exposed_by_its_vmi_id_and_owns_the_service() {
        let vm = vm("vmi-ephemeral", json!([]));
        let options = ExposeOptions { port: Some(27017), target_port: Some("22".into()), ..options() };
        let built = serde_json::to_value(service(&Exposed::Vm(&vm), "default", &options).unwrap()).unwrap();
        assert_eq!(
            built,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "svc", "namespace": "default", "ownerReferences": [{
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "vmi-ephemeral",
                    "uid": "vm-uid", "controller": true, "blockOwnerDeletion": false}]},
                "spec": {"selector": {"vmi.kubevirt.io/id": "vmi-ephemeral"}, "type": "ClusterIP",
                         "ports": [{"port": 27017, "protocol": "TCP", "targetPort": 22}]},
            })
        );
    }

    #[test]
    fn without_port_the_interfaces_ports_are_used_and_named() {
        let vm = vm("db", json!([{"port": 22}, {"name": "dns", "port": 53, "protocol": "UDP"}]));
        let built = service(&Exposed::Vm(&vm), "ns", &options()).unwrap();
        let ports = serde_json::to_value(built.spec.unwrap().ports).unwrap();
        assert_eq!(
            ports,
            json!([{"name": "port-1", "port": 22, "protocol": "TCP"}, {"name": "port-2", "port": 53, "protocol": "UDP"}])
        );
        let bare = self::vm("bare", json!([]));
        assert_eq!(service(&Exposed::Vm(&bare), "ns", &options()).unwrap_err(), ExposeError::NoPorts("bare".into()));
    }

    #[test]
    fn a_long_vmi_name_is_selected_by_its_hashed_id() {
        let name = "x".repeat(70);
        let spec = vm("unused", json!([])).spec.template.spec;
        let options = ExposeOptions { port: Some(80), port_name: Some("http".into()), ..options() };
        let built = service(&Exposed::Vmi { name: &name, spec: &spec }, "ns", &options).unwrap();
        let selector = built.spec.as_ref().unwrap().selector.clone().unwrap();
        assert_eq!(selector[VMI_ID_LABEL], vmi_id(&name));
        assert_eq!(selector[VMI_ID_LABEL].len(), 63);
        assert!(built.metadata.owner_references.is_none(), "a VMI does not own its Service");
        assert_eq!(built.spec.unwrap().ports.unwrap()[0].name.as_deref(), Some("http"));
    }

    #[test]
    fn bad_choices_are_refused_by_name() {
        let vm = vm("a", json!([{"port": 22}]));
        let exposed = Exposed::Vm(&vm);
        let refused = |o: ExposeOptions| service(&exposed, "ns", &o).unwrap_err();
        assert_eq!(
            refused(ExposeOptions { service_type: "ExternalName".into(), ..options() }),
            ExposeError::ExternalName
        );
        assert_eq!(
            refused(ExposeOptions { service_type: "Ingress".into(), ..options() }),
            ExposeError::UnknownType("Ingress".into())
        );
        assert_eq!(
            refused(ExposeOptions { protocol: "ICMP".into(), ..options() }),
            ExposeError::UnknownProtocol("ICMP".into())
        );
        assert_eq!(refused(ExposeOptions { port: Some(70000), ..options() }), ExposeError::Port(70000));
        assert_eq!(
            refused(ExposeOptions { port: Some(80), target_port: Some("Not_A_Name".into()), ..options() }),
            ExposeError::TargetPort("Not_A_Name".into())
        );
        assert_eq!(refused(ExposeOptions { target_port: Some("22".into()), ..options() }), ExposeError::NeedsPort);
        assert_eq!(
            refused(ExposeOptions { ip_family: Some("IPv5".into()), ..options() }),
            ExposeError::UnknownIpFamily("IPv5".into())
        );
        assert_eq!(ExposedKind::parse("VirtualMachineInstances"), Ok(ExposedKind::VirtualMachineInstance));
        assert_eq!(ExposedKind::parse("vmirs"), Err(ExposeError::UnsupportedKind("vmirs".into())));
    }
}
