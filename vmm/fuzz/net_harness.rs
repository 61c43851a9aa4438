// The virtio-net fuzz harness, shared by the cargo-fuzz target
// (vmm/fuzz/fuzz_targets/net_queues.rs) and the corpus test that runs in CI
// (vmm/tests/net_fuzz_corpus.rs).
//
// The input is what a hostile guest controls: the transmit and receive
// queues' descriptor tables and available rings, and guest memory (the frames
// it transmits, DHCP requests among them, and where its receive buffers
// point); an even-length input negotiates MRG_RXBUF. Two frames wait in the
// backend (one small, one larger than a page). The datapath must return every
// transmit chain or ask for a reset, never use more receive chains than were
// offered, never panic, and never hold more than `MAX_HEAP_BYTES` of heap
// while it serves the queues, whatever lengths the guest wrote.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::irq::IrqLine;
use vmm::devices::virtio::net::{Backend, Datapath};
use vmm::devices::virtio::Interrupt;
use vmm::dhcp::DhcpResponder;
use vmm::{DhcpLease, MacAddr};

// A counting `GlobalAlloc` is `unsafe` by nature (vmm is where `unsafe` may live).
#[allow(unsafe_code)]
#[path = "heap.rs"]
mod heap;
use heap::peak_heap;

const MEMORY: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const TX_TABLE: u64 = 0x1000;
const TX_AVAIL: u64 = 0x1100;
const TX_USED: u64 = 0x1200;
const RX_TABLE: u64 = 0x1400;
const RX_AVAIL: u64 = 0x1500;
const RX_USED: u64 = 0x1600;
const GUEST_DATA: u64 = 0x2000;
pub const GUEST_MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0, 0, 1];

/// Heap the datapath may hold at once while serving both queues: its chain
/// lists, DHCP decoding and replies. Its two frame buffers are allocated
/// before (with the device) and do not count.
pub const MAX_HEAP_BYTES: usize = 64 << 10;

#[allow(dead_code)]
pub struct Outcome {
    pub tx_available: u16,
    pub tx_used: u16,
    pub rx_available: u16,
    pub rx_used: u16,
    pub needs_reset: bool,
    pub dhcp_replies: u64,
    pub rx_frames: u64,
    pub heap_bytes: usize,
}

fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array, which is large enough.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: both fds were just created and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn lease() -> DhcpLease {
    DhcpLease {
        address: [10, 0, 2, 2].into(),
        prefix_len: 24,
        router: [10, 0, 2, 1].into(),
        dns_servers: vec![[10, 96, 0, 10].into()],
        search_domains: vec!["default.svc.cluster.local".into()],
        hostname: Some("fuzz".into()),
        lease_seconds: 999 * 86400,
        ntp_servers: vec![],
        boot_file_name: None,
        tftp_server_name: None,
        private_options: vec![],
    }
}

fn queue(table: u64, avail: u64, used: u64) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_desc_table_address(Some(table as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_ready(true);
    queue
}

/// Writes one queue's descriptor table and available ring from `data`;
/// returns how many chains it made available and the rest of `data`.
fn place_queue<'a>(mem: &GuestMemoryMmap, data: &'a [u8], table: u64, avail: u64) -> (u16, &'a [u8]) {
    let (descs, rest) = data.split_at(data.len().min(16 * usize::from(QUEUE_SIZE)));
    mem.write_slice(descs, GuestAddress(table)).unwrap();
    let (ring, rest) = rest.split_at(rest.len().min(1 + 2 * usize::from(QUEUE_SIZE)));
    let available = u16::from(ring.first().copied().unwrap_or(0)) % (QUEUE_SIZE + 1);
    mem.write_obj(available, GuestAddress(avail + 2)).unwrap();
    if ring.len() > 1 {
        mem.write_slice(&ring[1..], GuestAddress(avail + 4)).unwrap();
    }
    (available, rest)
}

pub fn run(data: &[u8]) -> Outcome {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    let (tx_available, rest) = place_queue(&mem, data, TX_TABLE, TX_AVAIL);
    let (rx_available, guest) = place_queue(&mem, rest, RX_TABLE, RX_AVAIL);
    let guest = &guest[..guest.len().min(MEMORY - GUEST_DATA as usize)];
    mem.write_slice(guest, GuestAddress(GUEST_DATA)).unwrap();

    let (ours, theirs) = socket_pair();
    let backend = Arc::new(Backend::from_socket(ours).unwrap());
    let mut peer = std::fs::File::from(theirs);
    for len in [60usize, 5000] {
        let mut frame = vec![0u8; 12 + len];
        frame[12..18].copy_from_slice(&GUEST_MAC);
        frame[24..26].copy_from_slice(&0x88b5u16.to_be_bytes());
        peer.write_all(&frame).unwrap();
    }
    let dhcp = Some(Arc::new(DhcpResponder::new(MacAddr(GUEST_MAC), 1500, lease())));
    let interrupt = Arc::new(Interrupt::new(IrqLine::new().unwrap()));
    let mut datapath = Datapath::new(
        mem.clone(),
        queue(RX_TABLE, RX_AVAIL, RX_USED),
        queue(TX_TABLE, TX_AVAIL, TX_USED),
        interrupt,
        backend,
        dhcp,
        data.len() % 2 == 0,
    );
    let (result, heap_bytes) = peak_heap(|| -> Result<(), vmm::devices::virtio::net::QueueBroken> {
        while !datapath.process_tx()? {}
        datapath.process_rx()
    });
    let needs_reset = result.is_err();

    let tx_used: u16 = mem.read_obj(GuestAddress(TX_USED + 2)).unwrap();
    let rx_used: u16 = mem.read_obj(GuestAddress(RX_USED + 2)).unwrap();
    assert!(
        tx_used == tx_available || needs_reset,
        "used {tx_used} of {tx_available} transmit chains without asking for a reset"
    );
    assert!(tx_used <= tx_available && rx_used <= rx_available, "more chains used than offered");
    assert!(heap_bytes <= MAX_HEAP_BYTES, "the datapath held {heap_bytes} bytes of heap serving its queues");
    let counters = datapath.counters;
    Outcome {
        tx_available,
        tx_used,
        rx_available,
        rx_used,
        needs_reset,
        dhcp_replies: counters.dhcp_replies,
        rx_frames: counters.rx_frames,
        heap_bytes,
    }
}
