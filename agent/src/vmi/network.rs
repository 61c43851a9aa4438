//! A VMI's network by KubeVirt's rules: its one pod interface with the
//! masquerade binding, the checks on `interfaces`/`networks` (admission and
//! node), the guest's stable MAC and the DHCP lease KubeVirt's masquerade
//! binding answers with.
//!
//! A VMI with neither `interfaces` nor `networks` gets KubeVirt's default:
//! an interface `default` with the masquerade binding on the pod network.
//! Other bindings (`bridge`, `sriov`, `passt`, `slirp`, `binding`) and multus
//! networks are refused naming the field.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};
use vmm::net_config::{MAX_DNS_SERVERS, MAX_NTP_SERVERS, MAX_SEARCH_DOMAINS, MAX_STRING_OPTION_LEN};
use vmm::{DhcpLease, MacAddr, PrivateOption};

use super::SpecError;

/// The guest's address behind the masquerade bridge, its prefix and router.
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const GUEST_PREFIX_LEN: u8 = 24;
pub const GATEWAY_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// KubeVirt's masquerade lease: 999 days.
pub const LEASE_SECONDS: u32 = 999 * 24 * 3600;
/// The MAC of the bridge `k6t-eth0`, which KubeVirt refuses as a guest MAC.
pub const BRIDGE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0]);
/// systemd-resolved's stub listener, useless inside a VM's namespace.
pub const RESOLVED_STUB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// The interface and network KubeVirt adds to a VMI that names none.
pub const DEFAULT_NAME: &str = "default";

const INTERFACES: &str = "spec.domain.devices.interfaces";
const NETWORKS: &str = "spec.networks";
const UNSUPPORTED_BINDINGS: [&str; 5] = ["bridge", "sriov", "passt", "slirp", "binding"];

/// The VMI's pod interface (masquerade binding on the pod network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    /// `macAddress`, when the spec sets one.
    pub mac: Option<MacAddr>,
    /// The forwarded ports; all ports when empty.
    pub ports: Vec<Port>,
    pub dhcp_options: DhcpOptions,
}

