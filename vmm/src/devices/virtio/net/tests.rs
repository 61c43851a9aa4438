//! virtio-net fed chains directly, well-formed and hostile, through the same
//! datapath the worker thread runs, over a real SOCK_SEQPACKET socket pair.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::irq::IrqLine;
use crate::devices::virtio::guest_queue::GuestQueue;
use crate::dhcp::UdpFrame;
use crate::net_config::{DhcpLease, TapSource};

const MEM_SIZE: usize = 16 << 20;
const RX_QUEUE: u64 = 0x1000;
const TX_QUEUE: u64 = 0x8000;
const TX_BUF: u64 = 0x10_0000;
const RX_BUF: u64 = 0x40_0000;
const GUEST_MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0, 0, 1];

struct Rig {
    mem: GuestMemoryMmap,
    rx: GuestQueue,
    tx: GuestQueue,
    datapath: Datapath,
    /// The host end of the "tap".
    peer: std::fs::File,
}

fn queue_for(driver: &GuestQueue) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(driver.size);
    queue.set_desc_table_address(Some(driver.desc_table as u32), Some(0));
    queue.set_avail_ring_address(Some(driver.avail_ring as u32), Some(0));
    queue.set_used_ring_address(Some(driver.used_ring as u32), Some(0));
    queue.set_ready(true);
    queue
}

fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array, which is large enough.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (std::os::fd::FromRawFd::from_raw_fd(fds[0]), std::os::fd::FromRawFd::from_raw_fd(fds[1])) }
}

fn lease() -> DhcpLease {
    DhcpLease {
        address: "10.0.2.2".parse().unwrap(),
        prefix_len: 24,
        router: "10.0.2.1".parse().unwrap(),
        dns_servers: vec![],
        search_domains: vec![],
        hostname: Some("probe".into()),
        lease_seconds: 999 * 86400,
        ntp_servers: vec![],
        boot_file_name: None,
        tftp_server_name: None,
        private_options: vec![],
    }
}

fn rig(mergeable: bool, queue_size: u16) -> Rig {
    rig_with(mergeable, queue_size, false)
}

fn rig_with(mergeable: bool, queue_size: u16, event_idx: bool) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (rx, tx) = (GuestQueue::new(RX_QUEUE, queue_size), GuestQueue::new(TX_QUEUE, queue_size));
    let (mut rx_queue, mut tx_queue) = (queue_for(&rx), queue_for(&tx));
    rx_queue.set_event_idx(event_idx);
    tx_queue.set_event_idx(event_idx);
    let (ours, theirs) = socket_pair();
    let backend = Arc::new(Backend::from_socket(ours).unwrap());
    let dhcp = Some(Arc::new(DhcpResponder::new(MacAddr(GUEST_MAC), 1500, lease())));
    let interrupt = Arc::new(Interrupt::new(IrqLine::new().unwrap()));
    let datapath = Datapath::new(mem.clone(), rx_queue, tx_queue, interrupt, backend, dhcp, mergeable);
    let peer = std::fs::File::from(theirs);
    Rig { mem, rx, tx, datapath, peer }
}

/// An Ethernet frame of `len` bytes from the guest, with a recognisable payload.
fn ethernet(len: usize) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    frame[6..12].copy_from_slice(&GUEST_MAC);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental ethertype
    frame
}

fn with_header(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; VNET_HDR_LEN];
    out.extend_from_slice(frame);
    out
}

fn peer_read(peer: &mut std::fs::File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let fd = std::os::fd::AsRawFd::as_raw_fd(peer);
    // SAFETY: a non-blocking recv into a buffer of the length given.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

impl Rig {
    /// Queues `bytes` for transmission as one readable chain split in `pieces`.
    fn send(&mut self, bytes: &[u8], pieces: usize) {
        self.mem.write_slice(bytes, GuestAddress(TX_BUF)).unwrap();
        let step = bytes.len().div_ceil(pieces);
        let chain: Vec<(u64, u32, bool)> = (0..bytes.len())
            .step_by(step)
            .map(|at| (TX_BUF + at as u64, step.min(bytes.len() - at) as u32, false))
            .collect();
        self.tx.add_chain(&self.mem, &chain);
    }

    /// Offers `count` receive buffers of `len` bytes each, one chain each.
    fn offer_rx(&mut self, count: usize, len: u32) {
        for i in 0..count {
            self.rx.add_chain(&self.mem, &[(RX_BUF + i as u64 * 0x1_0000, len, true)]);
        }
    }

    fn rx_buffer(&self, index: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(RX_BUF + index * 0x1_0000)).unwrap();
        out
    }
}

