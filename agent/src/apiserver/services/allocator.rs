//! Cluster IPs and node ports, allocated as kube-apiserver's bitmap
//! allocators do, with one difference: nothing is kept beside the Services
//! themselves. What is in use is read from the stored Services (all
//! namespaces) on every allocation, so deleting a Service frees its address
//! and ports without any bookkeeping that could drift from the store.
//!
//! Two writers must not both take the same free address, so a write holds
//! the allocator's [`Turn`] from reading what is in use until its object is
//! committed.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::cidr::ServiceCidr;
use crate::apiserver::store::{ObjectKey, Scope, Store, StoreError};

/// kube-apiserver's default `--service-node-port-range`.
pub const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;
const NODE_PORT_RANGE_TEXT: &str = "30000-32767";

/// The store's name for Services.
const SERVICES: &str = "core/services";

/// Allocates Services' cluster IPs (from the service CIDR) and node ports.
pub struct Allocator {
    cidr: ServiceCidr,
    turn: Mutex<()>,
}

/// The right to allocate: held from reading what is in use until the
/// object that took an address or port is stored.
pub struct Turn<'a> {
    _held: MutexGuard<'a, ()>,
}

impl Allocator {
    pub fn new(cidr: ServiceCidr) -> Allocator {
        Allocator { cidr, turn: Mutex::new(()) }
    }

    pub fn cidr(&self) -> ServiceCidr {
        self.cidr
    }

    /// Waits for the turn to allocate (a panicked holder wrote nothing:
    /// its poison is ignored).
    pub fn turn(&self) -> Turn<'_> {
        Turn { _held: self.turn.lock().unwrap_or_else(|p| p.into_inner()) }
    }
}

/// Why an address or port could not be had; `Display` is the allocator's
/// own message kube-apiserver embeds in its errors.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AllocationError {
    #[error("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}")]
    IpNotInRange { ip: Ipv4Addr, cidr: ServiceCidr },
    #[error("provided IP is already allocated")]
    IpAllocated,
    #[error("provided port is not in the valid range. The range of valid ports is {NODE_PORT_RANGE_TEXT}")]
    PortNotInRange,
    #[error("provided port is already allocated")]
    PortAllocated,
    #[error("range is full")]
    Full,
}

/// One range of numbered items, some taken; `reserved` of them at its start
/// are handed out only once the rest is gone (kube's static band, kept for
/// clients that pick their own, like a DNS Service at `.10`).
struct Pool {
    size: u32,
    reserved: u32,
    taken: HashSet<u32>,
}

/// kube's `calculateRangeOffset`: how much of a range of `range_size` is
/// the static band, min(max(min, range_size / step), max), none for tiny ranges.
fn static_band(range_size: u32, (min, step, max): (u32, u32, u32)) -> u32 {
    if range_size <= min {
        0
    } else {
        (range_size / step).clamp(min, max)
    }
}

impl Pool {
    fn new(size: u32, reserved: u32) -> Pool {
        Pool { size, reserved: reserved.min(size), taken: HashSet::new() }
    }

    fn claim(&mut self, index: u32) -> bool {
        self.taken.insert(index)
    }

    /// A random free item, from the dynamic band first.
    fn next(&mut self) -> Option<u32> {
        for (start, end) in [(self.reserved, self.size), (0, self.reserved)] {
            let length = end - start;
            if length == 0 {
                continue;
            }
            let first = random_below(length);
            let free = (0..length).map(|step| start + (first + step) % length).find(|i| !self.taken.contains(i));
            if let Some(index) = free {
                self.taken.insert(index);
                return Some(index);
            }
        }
        None
    }
}

fn random_below(bound: u32) -> u32 {
    let random = uuid::Uuid::new_v4().as_u128() % u128::from(bound);
    u32::try_from(random).unwrap_or_default()
}

/// What the stored Services other than the one being written hold, and
/// what this write has taken so far.
pub struct InUse {
    cidr: ServiceCidr,
    ips: Pool,
    node_ports: Pool,
}

impl InUse {
    /// Reads every stored Service but `except` (the one being written: what
    /// it holds now is its own to keep).
    pub fn read(store: &Store, cidr: ServiceCidr, except: &ObjectKey) -> Result<InUse, StoreError> {
        let mut in_use = InUse::nothing(cidr);
        let scope = Scope { resource: SERVICES.into(), namespace: None };
        let (services, _) = store.list(&scope)?;
        for (_, service) in services.iter().filter(|(key, _)| key != except) {
            in_use.note(service);
        }
        Ok(in_use)
    }

    /// Nothing taken yet. The static bands are kube's: for addresses sized
    /// by the whole network (network and broadcast addresses included).
    fn nothing(cidr: ServiceCidr) -> InUse {
        let port_count = u32::try_from(NODE_PORTS.end() - NODE_PORTS.start() + 1).unwrap_or_default();
        InUse {
            cidr,
            ips: Pool::new(cidr.usable(), static_band(cidr.usable() + 2, (16, 16, 256))),
            node_ports: Pool::new(port_count, static_band(port_count, (16, 32, 128))),
        }
    }

