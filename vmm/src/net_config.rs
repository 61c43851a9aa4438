//! A virtio-net NIC in a `VmConfig`: its tap, MAC, MTU and the DHCP lease the
//! VMM answers the guest with (KubeVirt's masquerade binding answers DHCP
//! inside virt-launcher; kvmlet answers it inside the VM process).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Ethernet frames the device carries: 1500 unless the config says otherwise.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU IPv4 allows (RFC 791) and the largest a tap takes.
pub const MIN_MTU: u16 = 68;
pub const MAX_MTU: u16 = 65535 - 14;
/// Linux's IFNAMSIZ less the terminating NUL.
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Bounds on what a lease carries, so that it fits one DHCP reply.
pub const MAX_DNS_SERVERS: usize = 8;
pub const MAX_SEARCH_DOMAINS: usize = 6;
pub const MAX_NTP_SERVERS: usize = 8;
pub const MAX_HOSTNAME_LEN: usize = 63;
pub const MAX_DOMAIN_LEN: usize = 253;
pub const MAX_STRING_OPTION_LEN: usize = 128;

/// One NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetConfig {
    pub tap: TapSource,
    pub mac: MacAddr,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// When set, the VMM answers the guest's DHCP with this lease; DHCP
    /// frames then never reach the tap.
    #[serde(default)]
    pub dhcp: Option<DhcpLease>,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum TapSource {
    /// An open `/dev/net/tun` fd (a tap with `IFF_VNET_HDR`) handed to the
    /// process by whoever started it; the VMM duplicates it.
    Fd(i32),
    /// The name of an existing tap interface, opened through `/dev/net/tun`.
    Name(String),
}

/// A MAC address, written `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (expected six hex bytes separated by colons)")]
pub struct MacAddrError(String);

impl FromStr for MacAddr {
    type Err = MacAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(|| MacAddrError(s.into()))?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacAddrError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(MacAddrError(s.into()));
        }
        Ok(MacAddr(bytes))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the guest's DHCP client is told, as KubeVirt's masquerade DHCP server
/// tells it (its `dhcpOptions` included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DhcpLease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The router, and the DHCP server identifier.
    pub router: Ipv4Addr,
    #[serde(default)]
    pub dns_servers: Vec<Ipv4Addr>,
    #[serde(default)]
    pub search_domains: Vec<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    pub lease_seconds: u32,
    #[serde(default)]
    pub ntp_servers: Vec<Ipv4Addr>,
    #[serde(default)]
    pub boot_file_name: Option<String>,
    #[serde(default)]
    pub tftp_server_name: Option<String>,
    /// KubeVirt's `privateOptions`: option codes 224..=254 with a string value.
    #[serde(default)]
    pub private_options: Vec<PrivateOption>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivateOption {
    pub option: u8,
    pub value: String,
}

impl DhcpLease {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) | !u32::from(self.netmask()))
    }
}

/// What is wrong with a NIC, relative to `nets[index]`.
#[derive(Debug, thiserror::Error)]
#[error("nets[{index}].{field}: {reason}")]
pub struct NetConfigError {
    pub index: usize,
    pub field: &'static str,
    pub reason: String,
}

impl NetConfig {
    pub fn validate(&self, index: usize) -> Result<(), NetConfigError> {
        let fail = |field, reason: String| Err(NetConfigError { index, field, reason });
        match &self.tap {
            TapSource::Fd(fd) if *fd < 0 => return fail("tap.fd", format!("{fd} is not a file descriptor")),
            TapSource::Name(name) if name.is_empty() || name.len() > MAX_TAP_NAME_LEN => {
                return fail("tap.name", format!("must be 1..={MAX_TAP_NAME_LEN} bytes long"))
            }
            TapSource::Name(name) if !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') => {
                return fail("tap.name", format!("`{name}` is not an interface name"))
            }
            _ => {}
        }
        if self.mac.is_multicast() || self.mac.0 == [0; 6] {
            return fail("mac", format!("{} is not a unicast address", self.mac));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return fail("mtu", format!("{} is out of range ({MIN_MTU}..={MAX_MTU})", self.mtu));
        }
        if let Some(lease) = &self.dhcp {
            lease.validate().map_err(|(field, reason)| NetConfigError { index, field, reason })?;
        }
        Ok(())
    }
}