#[test]
fn transmitted_frames_reach_the_backend_with_their_header() {
    let mut rig = rig(false, 16);
    let bytes = with_header(&ethernet(1514));
    rig.send(&bytes, 3);
    assert!(rig.datapath.process_tx().unwrap());
    assert_eq!(peer_read(&mut rig.peer).unwrap(), bytes);
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    assert_eq!(rig.tx.used(&rig.mem, 0).1, 0, "transmit buffers are returned with nothing written");
    assert_eq!(rig.datapath.counters.tx_frames, 1);
}

#[test]
fn a_large_frame_goes_out_straight_from_guest_memory_whole() {
    let mut rig = rig(false, 16);
    // TSO-sized, over several descriptors: written with one writev, not copied.
    let bytes = with_header(&ethernet(60_000));
    rig.send(&bytes, 5);
    // One large chain partly outside guest memory is dropped, not sent in part.
    rig.tx.add_chain(&rig.mem, &[(TX_BUF, 8192, false), (MEM_SIZE as u64 - 10, 8192, false)]);
    assert!(rig.datapath.process_tx().unwrap());
    assert_eq!(peer_read(&mut rig.peer).unwrap(), bytes);
    assert!(peer_read(&mut rig.peer).is_none(), "the broken chain sent nothing");
    assert_eq!((rig.datapath.counters.tx_frames, rig.datapath.counters.tx_dropped), (1, 1));
    assert_eq!(rig.tx.used_idx(&rig.mem), 2);
}

#[test]
fn received_frames_fill_one_buffer_with_num_buffers_1() {
    let mut rig = rig(false, 16);
    let bytes = with_header(&ethernet(60));
    rig.peer.write_all(&bytes).unwrap();
    rig.offer_rx(1, 2048);
    rig.datapath.process_rx().unwrap();
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    assert_eq!(rig.rx.used(&rig.mem, 0).1, bytes.len() as u32);
    let got = rig.rx_buffer(0, bytes.len());
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    assert_eq!(&got[VNET_HDR_LEN..], &bytes[VNET_HDR_LEN..]);
}

#[test]
fn mergeable_buffers_carry_a_large_frame_across_chains() {
    let mut rig = rig(true, 16);
    let bytes = with_header(&ethernet(2988));
    rig.peer.write_all(&bytes).unwrap();
    rig.offer_rx(3, 1500);
    rig.datapath.process_rx().unwrap();
    assert_eq!(rig.rx.used_idx(&rig.mem), 2, "two buffers, the third is left for the next frame");
    assert_eq!((rig.rx.used(&rig.mem, 0).1, rig.rx.used(&rig.mem, 1).1), (1500, 1500));
    let mut got = rig.rx_buffer(0, 1500);
    got.extend(rig.rx_buffer(1, 1500));
    assert_eq!(&got[10..12], &2u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &bytes[VNET_HDR_LEN..]);
}

#[test]
fn a_frame_waits_for_buffers_and_is_then_delivered() {
    let mut rig = rig(true, 16);
    let bytes = with_header(&ethernet(2988));
    rig.peer.write_all(&bytes).unwrap();
    rig.offer_rx(1, 1500); // not enough: nothing may be consumed
    rig.datapath.process_rx().unwrap();
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert!(!rig.datapath.wants_backend_input(), "the frame is held, the backend not read further");
    rig.offer_rx(2, 1500);
    rig.datapath.process_rx().unwrap();
    assert_eq!(rig.rx.used_idx(&rig.mem), 2);
    assert!(rig.datapath.wants_backend_input());
}

