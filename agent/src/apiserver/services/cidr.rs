//! The service CIDR (`--service-cidr`, kube-apiserver's
//! `--service-cluster-ip-range`): an IPv4 network cluster IPs come from.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The range kube-apiserver and kubeadm default to.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/16";
/// Widest range served: kube-apiserver refuses service ranges of more than
/// 20 host bits ("the mask must be >= 12").
pub const WIDEST_PREFIX: u8 = 12;
/// Narrowest range served: 14 usable addresses.
pub const NARROWEST_PREFIX: u8 = 28;

/// An IPv4 network Services' cluster IPs are allocated from. Its network and
/// broadcast addresses are never handed out, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a `--service-cidr` value was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ServiceCidrError {
    #[error("{0:?} is not a CIDR such as {DEFAULT_SERVICE_CIDR}")]
    Syntax(String),
    #[error("{0}: only IPv4 service ranges are supported")]
    NotIpv4(String),
    #[error("{value}: the prefix must be between /{WIDEST_PREFIX} and /{NARROWEST_PREFIX}")]
    Prefix { value: String },
    #[error("{value}: host bits are set; the network is {network}")]
    HostBits { value: String, network: String },
}

impl ServiceCidr {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<ServiceCidr, ServiceCidrError> {
        format!("{network}/{prefix}").parse()
    }

    /// Addresses in the network, the network and broadcast addresses included.
    fn span(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// How many addresses can be allocated (all but network and broadcast).
    pub fn usable(&self) -> u32 {
        self.span() - 2
    }

    /// The `index`th allocatable address (0 is the one after the network address).
    pub fn address(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1 + index)
    }

    /// The index of `address` among the allocatable ones, if it is one.
    pub fn index_of(&self, address: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(address).checked_sub(u32::from(self.network))?;
        (1..self.span() - 1).contains(&offset).then(|| offset - 1)
    }
}

impl Default for ServiceCidr {
    fn default() -> ServiceCidr {
        ServiceCidr { network: Ipv4Addr::new(10, 96, 0, 0), prefix: 16 }
    }
}

impl fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for ServiceCidr {
    type Err = ServiceCidrError;

    fn from_str(value: &str) -> Result<ServiceCidr, ServiceCidrError> {
        let syntax = || ServiceCidrError::Syntax(value.to_string());
        let (address, prefix) = value.split_once('/').ok_or_else(syntax)?;
        let address: std::net::IpAddr = address.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let std::net::IpAddr::V4(address) = address else {
            return Err(ServiceCidrError::NotIpv4(value.to_string()));
        };
        if !(WIDEST_PREFIX..=NARROWEST_PREFIX).contains(&prefix) {
            return Err(ServiceCidrError::Prefix { value: value.to_string() });
        }
        let mask = u32::MAX << (32 - prefix);
        let network = Ipv4Addr::from(u32::from(address) & mask);
        if network != address {
            return Err(ServiceCidrError::HostBits {
                value: value.to_string(),
                network: format!("{network}/{prefix}"),
            });
        }
        Ok(ServiceCidr { network, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_networks_and_explains_refusals() {
        let cidr: ServiceCidr = DEFAULT_SERVICE_CIDR.parse().unwrap();
        assert_eq!(cidr, ServiceCidr::default());
        assert_eq!(cidr.to_string(), "10.96.0.0/16");
        assert_eq!(cidr.usable(), 65534);
        assert_eq!("10.0.0.0/28".parse::<ServiceCidr>().unwrap().usable(), 14);
        assert_eq!("10.96.0.0".parse::<ServiceCidr>(), Err(ServiceCidrError::Syntax("10.96.0.0".into())));
        assert_eq!("fd00::/108".parse::<ServiceCidr>(), Err(ServiceCidrError::NotIpv4("fd00::/108".into())));
        let error = "10.0.0.0/8".parse::<ServiceCidr>().unwrap_err();
        assert_eq!(error.to_string(), "10.0.0.0/8: the prefix must be between /12 and /28");
        assert!("10.0.0.0/29".parse::<ServiceCidr>().is_err());
        let error = "10.96.0.1/16".parse::<ServiceCidr>().unwrap_err();
        assert_eq!(error.to_string(), "10.96.0.1/16: host bits are set; the network is 10.96.0.0/16");
    }

    #[test]
    fn network_and_broadcast_are_not_allocatable() {
        let cidr: ServiceCidr = "10.0.0.16/28".parse().unwrap();
        assert_eq!(cidr.address(0), Ipv4Addr::new(10, 0, 0, 17));
        assert_eq!(cidr.address(13), Ipv4Addr::new(10, 0, 0, 30));
        assert_eq!(cidr.index_of(Ipv4Addr::new(10, 0, 0, 17)), Some(0));
        assert_eq!(cidr.index_of(Ipv4Addr::new(10, 0, 0, 16)), None, "network");
        assert_eq!(cidr.index_of(Ipv4Addr::new(10, 0, 0, 31)), None, "broadcast");
        assert_eq!(cidr.index_of(Ipv4Addr::new(10, 0, 0, 32)), None);
        assert_eq!(cidr.index_of(Ipv4Addr::new(10, 0, 0, 1)), None);
    }
}
