//! Standalone's service proxy: the node's nftables programmed as
//! kube-proxy's nftables mode programs them (a cluster has kube-proxy;
//! `kvmlet standalone` has only itself). One table, `ip kvmlet-services`,
//! rewritten whole in one `nft -f` transaction whenever Services or
//! EndpointSlices change:
//!
//! - ClusterIP:port and each external IP:port, and NodePorts on the node's
//!   addresses (`--nodeport-addresses`; by default every local address,
//!   loopback included), DNAT to a ready endpoint's IP:port, chosen at
//!   random (`numgen random`) among several;
//! - a Service port without a ready endpoint rejects connections (TCP
//!   reset, ICMP port unreachable for UDP), as kube-proxy does;
//! - NodePort traffic, and a VM reaching itself through its Service, are
//!   masqueraded (mark 0x4000, as kube-proxy); NodePorts on loopback need
//!   `route_localnet`, set with kube-proxy's guard against martians to 127/8.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use sha1::{Digest, Sha1};

use super::slices::SERVICE_NAME_LABEL;

/// The table kvmlet owns in the node's namespace.
pub const TABLE: &str = "kvmlet-services";
/// kube-proxy's masquerade mark.
const MASQUERADE_MARK: &str = "0x00004000";

/// An IPv4 network, as `--nodeport-addresses` takes them (`127.0.0.0/8`,
/// or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
        let address: Ipv4Addr = address.parse().map_err(|_| format!("{text}: not an IPv4 address or network"))?;
        let prefix: u8 =
            prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{text}: the prefix must be 0 to 32"))?;
        Ok(Ipv4Cidr { address, prefix })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Where NodePorts are served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePortAddresses(pub Vec<Ipv4Cidr>);

impl NodePortAddresses {
    /// The nft match for "addressed to the node" on NodePorts.
    fn matcher(&self) -> String {
        if self.0.is_empty() {
            return "fib daddr type local".into();
        }
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        format!("ip daddr {{ {} }}", list.join(", "))
    }

    /// Whether NodePorts answer on 127.0.0.1 (which needs `route_localnet`).
    pub fn include_loopback(&self) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|c| c.prefix <= 8 && c.address.octets()[0] == 127 || c.address.is_loopback())
    }
}

/// One Service port's frontends and its ready backends.
struct Frontend {
    label: String,
    protocol: &'static str,
    addresses: Vec<Ipv4Addr>,
    port: i32,
    node_port: Option<i32>,
    backends: Vec<(Ipv4Addr, i32)>,
}

fn protocol_of(port: &ServicePort) -> Option<&'static str> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

/// The ready endpoints of a Service's port, from every slice of the Service.
fn backends(namespace: &str, service: &str, port: &ServicePort, slices: &[Arc<EndpointSlice>]) -> Vec<(Ipv4Addr, i32)> {
    let name = port.name.clone().unwrap_or_default();
    let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    let mut out = Vec::new();
    let of_service = slices.iter().filter(|s| {
        s.namespace().as_deref() == Some(namespace)
            && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
            && s.address_type == "IPv4"
    });
    for slice in of_service {
        let Some(number) = slice.ports.iter().flatten().find_map(|p| {
            let same = p.name.clone().unwrap_or_default() == name
                && p.protocol.clone().unwrap_or_else(|| "TCP".into()) == protocol;
            same.then_some(p.port).flatten()
        }) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // As kube-proxy: an endpoint whose readiness is unknown is ready.
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for address in endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                if !out.contains(&(address, number)) {
                    out.push((address, number));
                }
            }
        }
    }
    out.sort();
    out
}

fn frontends(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Vec<Frontend> {
    let mut out = Vec::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let mut addresses: Vec<Ipv4Addr> = spec.cluster_ip.iter().filter_map(|ip| ip.parse().ok()).collect();
        addresses.extend(spec.external_ips.iter().flatten().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()));
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = protocol_of(port) else { continue };
            let node_port =
                port.node_port.filter(|_| matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")));
            if addresses.is_empty() && node_port.is_none() {
                continue; // headless: nothing to proxy
            }
            let port_name = port.name.clone().unwrap_or_default();
            out.push(Frontend {
                label: format!(
                    "{namespace}/{name}:{}",
                    if port_name.is_empty() { port.port.to_string() } else { port_name }
                ),
                protocol,
                addresses: addresses.clone(),
                port: port.port,
                node_port,
                backends: backends(&namespace, &name, port, slices),
            });
        }
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    out
}

/// A chain name for a frontend: short, stable, and unique per label.
fn chain(prefix: &str, label: &str) -> String {
    let digest = Sha1::digest(label.as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hash}")
}