#[test]
fn with_buffers_for_the_largest_frame_frames_land_in_order_and_spare_chains_wait() {
    let mut rig = rig(true, 32);
    rig.offer_rx(32, 4096); // 128 KiB: room for a 64 KiB frame, so each is read in place
    let (first, second) = (with_header(&ethernet(5000)), with_header(&ethernet(60)));
    rig.peer.write_all(&first).unwrap();
    rig.peer.write_all(&second).unwrap();
    rig.datapath.process_rx().unwrap();
    assert_eq!(rig.rx.used_idx(&rig.mem), 3, "two chains for the first frame, one for the second");
    let used: Vec<(u32, u32)> = (0..3).map(|n| rig.rx.used(&rig.mem, n)).collect();
    assert_eq!(used, [(0, 4096), (1, first.len() as u32 - 4096), (2, second.len() as u32)]);
    let mut got = rig.rx_buffer(0, 4096);
    got.extend(rig.rx_buffer(1, first.len() - 4096));
    assert_eq!(&got[10..12], &2u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &first[VNET_HDR_LEN..]);
    let got = rig.rx_buffer(2, second.len());
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    assert_eq!(&got[VNET_HDR_LEN..], &second[VNET_HDR_LEN..]);
    // The chains held but not used serve the next frame, in ring order.
    rig.peer.write_all(&second).unwrap();
    rig.datapath.process_rx().unwrap();
    assert_eq!(rig.rx.used(&rig.mem, 3), (3, second.len() as u32));
    assert_eq!(rig.datapath.counters.rx_frames, 3);
}

#[test]
fn without_buffers_the_backend_is_not_read_until_the_guest_adds_some() {
    let mut rig = rig(false, 16);
    let bytes = with_header(&ethernet(1000));
    rig.peer.write_all(&bytes).unwrap();
    rig.datapath.process_rx().unwrap();
    assert!(!rig.datapath.wants_backend_input(), "polling the backend now would spin");
    assert_eq!(rig.datapath.counters, NetCounters::default(), "the frame is still in the backend");
    rig.offer_rx(2, 2048);
    rig.datapath.process_rx().unwrap();
    assert!(rig.datapath.wants_backend_input(), "a buffer is left for the next frame");
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, bytes.len() as u32));
    assert_eq!(&rig.rx_buffer(0, bytes.len())[VNET_HDR_LEN..], &bytes[VNET_HDR_LEN..]);
}

#[test]
fn tiny_receive_chains_are_held_up_to_a_bound_and_a_frame_they_cannot_hold_is_dropped() {
    let mut rig = rig(true, 256);
    // 256 chains of 16 bytes: at most 256 segments (4 KiB) are held at once.
    for i in 0..256u64 {
        rig.rx.add_chain(&rig.mem, &[(RX_BUF + i * 16, 16, true)]);
    }
    let small = with_header(&ethernet(100));
    rig.peer.write_all(&with_header(&ethernet(5000))).unwrap();
    rig.peer.write_all(&small).unwrap();
    rig.datapath.process_rx().unwrap();
    let chains_per_small = small.len().div_ceil(16) as u16;
    assert_eq!(rig.rx.used_idx(&rig.mem), chains_per_small, "the large frame used no chain");
    assert_eq!((rig.datapath.counters.rx_frames, rig.datapath.counters.rx_dropped), (1, 1));
    let mut got = Vec::new();
    for n in 0..u64::from(chains_per_small) {
        let mut chunk = vec![0u8; 16];
        rig.mem.read_slice(&mut chunk, GuestAddress(RX_BUF + n * 16)).unwrap();
        got.extend(chunk);
    }
    assert_eq!(&got[10..12], &chains_per_small.to_le_bytes(), "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..small.len()], &small[VNET_HDR_LEN..]);
}

#[test]
fn dhcp_is_answered_inside_and_never_reaches_the_backend() {
    let mut rig = rig(false, 16);
    let mut discover = Message::new_with_id(7, [0; 4].into(), [0; 4].into(), [0; 4].into(), [0; 4].into(), &GUEST_MAC);
    discover.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    let payload = discover.to_vec().unwrap();
    let frame = UdpFrame {
        src_mac: GUEST_MAC,
        dst_mac: [0xff; 6],
        src_ip: [0, 0, 0, 0].into(),
        dst_ip: [255, 255, 255, 255].into(),
        src_port: 68,
        dst_port: 67,
        payload: &payload,
    }
    .encode();
    rig.send(&with_header(&frame), 1);
    rig.datapath.process_tx().unwrap();
    assert!(peer_read(&mut rig.peer).is_none(), "the DHCP request went to the tap");
    rig.offer_rx(1, 2048);
    rig.datapath.process_rx().unwrap();
    let len = rig.rx.used(&rig.mem, 0).1 as usize;
    let reply = rig.rx_buffer(0, len);
    let udp = UdpFrame::decode(&reply[VNET_HDR_LEN..]).unwrap();
    let offer = Message::decode(&mut Decoder::new(udp.payload)).unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), std::net::Ipv4Addr::new(10, 0, 2, 2));
}

