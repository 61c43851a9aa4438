//! Runs the virtio-net fuzz harness (vmm/fuzz/net_harness.rs) over a
//! deterministic corpus in every test run: a DHCP DISCOVER and a plain frame
//! to transmit with receive buffers offered, each byte of the queues
//! corrupted in turn, and pseudo-random inputs. `cargo +nightly fuzz run
//! net_queues` explores further.

// The harness makes its socket pair with libc (vmm is where `unsafe` may live).
#[allow(unsafe_code)]
#[path = "../fuzz/net_harness.rs"]
mod net_harness;

mod corpus;

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::Encodable;
use vmm::dhcp::UdpFrame;

const QUEUES: usize = 2 * (256 + 33);
const GUEST: usize = 0x2000;

/// Writes descriptor `i` of the descriptor table starting at `table` in the input.
fn desc(input: &mut [u8], table: usize, i: usize, addr: u64, len: u32, flags: u16) {
    let d = &mut input[table + i * 16..table + i * 16 + 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&0u16.to_le_bytes());
}

/// Two transmit chains (a DHCP DISCOVER and a plain frame, each behind a
/// 12-byte header) and three 2 KiB receive buffers.
fn seed(mergeable: bool) -> Vec<u8> {
    let mut discover =
        Message::new_with_id(9, [0; 4].into(), [0; 4].into(), [0; 4].into(), [0; 4].into(), &net_harness::GUEST_MAC);
    discover.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    let payload = discover.to_vec().unwrap();
    let dhcp = UdpFrame {
        src_mac: net_harness::GUEST_MAC,
        dst_mac: [0xff; 6],
        src_ip: [0, 0, 0, 0].into(),
        dst_ip: [255, 255, 255, 255].into(),
        src_port: 68,
        dst_port: 67,
        payload: &payload,
    }
    .encode();
    let mut input = vec![0u8; QUEUES + 0x800 + usize::from(!mergeable)];
    let (tx, rx) = (0, 256 + 33);
    // Guest memory from GUEST (0x2000) holds the input's tail: both frames go there.
    let tail = QUEUES;
    input[tail + 12..tail + 12 + dhcp.len()].copy_from_slice(&dhcp);
    let plain = 0x400;
    input[tail + plain + 12 + 6..tail + plain + 12 + 12].copy_from_slice(&net_harness::GUEST_MAC);
    desc(&mut input, tx, 0, GUEST as u64, (12 + dhcp.len()) as u32, 0);
    desc(&mut input, tx, 1, (GUEST + plain) as u64, 12 + 100, 0);
    input[tx + 256] = 2;
    input[tx + 256 + 1..tx + 256 + 5].copy_from_slice(&[0, 0, 1, 0]);
    for i in 0..3 {
        desc(&mut input, rx, i, 0x8000 + 0x1000 * i as u64, 2048, 2);
    }
    input[rx + 256] = 3;
    input[rx + 256 + 1..rx + 256 + 7].copy_from_slice(&[0, 0, 1, 0, 2, 0]);
    input
}

#[test]
fn well_formed_queues_and_every_single_byte_corruption() {
    for mergeable in [true, false] {
        let base = seed(mergeable);
        let outcome = net_harness::run(&base);
        assert_eq!((outcome.tx_available, outcome.tx_used, outcome.needs_reset), (2, 2, false));
        assert_eq!(outcome.dhcp_replies, 1, "the DISCOVER was answered");
        assert_eq!(outcome.rx_available, 3);
        assert!(outcome.rx_used >= 2, "the OFFER and the small frame were delivered");
        corpus::corrupt_each_byte(&base, 0..QUEUES, net_harness::run);
    }
}

#[test]
fn pseudo_random_inputs() {
    corpus::pseudo_random_inputs(1000, net_harness::run);
}