/// The whole table, as `nft -f` text that replaces any earlier version of
/// it in one transaction.
pub fn ruleset(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], nodeports: &NodePortAddresses) -> String {
    let frontends = frontends(services, slices);
    let on_node = nodeports.matcher();
    let mut dispatch = String::new();
    let mut reject = String::new();
    let mut chains = String::new();
    for frontend in &frontends {
        let (label, l4) = (&frontend.label, frontend.protocol);
        let mut matches: Vec<String> =
            frontend.addresses.iter().map(|a| format!("ip daddr {a} {l4} dport {}", frontend.port)).collect();
        let node_match = frontend.node_port.map(|p| format!("{on_node} {l4} dport {p}"));
        if frontend.backends.is_empty() {
            let how = if l4 == "tcp" { "reject with tcp reset" } else { "reject" };
            matches.extend(node_match);
            for m in matches {
                let _ = writeln!(reject, "\t\t{m} {how} comment \"{label} has no endpoints\"");
            }
            continue;
        }
        let service_chain = chain("svc", label);
        for m in &matches {
            let _ = writeln!(dispatch, "\t\t{m} jump {service_chain} comment \"{label}\"");
        }
        if let Some(m) = node_match {
            let node_chain = chain("nodeport", label);
            let _ = writeln!(dispatch, "\t\t{m} jump {node_chain} comment \"{label} nodePort\"");
            let _ = writeln!(
                chains,
                "\tchain {node_chain} {{\n\t\tmeta mark set meta mark | {MASQUERADE_MARK}\n\t\tjump {service_chain}\n\t}}"
            );
        }
        let mut picks = Vec::new();
        for (index, (address, port)) in frontend.backends.iter().enumerate() {
            let endpoint_chain = format!("{service_chain}-{index}");
            // A VM reaching itself through its Service is masqueraded, else its reply bypasses the DNAT.
            let _ = writeln!(
                chains,
                "\tchain {endpoint_chain} {{\n\t\tip saddr {address} meta mark set meta mark | {MASQUERADE_MARK}\n\t\tmeta l4proto {l4} dnat to {address}:{port}\n\t}}"
            );
            picks.push(format!("{index} : jump {endpoint_chain}"));
        }
        let _ = writeln!(
            chains,
            "\tchain {service_chain} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            picks.len(),
            picks.join(", ")
        );
    }
    let martians = if nodeports.include_loopback() {
        // kube-proxy's guard for route_localnet (CVE-2020-8558): nothing from
        // outside reaches 127/8 unless a NodePort DNAT sent it there.
        "\t\tiifname != \"lo\" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop\n"
    } else {
        ""
    };
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tmeta mark & {MASQUERADE_MARK} == {MASQUERADE_MARK} masquerade\n\t}}\n\
         \tchain filter-input {{\n\t\ttype filter hook input priority -110; policy accept;\n{martians}\t\tjump no-endpoints\n\t}}\n\
         \tchain filter-forward {{\n\t\ttype filter hook forward priority -110; policy accept;\n\t\tjump no-endpoints\n\t}}\n\
         \tchain filter-output {{\n\t\ttype filter hook output priority -110; policy accept;\n\t\tjump no-endpoints\n\t}}\n\
         \tchain no-endpoints {{\n{reject}\t}}\n\
         \tchain services {{\n{dispatch}\t}}\n\
         {chains}}}\n"
    )
}

/// The node's nftables, applied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("nft -f - failed: {0}")]
    Nft(String),
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    #[error("cannot enable route_localnet for NodePorts on loopback")]
    RouteLocalnet(#[source] std::io::Error),
}

fn apply(text: &str) -> Result<(), ProxyError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(ProxyError::Spawn)?;
    child.stdin.take().expect("piped").write_all(text.as_bytes()).map_err(ProxyError::Spawn)?;
    let output = child.wait_with_output().map_err(ProxyError::Spawn)?;
    if !output.status.success() {
        return Err(ProxyError::Nft(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    Ok(())
}

/// Runs until aborted: the table follows Services and EndpointSlices.
pub async fn run(client: kube::Client, nodeports: NodePortAddresses) -> Result<(), ProxyError> {
    use kube::api::Api;
    use kube::runtime::watcher;
    if nodeports.include_loopback() {
        std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1").map_err(ProxyError::RouteLocalnet)?;
    }
    let notify = Arc::new(tokio::sync::Notify::new());
    let all = watcher::Config::default();
    let with_service = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    let (services, _s) = super::endpoints::follow(Api::<Service>::all(client.clone()), all, notify.clone());
    let (slices, _e) = super::endpoints::follow(Api::<EndpointSlice>::all(client), with_service, notify.clone());
    if futures::future::try_join(services.wait_until_ready(), slices.wait_until_ready()).await.is_err() {
        return Ok(());
    }
    tracing::info!(table = TABLE, nodeport_addresses = ?nodeports.0, "service proxy started");
    let mut applied = String::new();
    loop {
        let text = ruleset(&services.state(), &slices.state(), &nodeports);
        if text != applied {
            match tokio::task::spawn_blocking({
                let text = text.clone();
                move || apply(&text)
            })
            .await
            {
                Ok(Ok(())) => {
                    tracing::info!(table = TABLE, "service rules applied");
                    applied = text;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %crate::errors::with_causes(&e), "cannot apply the service rules; retrying")
                }
                Err(e) => tracing::error!(error = %e, "cannot apply the service rules; retrying"),
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