#[test]
fn hostile_transmit_chains_lose_their_frame_only() {
    let mut rig = rig(false, 16);
    // A device-writable descriptor in a transmit chain.
    rig.tx.add_chain(&rig.mem, &[(TX_BUF, 100, true)]);
    // Shorter than a header and an Ethernet header.
    rig.tx.add_chain(&rig.mem, &[(TX_BUF, (MIN_TX_LEN - 1) as u32, false)]);
    // Longer than any frame, in one descriptor and in many.
    rig.tx.add_chain(&rig.mem, &[(TX_BUF, u32::MAX, false)]);
    rig.tx.add_chain(&rig.mem, &[(TX_BUF, 65536, false), (TX_BUF, 65536, false)]);
    // Outside guest memory.
    rig.tx.add_chain(&rig.mem, &[(MEM_SIZE as u64 - 10, 100, false)]);
    assert!(rig.datapath.process_tx().unwrap());
    assert_eq!(rig.tx.used_idx(&rig.mem), 5, "every buffer is returned");
    assert_eq!(rig.datapath.counters.tx_dropped, 5);
    assert!(peer_read(&mut rig.peer).is_none());
    // The queue still works afterwards.
    let bytes = with_header(&ethernet(100));
    rig.send(&bytes, 1);
    rig.datapath.process_tx().unwrap();
    assert_eq!(peer_read(&mut rig.peer).unwrap(), bytes);
}

#[test]
fn hostile_receive_chains_are_returned_unused() {
    for (chain, mergeable) in [
        (vec![(RX_BUF, 2048, false)], false),                  // device-readable
        (vec![(MEM_SIZE as u64 - 100, 2048, true)], false),    // outside guest memory
        (vec![(RX_BUF, 64, true)], false),                     // too small without MRG_RXBUF
        (vec![(RX_BUF, 4, true)], true),                       // smaller than the header
        (vec![(RX_BUF, 32, true), (RX_BUF, 32, false)], true), // readable after writable
    ] {
        let mut rig = rig(mergeable, 16);
        rig.peer.write_all(&with_header(&ethernet(1000))).unwrap();
        rig.rx.add_chain(&rig.mem, &chain);
        rig.datapath.process_rx().unwrap();
        assert_eq!(rig.rx.used_idx(&rig.mem), 1, "{chain:x?}");
        assert_eq!(rig.rx.used(&rig.mem, 0).1, 0, "{chain:x?}");
        assert_eq!(rig.datapath.counters.rx_dropped, 1);
    }
}

#[test]
fn a_corrupt_available_index_needs_a_reset_instead_of_a_panic() {
    let mut rig = rig(false, 16);
    rig.mem.write_obj(1000u16, GuestAddress(rig.tx.avail_ring + 2)).unwrap();
    assert!(rig.datapath.process_tx().is_err());
}

#[test]
fn config_space_has_mac_link_up_and_mtu() {
    let (ours, _theirs) = socket_pair();
    let config = NetConfig { tap: TapSource::Fd(0), mac: MacAddr(GUEST_MAC), mtu: 1400, dhcp: None };
    let net = Net::with_backend(Backend::from_socket(ours).unwrap(), &config);
    let mut bytes = [0xffu8; 16];
    net.read_config(0, &mut bytes);
    assert_eq!(&bytes[..6], &GUEST_MAC);
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), VIRTIO_NET_S_LINK_UP as u16);
    let mtu_at = std::mem::offset_of!(virtio_bindings::virtio_net::virtio_net_config, mtu);
    assert_eq!(u16::from_le_bytes([bytes[mtu_at], bytes[mtu_at + 1]]), 1400);
    assert_eq!(&bytes[12..], &[0; 4], "bytes past the fields read as zero");
    assert_eq!(net.features() & FEATURES, FEATURES);
}

#[test]
fn guest_offloads_map_to_tun_flags() {
    assert_eq!(tap_offload(0), 0);
    assert_eq!(tap_offload(bit(VIRTIO_NET_F_GUEST_TSO4)), 0, "TSO without checksum offload is not offered");
    let all = bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6);
    assert_eq!(tap_offload(all), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
}