    /// Marks what a stored Service holds as taken (leniently: it may
    /// predate these rules).
    fn note(&mut self, service: &Value) {
        let spec = &service["spec"];
        let listed = spec["clusterIPs"].as_array().into_iter().flatten().filter_map(Value::as_str);
        for ip in listed.chain(spec["clusterIP"].as_str()) {
            if let Some(index) = ip.parse::<Ipv4Addr>().ok().and_then(|ip| self.cidr.index_of(ip)) {
                self.ips.claim(index);
            }
        }
        let ports = spec["ports"].as_array().into_iter().flatten().map(|p| &p["nodePort"]);
        for port in ports.chain([&spec["healthCheckNodePort"]]).filter_map(Value::as_i64) {
            if let Some(index) = node_port_index(port) {
                self.node_ports.claim(index);
            }
        }
    }

    /// Takes the address a client asked for.
    pub fn claim_ip(&mut self, address: Ipv4Addr) -> Result<(), AllocationError> {
        let cidr = self.cidr;
        let index = cidr.index_of(address).ok_or(AllocationError::IpNotInRange { ip: address, cidr })?;
        self.ips.claim(index).then_some(()).ok_or(AllocationError::IpAllocated)
    }

    /// A free address, picked at random.
    pub fn next_ip(&mut self) -> Result<Ipv4Addr, AllocationError> {
        self.ips.next().map(|index| self.cidr.address(index)).ok_or(AllocationError::Full)
    }

    /// Takes the node port a client asked for.
    pub fn claim_node_port(&mut self, port: i64) -> Result<(), AllocationError> {
        let index = node_port_index(port).ok_or(AllocationError::PortNotInRange)?;
        self.node_ports.claim(index).then_some(()).ok_or(AllocationError::PortAllocated)
    }

    /// A free node port, picked at random.
    pub fn next_node_port(&mut self) -> Result<i32, AllocationError> {
        let index = self.node_ports.next().ok_or(AllocationError::Full)?;
        Ok(NODE_PORTS.start() + i32::try_from(index).unwrap_or_default())
    }
}

fn node_port_index(port: i64) -> Option<u32> {
    let offset = port.checked_sub(i64::from(*NODE_PORTS.start()))?;
    (port <= i64::from(*NODE_PORTS.end())).then_some(())?;
    u32::try_from(offset).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn empty(cidr: &str) -> InUse {
        InUse::nothing(cidr.parse().unwrap())
    }

    #[test]
    fn random_addresses_fill_the_range_then_it_is_full() {
        let mut in_use = empty("10.0.0.0/28");
        let mut seen: Vec<Ipv4Addr> = (0..14).map(|_| in_use.next_ip().unwrap()).collect();
        seen.sort();
        let expected: Vec<Ipv4Addr> = (1..=14).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(seen, expected, "every address but network and broadcast, once");
        assert_eq!(in_use.next_ip(), Err(AllocationError::Full));
        assert_eq!(AllocationError::Full.to_string(), "range is full");
        assert_eq!(in_use.ips.reserved, 0, "a /28 has no static band");
    }

    #[test]
    fn dynamic_allocation_leaves_the_static_band_for_clients_that_pick() {
        let mut in_use = empty("10.96.0.0/16");
        assert_eq!(in_use.ips.reserved, 256);
        for _ in 0..200 {
            let ip = in_use.next_ip().unwrap();
            assert!(in_use.cidr.index_of(ip).unwrap() >= 256, "{ip} is in the static band");
        }
        assert_eq!(in_use.node_ports.reserved, 86);
    }

    #[test]
    fn explicit_requests_must_be_in_range_and_free() {
        let mut in_use = empty("10.96.0.0/16");
        let ip = |text: &str| text.parse::<Ipv4Addr>().unwrap();
        assert_eq!(in_use.claim_ip(ip("10.96.0.10")), Ok(()));
        assert_eq!(in_use.claim_ip(ip("10.96.0.10")), Err(AllocationError::IpAllocated));
        let error = in_use.claim_ip(ip("1.2.3.4")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the provided IP (1.2.3.4) is not in the valid range. The range of valid IPs is 10.96.0.0/16"
        );
        assert!(in_use.claim_ip(ip("10.96.0.0")).is_err(), "the network address");
        assert!(in_use.claim_ip(ip("10.96.255.255")).is_err(), "the broadcast address");
        assert_eq!(in_use.claim_node_port(30080), Ok(()));
        assert_eq!(in_use.claim_node_port(30080), Err(AllocationError::PortAllocated));
        assert_eq!(in_use.claim_node_port(80), Err(AllocationError::PortNotInRange));
        assert_eq!(in_use.claim_node_port(32768), Err(AllocationError::PortNotInRange));
        assert_eq!(in_use.claim_node_port(32767), Ok(()));
    }

    #[test]
    fn stored_services_hold_their_addresses_and_ports() {
        let mut in_use = empty("10.96.0.0/16");
        in_use.note(&json!({"spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"],
            "ports": [{"port": 80, "nodePort": 30080}], "healthCheckNodePort": 30999}}));
        in_use.note(&json!({"spec": {"clusterIP": "None", "ports": "garbage"}}));
        assert_eq!(in_use.claim_ip(Ipv4Addr::new(10, 96, 0, 5)), Err(AllocationError::IpAllocated));
        assert_eq!(in_use.claim_node_port(30080), Err(AllocationError::PortAllocated));
        assert_eq!(in_use.claim_node_port(30999), Err(AllocationError::PortAllocated));
        assert_eq!(in_use.claim_node_port(30081), Ok(()));
    }
}
