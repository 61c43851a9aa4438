//! The guest's DHCP server, inside the VMM, as KubeVirt's masquerade binding
//! runs one inside virt-launcher: the guest's DHCP frames never reach the tap;
//! replies are injected into its receive queue. It serves one lease to one MAC.

mod frame;

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Name};

pub use frame::{internet_checksum, UdpFrame, ETHERNET_HEADER_LEN};

use crate::net_config::{DhcpLease, MacAddr};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// The source MAC of replies: KubeVirt's in-pod bridge `k6t-eth0`, which owns
/// the router address in the masquerade layout.
pub const SERVER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0]);
/// DHCP messages are at most 576 bytes unless the client says otherwise; the
/// guest's requests are bounded by the frame anyway.
const MAX_MESSAGE_LEN: usize = 1500;

/// Answers one guest's DHCP with one lease.
pub struct DhcpResponder {
    mac: MacAddr,
    mtu: u16,
    lease: DhcpLease,
}

/// What the frame asked for, once decoded.
enum Reply {
    Offer,
    Ack,
    Nak,
}

impl DhcpResponder {
    pub fn new(mac: MacAddr, mtu: u16, lease: DhcpLease) -> Self {
        DhcpResponder { mac, mtu, lease }
    }

    /// Whether `frame` is addressed to a DHCP server (and so is this
    /// responder's to answer or drop, never the tap's).
    pub fn is_dhcp_request(frame: &[u8]) -> bool {
        UdpFrame::decode(frame).is_some_and(|udp| udp.dst_port == SERVER_PORT)
    }

    /// The reply frame to a DHCP client frame from the guest, if it deserves
    /// one: DISCOVER → OFFER, REQUEST → ACK (NAK for another address),
    /// INFORM → ACK without a lease. Anything else, including requests from
    /// another MAC, gets nothing.
    pub fn answer(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let udp = UdpFrame::decode(frame)?;
        if udp.dst_port != SERVER_PORT || udp.src_port != CLIENT_PORT || udp.payload.len() > MAX_MESSAGE_LEN {
            return None;
        }
        let request = Message::decode(&mut Decoder::new(udp.payload)).ok()?;
        // `chaddr()` panics on a hardware address length over 16: check it first.
        if request.hlen() != 6 {
            return None;
        }
        if request.opcode() != Opcode::BootRequest
            || request.chaddr().get(..6)? != self.mac.0
            || udp.src_mac != self.mac.0
        {
            return None;
        }
        let server_id = match request.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(id)) => Some(*id),
            _ => None,
        };
        let reply = match request.opts().msg_type()? {
            MessageType::Discover => Reply::Offer,
            // A REQUEST naming another server is the client choosing that one.
            MessageType::Request if server_id.is_some_and(|id| id != self.lease.router) => return None,
            MessageType::Request => {
                let requested = match request.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                    _ => request.ciaddr(),
                };
                if requested == self.lease.address {
                    Reply::Ack
                } else {
                    Reply::Nak
                }
            }
            MessageType::Inform => return Some(self.frame(&request, self.inform_ack(&request))),
            _ => return None,
        };
        let message = match reply {
            Reply::Offer => self.lease_message(&request, MessageType::Offer),
            Reply::Ack => self.lease_message(&request, MessageType::Ack),
            Reply::Nak => self.nak(&request),
        };
        Some(self.frame(&request, message))
    }

    fn reply_to(&self, request: &Message, yiaddr: Ipv4Addr) -> Message {
        let mut reply = Message::new_with_id(
            request.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            request.giaddr(),
            &self.mac.0,
        );
        reply.set_opcode(Opcode::BootReply).set_flags(request.flags());
        reply
    }

    fn lease_message(&self, request: &Message, kind: MessageType) -> Message {
        let mut reply = self.reply_to(request, self.lease.address);
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.lease.router));
        opts.insert(DhcpOption::AddressLeaseTime(self.lease.lease_seconds));
        self.insert_configuration(&mut reply);
        reply
    }

    /// INFORM: the configuration without a lease (RFC 2131, 3.4).
    fn inform_ack(&self, request: &Message) -> Message {
        let mut reply = self.reply_to(request, Ipv4Addr::UNSPECIFIED);
        reply.set_ciaddr(request.ciaddr());
        reply.opts_mut().insert(DhcpOption::MessageType(MessageType::Ack));
        reply.opts_mut().insert(DhcpOption::ServerIdentifier(self.lease.router));
        self.insert_configuration(&mut reply);
        reply
    }

    fn nak(&self, request: &Message) -> Message {
        let mut reply = self.reply_to(request, Ipv4Addr::UNSPECIFIED);
        // A NAK is broadcast when the client has no address to be reached at.
        reply.set_flags(Flags::default().set_broadcast());
        reply.opts_mut().insert(DhcpOption::MessageType(MessageType::Nak));
        reply.opts_mut().insert(DhcpOption::ServerIdentifier(self.lease.router));
        reply
    }

    fn insert_configuration(&self, reply: &mut Message) {
        let lease = &self.lease;
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::SubnetMask(lease.netmask()));
        opts.insert(DhcpOption::Router(vec![lease.router]));
        opts.insert(DhcpOption::BroadcastAddr(lease.broadcast()));
        if !lease.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(lease.dns_servers.clone()));
        }
        // Names were validated with the config; one that hickory still refuses is left out.
        let search: Vec<Name> = lease.search_domains.iter().filter_map(|d| Name::from_ascii(fqdn(d)).ok()).collect();
        if !search.is_empty() {
            opts.insert(DhcpOption::DomainSearch(search));
        }
        if let Some(hostname) = &lease.hostname {
            opts.insert(DhcpOption::Hostname(hostname.clone()));
        }
        if !lease.ntp_servers.is_empty() {
            opts.insert(DhcpOption::NtpServers(lease.ntp_servers.clone()));
        }
        if let Some(name) = &lease.tftp_server_name {
            opts.insert(DhcpOption::TFTPServerName(name.as_bytes().to_vec()));
        }
        if let Some(name) = &lease.boot_file_name {
            opts.insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
        }
        for private in &lease.private_options {
            let code = OptionCode::from(private.option);
            opts.insert(DhcpOption::Unknown(UnknownOption::new(code, private.value.as_bytes().to_vec())));
        }
        opts.insert(DhcpOption::InterfaceMtu(self.mtu));
    }

    /// Wraps `message` in UDP/IPv4/Ethernet, addressed as RFC 2131 4.1 says.
    fn frame(&self, request: &Message, message: Message) -> Vec<u8> {
        let payload = message.to_vec().unwrap_or_default();
        let broadcast = message.flags().broadcast();
        let (dst_ip, dst_mac) = if !request.giaddr().is_unspecified() {
            (request.giaddr(), self.mac.0) // through a relay: not in this topology, answered anyway
        } else if !request.ciaddr().is_unspecified() {
            (request.ciaddr(), self.mac.0)
        } else if broadcast {
            (Ipv4Addr::BROADCAST, [0xff; 6])
        } else {
            (message.yiaddr(), self.mac.0)
        };
        UdpFrame {
            src_mac: SERVER_MAC.0,
            dst_mac,
            src_ip: self.lease.router,
            dst_ip,
            src_port: SERVER_PORT,
            dst_port: CLIENT_PORT,
            payload: &payload,
        }
        .encode()
    }
}

fn fqdn(domain: &str) -> String {
    if domain.ends_with('.') {
        domain.to_string()
    } else {
        format!("{domain}.")
    }
}

#[cfg(test)]
mod tests;
