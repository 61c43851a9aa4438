//! The little of Ethernet, IPv4 and UDP the DHCP responder needs: decode a
//! guest's frame (every length checked against the bytes present), encode a
//! reply with correct checksums.

use std::net::Ipv4Addr;

pub const ETHERNET_HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const IPV4_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
const IPPROTO_UDP: u8 = 17;

/// A UDP datagram in an IPv4 packet in an Ethernet frame, borrowed from the frame.
#[derive(Debug, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn ip(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(<[u8; 4]>::try_from(bytes.get(at..at + 4)?).ok()?))
}

impl<'a> UdpFrame<'a> {
    /// None unless `frame` is an untagged Ethernet frame with an unfragmented
    /// IPv4/UDP datagram whose lengths fit the bytes present.
    pub fn decode(frame: &'a [u8]) -> Option<Self> {
        if be16(frame, 12)? != ETHERTYPE_IPV4 {
            return None;
        }
        let packet = &frame[ETHERNET_HEADER_LEN..];
        let version_ihl = *packet.first()?;
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || header_len < IPV4_HEADER_LEN || packet.len() < header_len {
            return None;
        }
        let total_len = usize::from(be16(packet, 2)?);
        let fragment = be16(packet, 6)?;
        if total_len < header_len + UDP_HEADER_LEN || total_len > packet.len() || fragment & 0x3fff != 0 {
            return None; // short, truncated, or a fragment
        }
        if packet[9] != IPPROTO_UDP {
            return None;
        }
        let udp = &packet[header_len..total_len];
        let udp_len = usize::from(be16(udp, 4)?);
        if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
            return None;
        }
        Some(UdpFrame {
            dst_mac: frame[0..6].try_into().ok()?,
            src_mac: frame[6..12].try_into().ok()?,
            src_ip: ip(packet, 12)?,
            dst_ip: ip(packet, 16)?,
            src_port: be16(udp, 0)?,
            dst_port: be16(udp, 2)?,
            payload: &udp[UDP_HEADER_LEN..udp_len],
        })
    }

    /// The frame's bytes, with the IPv4 header and UDP checksums filled in.
    pub fn encode(&self) -> Vec<u8> {
        let udp_len = UDP_HEADER_LEN + self.payload.len();
        let total_len = IPV4_HEADER_LEN + udp_len;
        let mut out = Vec::with_capacity(ETHERNET_HEADER_LEN + total_len);
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_start = out.len();
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&(total_len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]); // id, DF, TTL, proto, checksum
        out.extend_from_slice(&self.src_ip.octets());
        out.extend_from_slice(&self.dst_ip.octets());
        let checksum = internet_checksum(0, &out[ip_start..]);
        out[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
        let udp_start = out.len();
        out.extend_from_slice(&self.src_port.to_be_bytes());
        out.extend_from_slice(&self.dst_port.to_be_bytes());
        out.extend_from_slice(&(udp_len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(self.payload);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src_ip.octets());
        pseudo.extend_from_slice(&self.dst_ip.octets());
        pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
        pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
        let sum = checksum_add(checksum_add(0, &pseudo), &out[udp_start..]);
        let udp_checksum = match !fold(sum) {
            0 => 0xffff, // 0 means "no checksum" in UDP
            c => c,
        };
        out[udp_start + 6..udp_start + 8].copy_from_slice(&udp_checksum.to_be_bytes());
        out
    }
}

fn checksum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// RFC 1071's one's-complement sum, complemented.
pub fn internet_checksum(initial: u32, bytes: &[u8]) -> u16 {
    !fold(checksum_add(initial, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        UdpFrame {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [0xff; 6],
            src_ip: Ipv4Addr::UNSPECIFIED,
            dst_ip: Ipv4Addr::BROADCAST,
            src_port: 68,
            dst_port: 67,
            payload: b"hello",
        }
        .encode()
    }

    #[test]
    fn encode_then_decode_round_trips_with_valid_checksums() {
        let frame = sample();
        let udp = UdpFrame::decode(&frame).unwrap();
        assert_eq!((udp.src_port, udp.dst_port, udp.payload), (68, 67, &b"hello"[..]));
        assert_eq!(internet_checksum(0, &frame[14..34]), 0, "the IPv4 header sums to zero");
        let mut pseudo = vec![0, 0, 0, 0, 255, 255, 255, 255, 0, 17];
        pseudo.extend_from_slice(&13u16.to_be_bytes());
        assert_eq!(internet_checksum(checksum_add(0, &pseudo), &frame[34..]), 0, "the UDP datagram sums to zero");
    }

    #[test]
    fn truncated_or_lying_frames_are_not_decoded() {
        let frame = sample();
        for len in 0..frame.len() {
            assert!(UdpFrame::decode(&frame[..len]).is_none(), "a frame cut at {len} bytes decoded");
        }
        let mut lying = frame.clone();
        lying[14 + 2..14 + 4].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(UdpFrame::decode(&lying).is_none(), "an IPv4 length past the frame");
        let mut lying = frame.clone();
        lying[34 + 4..34 + 6].copy_from_slice(&200u16.to_be_bytes());
        assert!(UdpFrame::decode(&lying).is_none(), "a UDP length past the packet");
        let mut fragment = frame.clone();
        fragment[14 + 6] = 0x20; // more fragments
        assert!(UdpFrame::decode(&fragment).is_none());
        let mut tcp = frame;
        tcp[14 + 9] = 6;
        assert!(UdpFrame::decode(&tcp).is_none());
    }
}