/// A port forwarded from the pod IP to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// `name`: what a Service's named `targetPort` resolves against.
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `interfaces[i].dhcpOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpOptions {
    pub boot_file_name: Option<String>,
    pub tftp_server_name: Option<String>,
    pub ntp_servers: Vec<Ipv4Addr>,
    pub private_options: Vec<PrivateOption>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::new(field, message)
}

/// The VMI's pod interface, KubeVirt's default when it names none (unless
/// `autoattach` is `Some(false)`: then none); the first problem with
/// `interfaces`/`networks` otherwise.
pub fn pod_interface(
    interfaces: &[Value],
    networks: &[Value],
    autoattach: Option<bool>,
) -> Result<Option<PodInterface>, SpecError> {
    if interfaces.is_empty() && networks.is_empty() {
        if autoattach == Some(false) {
            return Ok(None);
        }
        return Ok(Some(PodInterface {
            name: DEFAULT_NAME.into(),
            mac: None,
            ports: Vec::new(),
            dhcp_options: DhcpOptions::default(),
        }));
    }
    let mut network_names = Vec::new();
    for (index, network) in networks.iter().enumerate() {
        let name = network_name(network, &format!("{NETWORKS}[{index}]"))?;
        if network_names.contains(&name) {
            return Err(err(format!("{NETWORKS}[{index}].name"), format!("Duplicate value: {name:?}")));
        }
        network_names.push(name);
    }
    let mut parsed: Vec<PodInterface> = Vec::new();
    for (index, interface) in interfaces.iter().enumerate() {
        let field = format!("{INTERFACES}[{index}]");
        let parsed_interface = parse_interface(interface, &field)?;
        if parsed.iter().any(|i| i.name == parsed_interface.name) {
            return Err(err(format!("{field}.name"), format!("Duplicate value: {:?}", parsed_interface.name)));
        }
        if !network_names.contains(&parsed_interface.name.as_str()) {
            return Err(err(
                format!("{field}.name"),
                format!("{:?} not found: every interface needs a network of the same name", parsed_interface.name),
            ));
        }
        parsed.push(parsed_interface);
    }
    for (index, name) in network_names.iter().enumerate() {
        if !parsed.iter().any(|i| i.name == *name) {
            return Err(err(
                format!("{NETWORKS}[{index}].name"),
                format!("{name:?} not found: every network needs an interface of the same name"),
            ));
        }
    }
    // One pod network at most (as KubeVirt), and multus networks are refused.
    parsed.pop().map(Some).ok_or_else(|| err(INTERFACES, "a network needs an interface"))
}

/// A network's name, which must be the pod network.
fn network_name<'a>(network: &'a Value, field: &str) -> Result<&'a str, SpecError> {
    let object = network.as_object().ok_or_else(|| err(field, "must be an object"))?;
    let name = string(object, "name", field)?.ok_or_else(|| err(format!("{field}.name"), "Required value"))?;
    super::validate::dns1123_label(name).map_err(|e| err(format!("{field}.name"), e))?;
    for key in object.keys() {
        match key.as_str() {
            "name" | "pod" => {}
            "multus" => {
                return Err(err(format!("{field}.multus"), "multus networks are not supported by kvmlet (use pod)"))
            }
            other => return Err(err(format!("{field}.{other}"), "unknown field")),
        }
    }
    let pod = object.get("pod").ok_or_else(|| err(field, "a network needs a source: kvmlet supports pod"))?;
    let pod = pod.as_object().ok_or_else(|| err(format!("{field}.pod"), "must be an object"))?;
    if let Some(key) = pod.keys().next() {
        return Err(err(
            format!("{field}.pod.{key}"),
            "not supported: kvmlet's masquerade network is 10.0.2.0/24 (leave pod empty)",
        ));
    }
    Ok(name)
}

fn parse_interface(interface: &Value, field: &str) -> Result<PodInterface, SpecError> {
    let object = interface.as_object().ok_or_else(|| err(field, "must be an object"))?;
    let name = string(object, "name", field)?.ok_or_else(|| err(format!("{field}.name"), "Required value"))?;
    super::validate::dns1123_label(name).map_err(|e| err(format!("{field}.name"), e))?;
    let mut masquerade = false;
    for (key, value) in object {
        match key.as_str() {
            "name" | "macAddress" | "ports" | "dhcpOptions" => {}
            "masquerade" => {
                if !value.as_object().is_some_and(Map::is_empty) {
                    return Err(err(format!("{field}.masquerade"), "must be an empty object"));
                }
                masquerade = true;
            }
            "model" => match value.as_str() {
                Some("virtio") => {}
                _ => {
                    return Err(err(
                        format!("{field}.model"),
                        format!("Unsupported value: {value}: supported values: \"virtio\""),
                    ))
                }
            },
            binding if UNSUPPORTED_BINDINGS.contains(&binding) => {
                return Err(err(
                    format!("{field}.{binding}"),
                    format!("the {binding} binding is not supported by kvmlet (use masquerade)"),
                ))
            }
            "bootOrder" | "pciAddress" | "tag" | "acpiIndex" | "state" => {
                return Err(err(format!("{field}.{key}"), "not supported by kvmlet"))
            }
            other => return Err(err(format!("{field}.{other}"), "unknown field")),
        }
    }
    if !masquerade {
        return Err(err(field, "an interface needs a binding: kvmlet supports masquerade"));
    }
    let mac = string(object, "macAddress", field)?.map(|text| parse_mac(text, &format!("{field}.macAddress")));
    Ok(PodInterface {
        name: name.to_string(),
        mac: mac.transpose()?,
        ports: ports(object.get("ports"), &format!("{field}.ports"))?,
        dhcp_options: dhcp_options(object.get("dhcpOptions"), &format!("{field}.dhcpOptions"))?,
    })
}

/// A guest MAC: six hex bytes, unicast, not the bridge's.
pub fn parse_mac(text: &str, field: &str) -> Result<MacAddr, SpecError> {
    let mac: MacAddr = text.parse().map_err(|e: vmm::net_config::MacAddrError| err(field, e.to_string()))?;
    if mac == BRIDGE_MAC {
        return Err(err(field, format!("{text:?} is reserved for the pod's bridge (k6t-eth0)")));
    }
    if mac.is_multicast() {
        return Err(err(field, format!("{text:?} is a multicast address")));
    }
    Ok(mac)
}

fn ports(value: Option<&Value>, field: &str) -> Result<Vec<Port>, SpecError> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let list = value.as_array().ok_or_else(|| err(field, "must be a list"))?;
    let mut ports = Vec::new();
    for (index, entry) in list.iter().enumerate() {
        let field = format!("{field}[{index}]");
        let object = entry.as_object().ok_or_else(|| err(&field, "must be an object"))?;
        if let Some(key) = object.keys().find(|k| !matches!(k.as_str(), "name" | "protocol" | "port")) {
            return Err(err(format!("{field}.{key}"), "unknown field"));
        }
        let name = string(object, "name", &field)?;
        if let Some(name) = name {
            super::validate::dns1123_label(name).map_err(|e| err(format!("{field}.name"), e))?;
        }
        let protocol = match string(object, "protocol", &field)? {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some(other) => {
                return Err(err(
                    format!("{field}.protocol"),
                    format!("Unsupported value: {other:?}: supported values: \"TCP\", \"UDP\""),
                ))
            }
        };
        let port = object
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("{field}.port"), "must be a port number between 1 and 65535"))?;
        ports.push(Port { name: name.map(str::to_owned), protocol, port });
    }
    Ok(ports)
}

fn dhcp_options(value: Option<&Value>, field: &str) -> Result<DhcpOptions, SpecError> {
    let Some(value) = value else { return Ok(DhcpOptions::default()) };
    let object = value.as_object().ok_or_else(|| err(field, "must be an object"))?;
    let bounded = |key: &str| -> Result<Option<String>, SpecError> {
        let text = string(object, key, field)?;
        if text.is_some_and(|t| t.len() > MAX_STRING_OPTION_LEN) {
            return Err(err(format!("{field}.{key}"), format!("longer than {MAX_STRING_OPTION_LEN} bytes")));
        }
        Ok(text.map(str::to_string))
    };
    let mut options = DhcpOptions {
        boot_file_name: bounded("bootFileName")?,
        tftp_server_name: bounded("tftpServerName")?,
        ..Default::default()
    };
    for key in object.keys() {
        if !matches!(key.as_str(), "bootFileName" | "tftpServerName" | "ntpServers" | "privateOptions") {
            return Err(err(format!("{field}.{key}"), "unknown field"));
        }
    }
    if let Some(servers) = object.get("ntpServers") {
        let servers = servers.as_array().ok_or_else(|| err(format!("{field}.ntpServers"), "must be a list"))?;
        if servers.len() > MAX_NTP_SERVERS {
            return Err(err(format!("{field}.ntpServers"), format!("at most {MAX_NTP_SERVERS} servers")));
        }
        for (index, server) in servers.iter().enumerate() {
            let address = server.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                err(format!("{field}.ntpServers[{index}]"), format!("{server} is not an IPv4 address"))
            })?;
            options.ntp_servers.push(address);
        }
    }
    if let Some(private) = object.get("privateOptions") {
        let private = private.as_array().ok_or_else(|| err(format!("{field}.privateOptions"), "must be a list"))?;
        for (index, entry) in private.iter().enumerate() {
            let entry_field = format!("{field}.privateOptions[{index}]");
            let option = entry
                .get("option")
                .and_then(Value::as_u64)
                .and_then(|o| u8::try_from(o).ok())
                .filter(|o| (224..=254).contains(o))
                .ok_or_else(|| err(format!("{entry_field}.option"), "must be between 224 and 254"))?;
            let value = entry
                .get("value")
                .and_then(Value::as_str)
                .filter(|v| v.len() <= MAX_STRING_OPTION_LEN)
                .ok_or_else(|| {
                    err(format!("{entry_field}.value"), format!("a string of at most {MAX_STRING_OPTION_LEN} bytes"))
                })?;
            if options.private_options.iter().any(|p| p.option == option) {
                return Err(err(format!("{entry_field}.option"), format!("Duplicate value: {option}")));
            }
            options.private_options.push(PrivateOption { option, value: value.to_string() });
        }
    }
    Ok(options)
}

fn string<'a>(object: &'a Map<String, Value>, key: &str, field: &str) -> Result<Option<&'a str>, SpecError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(err(format!("{field}.{key}"), "must be a string")),
    }
}

/// A stable, locally administered unicast MAC for the VMI `namespace/name`
/// (FNV-1a of the two: the same on every node and across restarts).
pub fn stable_mac(namespace: &str, name: &str) -> MacAddr {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    let mac = MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]]);
    // The bridge's MAC is never a guest's.
    if mac == BRIDGE_MAC {
        MacAddr([0x02, 0, 0, 0, 0, 1])
    } else {
        mac
    }
}

/// What the node's resolv.conf gives a guest: IPv4 name servers and search domains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (IPv6 name servers are skipped: the lease is IPv4;
    /// the last `search` line wins, as in glibc).
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().and_then(|w| w.parse::<Ipv4Addr>().ok())),
                Some("search") => conf.search = words.map(str::to_string).collect(),
                _ => {}
            }
        }
        conf
    }

    /// The node's resolv.conf (`etc`), with systemd-resolved's stub 127.0.0.53
    /// replaced by the upstream servers resolved lists (`upstream`, the text of
    /// /run/systemd/resolve/resolv.conf) — the stub is unreachable from a VM.
    pub fn for_guests(etc: &str, upstream: Option<&str>) -> ResolvConf {
        let mut conf = ResolvConf::parse(etc);
        if conf.nameservers.contains(&RESOLVED_STUB) {
            let upstream = upstream.map(ResolvConf::parse).unwrap_or_default();
            let at = conf.nameservers.iter().position(|a| *a == RESOLVED_STUB).unwrap_or(0);
            conf.nameservers.retain(|a| *a != RESOLVED_STUB);
            for (offset, server) in upstream.nameservers.into_iter().filter(|a| !a.is_loopback()).enumerate() {
                conf.nameservers.insert(at + offset, server);
            }
            if conf.search.is_empty() {
                conf.search = upstream.search;
            }
        }
        conf.nameservers.dedup();
        conf.nameservers.truncate(MAX_DNS_SERVERS);
        conf.search.truncate(MAX_SEARCH_DOMAINS);
        conf
    }

    /// The node's: /etc/resolv.conf, upstreams from /run/systemd/resolve/resolv.conf.
    pub fn of_node() -> ResolvConf {
        let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstream = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
        ResolvConf::for_guests(&etc, upstream.as_deref())
    }
}

/// KubeVirt's masquerade lease: the guest is 10.0.2.2/24 behind the pod's
/// bridge at 10.0.2.1, leased for 999 days, with the pod's DNS servers and
/// search domains, the VMI's hostname and its `dhcpOptions`.
pub fn masquerade_lease(hostname: Option<String>, resolv: &ResolvConf, options: &DhcpOptions) -> DhcpLease {
    DhcpLease {
        address: GUEST_ADDRESS,
        prefix_len: GUEST_PREFIX_LEN,
        router: GATEWAY_ADDRESS,
        dns_servers: resolv.nameservers.iter().copied().take(MAX_DNS_SERVERS).collect(),
        search_domains: resolv.search.iter().take(MAX_SEARCH_DOMAINS).cloned().collect(),
        hostname,
        lease_seconds: LEASE_SECONDS,
        ntp_servers: options.ntp_servers.clone(),
        boot_file_name: options.boot_file_name.clone(),
        tftp_server_name: options.tftp_server_name.clone(),
        private_options: options.private_options.clone(),
    }
}

/// One `status.interfaces` entry for the pod interface, as KubeVirt reports
/// it: the guest's MAC, the pod IP(s), the pod side `eth0`.
pub fn interface_status(name: &str, mac: MacAddr, pod_ip: Option<Ipv4Addr>) -> Value {
    let mut status = serde_json::json!({
        "name": name,
        "mac": mac.to_string(),
        "infoSource": "domain",
        "podInterfaceName": "eth0",
        "queueCount": 1,
        "linkState": "up",
    });
    if let Some(ip) = pod_ip {
        status["ipAddress"] = ip.to_string().into();
        status["ipAddresses"] = serde_json::json!([ip.to_string()]);
    }
    status
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