/// The whole device behind its MMIO transport: the driver's register writes
/// activate it, its worker thread moves a frame each way, and a
/// reset stops the worker.
#[test]
fn activated_through_the_transport_the_worker_moves_frames_both_ways() {
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::BusDevice;
    use std::time::{Duration, Instant};

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let (ours, theirs) = socket_pair();
    let mut peer = std::fs::File::from(theirs);
    let config = NetConfig { tap: TapSource::Fd(0), mac: MacAddr(GUEST_MAC), mtu: 1500, dhcp: Some(lease()) };
    let net = Net::with_backend(Backend::from_socket(ours).unwrap(), &config);
    let mut t = MmioTransport::new(Box::new(net), mem.clone(), IrqLine::new().unwrap()).unwrap();
    let write = |t: &mut MmioTransport, offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
    let (mut rx, mut tx) = (GuestQueue::new(RX_QUEUE, 16), GuestQueue::new(TX_QUEUE, 16));
    write(&mut t, 0x70, 1);
    write(&mut t, 0x70, 3);
    let features = FEATURES & !bit(VIRTIO_RING_F_EVENT_IDX);
    write(&mut t, 0x24, 0);
    write(&mut t, 0x20, features as u32);
    write(&mut t, 0x24, 1);
    write(&mut t, 0x20, (features >> 32) as u32);
    write(&mut t, 0x70, 11);
    for (index, q) in [(0u32, &rx), (1, &tx)] {
        write(&mut t, 0x30, index);
        write(&mut t, 0x38, 16);
        write(&mut t, 0x80, q.desc_table as u32);
        write(&mut t, 0x90, q.avail_ring as u32);
        write(&mut t, 0xa0, q.used_ring as u32);
        write(&mut t, 0x44, 1);
    }
    write(&mut t, 0x70, 15);
    let mut status = [0u8; 4];
    t.read(0x70, &mut status);
    assert_eq!(u32::from_le_bytes(status), 15, "DRIVER_OK without DEVICE_NEEDS_RESET");
    let notifiers: Vec<_> = t.queue_notifiers().map(|(_, _, evt)| evt.try_clone().unwrap()).collect();

    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "the worker never {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Host to guest: a frame waiting in the backend lands in an offered buffer.
    rx.add_chain(&mem, &[(RX_BUF, 2048, true)]);
    notifiers[0].write(1).unwrap();
    let incoming = with_header(&ethernet(200));
    peer.write_all(&incoming).unwrap();
    wait_for("delivered the frame", &|| rx.used_idx(&mem) == 1);
    assert_eq!(rx.used(&mem, 0).1 as usize, incoming.len());
    // Guest to host.
    let outgoing = with_header(&ethernet(300));
    mem.write_slice(&outgoing, GuestAddress(TX_BUF)).unwrap();
    tx.add_chain(&mem, &[(TX_BUF, outgoing.len() as u32, false)]);
    notifiers[1].write(1).unwrap();
    wait_for("transmitted the frame", &|| tx.used_idx(&mem) == 1);
    assert_eq!(peer_read(&mut peer).unwrap(), outgoing);
    assert_ne!(t.interrupt().status() & 1, 0, "the driver was interrupted");
    write(&mut t, 0x70, 0); // reset: joins the worker
    assert_eq!(t.status(), 0);
}

/// With EVENT_IDX the device publishes where it wants the next kick
/// (avail_event, after the used ring) and interrupts only past used_event.
#[test]
fn event_idx_asks_for_the_next_kick_and_frames_still_flow() {
    let mut rig = rig_with(false, 16, true);
    for n in 1..=3u16 {
        let bytes = with_header(&ethernet(100));
        rig.send(&bytes, 1);
        assert!(rig.datapath.process_tx().unwrap());
        assert_eq!(peer_read(&mut rig.peer).unwrap(), bytes);
        assert_eq!(rig.tx.used_idx(&rig.mem), n);
        let avail_event: u16 = rig.mem.read_obj(GuestAddress(rig.tx.used_ring + 4 + 8 * 16)).unwrap();
        assert_eq!(avail_event, n, "the next kick is asked for at the next available index");
    }
    let bytes = with_header(&ethernet(60));
    rig.peer.write_all(&bytes).unwrap();
    rig.offer_rx(1, 2048);
    rig.datapath.process_rx().unwrap();
    assert_eq!(rig.rx.used(&rig.mem, 0).1 as usize, bytes.len());
}