impl DhcpLease {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=30).contains(&self.prefix_len) {
            return Err(("dhcp.prefixLen", format!("{} is out of range (1..=30)", self.prefix_len)));
        }
        let net = |ip: Ipv4Addr| u32::from(ip) & u32::from(self.netmask());
        if net(self.router) != net(self.address) || self.router == self.address {
            return Err((
                "dhcp.router",
                format!("{} is not another address in {}'s subnet", self.router, self.address),
            ));
        }
        if self.dns_servers.len() > MAX_DNS_SERVERS {
            return Err(("dhcp.dnsServers", format!("at most {MAX_DNS_SERVERS} are supported")));
        }
        if self.ntp_servers.len() > MAX_NTP_SERVERS {
            return Err(("dhcp.ntpServers", format!("at most {MAX_NTP_SERVERS} are supported")));
        }
        if self.search_domains.len() > MAX_SEARCH_DOMAINS {
            return Err(("dhcp.searchDomains", format!("at most {MAX_SEARCH_DOMAINS} are supported")));
        }
        for domain in &self.search_domains {
            if !is_domain_name(domain, MAX_DOMAIN_LEN) {
                return Err(("dhcp.searchDomains", format!("`{domain}` is not a domain name")));
            }
        }
        if let Some(hostname) = &self.hostname {
            if !is_domain_name(hostname, MAX_HOSTNAME_LEN) {
                return Err(("dhcp.hostname", format!("`{hostname}` is not a host name")));
            }
        }
        for (field, value) in
            [("dhcp.bootFileName", &self.boot_file_name), ("dhcp.tftpServerName", &self.tftp_server_name)]
        {
            if value.as_ref().is_some_and(|v| !is_option_string(v)) {
                return Err((field, format!("must be 1..={MAX_STRING_OPTION_LEN} printable ASCII bytes")));
            }
        }
        for option in &self.private_options {
            if !(224..=254).contains(&option.option) {
                return Err(("dhcp.privateOptions", format!("option {} is not in 224..=254", option.option)));
            }
            if !is_option_string(&option.value) {
                return Err((
                    "dhcp.privateOptions",
                    format!(
                        "option {}: value must be 1..={MAX_STRING_OPTION_LEN} printable ASCII bytes",
                        option.option
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn is_option_string(value: &str) -> bool {
    (1..=MAX_STRING_OPTION_LEN).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// RFC 1123 names: dot-separated labels of 1..=63 letters, digits and hyphens.
fn is_domain_name(name: &str, max_len: usize) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= max_len
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn lease() -> DhcpLease {
        DhcpLease {
            address: Ipv4Addr::new(10, 0, 2, 2),
            prefix_len: 24,
            router: Ipv4Addr::new(10, 0, 2, 1),
            dns_servers: vec![Ipv4Addr::new(10, 96, 0, 10)],
            search_domains: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            hostname: Some("vm-cirros".into()),
            lease_seconds: 999 * 86400,
            ntp_servers: vec![],
            boot_file_name: None,
            tftp_server_name: None,
            private_options: vec![],
        }
    }

    fn nic() -> NetConfig {
        NetConfig {
            tap: TapSource::Name("tap0".into()),
            mac: "02:00:00:aa:bb:cc".parse().unwrap(),
            mtu: 1500,
            dhcp: Some(lease()),
        }
    }

    #[test]
    fn mac_addresses_parse_and_print() {
        let mac: MacAddr = "02:0A:ff:00:01:9c".parse().unwrap();
        assert_eq!(mac.0, [2, 10, 255, 0, 1, 0x9c]);
        assert_eq!(mac.to_string(), "02:0a:ff:00:01:9c");
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "0g:00:00:00:00:00", "2:00:00:00:00:000"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lease_derives_mask_and_broadcast() {
        assert_eq!(lease().netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(lease().broadcast(), Ipv4Addr::new(10, 0, 2, 255));
    }

    #[test]
    fn a_good_nic_passes_and_json_round_trips() {
        nic().validate(0).unwrap();
        let json = serde_json::to_string(&nic()).unwrap();
        assert!(json.contains("\"mac\":\"02:00:00:aa:bb:cc\""), "{json}");
        assert_eq!(serde_json::from_str::<NetConfig>(&json).unwrap(), nic());
    }

    #[test]
    fn each_bad_field_is_named() {
        let err = |n: NetConfig| n.validate(2).unwrap_err().to_string();
        assert!(err(NetConfig { tap: TapSource::Fd(-1), ..nic() }).starts_with("nets[2].tap.fd:"));
        assert!(err(NetConfig { tap: TapSource::Name("x".repeat(16)), ..nic() }).starts_with("nets[2].tap.name:"));
        assert!(err(NetConfig { tap: TapSource::Name("../a".into()), ..nic() }).starts_with("nets[2].tap.name:"));
        assert!(err(NetConfig { mac: "01:00:5e:00:00:01".parse().unwrap(), ..nic() }).starts_with("nets[2].mac:"));
        assert!(err(NetConfig { mtu: 67, ..nic() }).starts_with("nets[2].mtu:"));
        let with = |l: DhcpLease| NetConfig { dhcp: Some(l), ..nic() };
        assert!(err(with(DhcpLease { prefix_len: 31, ..lease() })).starts_with("nets[2].dhcp.prefixLen:"));
        assert!(
            err(with(DhcpLease { router: Ipv4Addr::new(10, 0, 3, 1), ..lease() })).starts_with("nets[2].dhcp.router:")
        );
        assert!(err(with(DhcpLease { hostname: Some("a_b".into()), ..lease() })).starts_with("nets[2].dhcp.hostname:"));
        assert!(err(with(DhcpLease { search_domains: vec!["x..y".into()], ..lease() }))
            .starts_with("nets[2].dhcp.searchDomains:"));
        assert!(err(with(DhcpLease { dns_servers: vec![Ipv4Addr::LOCALHOST; 9], ..lease() }))
            .starts_with("nets[2].dhcp.dnsServers:"));
        let private = vec![PrivateOption { option: 200, value: "x".into() }];
        assert!(
            err(with(DhcpLease { private_options: private, ..lease() })).starts_with("nets[2].dhcp.privateOptions:")
        );
    }
}
