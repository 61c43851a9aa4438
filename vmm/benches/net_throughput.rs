//! virtio-net device throughput without a guest, against the raw tap: frames
//! are placed in split queues in guest memory as a driver would, and moved by
//! the same datapath the device's worker runs; the same frames are then
//! written to (TX) or read from (RX) the same tap fd directly. Only the
//! device's processing (or the raw reads and writes) is timed, not the
//! driver's side. The bench moves itself into a network namespace of its own
//! (`unshare(CLONE_NEWNET)`, so it needs root) with one tap, `kvb0`, up.
//! RX frames are put in the tap's queue through an AF_PACKET socket
//! (PACKET_VNET_HDR), a round at a time. Known limit: on this kernel the
//! 64 KiB GSO frames sent that way reach the tap's queue already cut into
//! about 2 KiB pieces (the frame counts show it), so the "64 KiB TSO" RX row
//! measures those pieces, and the device side takes only ROUND of them per
//! round (one buffer each); compare its MB/s, not its byte totals.
//!
//! `cargo bench -p kvmlet-vmm --bench net_throughput`

// The raw side (AF_PACKET injection, unshare) is plain libc: `unsafe` stays in
// the vmm crate family, each block with its SAFETY comment.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::irq::IrqLine;
use vmm::devices::virtio::guest_queue::GuestQueue;
use vmm::devices::virtio::net::{tap_offload, Backend, Datapath, OFFLOAD_FEATURES, QUEUE_SIZE, VNET_HDR_LEN};
use vmm::devices::virtio::Interrupt;
use vmm::TapSource;

const TAP: &str = "kvb0";
const MEMORY: usize = 64 << 20;
const RX_QUEUE: u64 = 0x1000;
const TX_QUEUE: u64 = 0x8000;
const TX_FRAME: u64 = 0x10_0000;
const RX_BUFFERS: u64 = 0x20_0000;
const RX_BUFFER_LEN: u64 = 0x1_0020; // a whole TSO frame and its header
/// Frames per round: fewer than the queue size and the tap's queue.
const ROUND: usize = 128;
const ROUNDS_1500: usize = 400;
const ROUNDS_TSO: usize = 40;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

struct Frame {
    name: &'static str,
    /// virtio_net_hdr_v1 followed by the Ethernet frame.
    bytes: Vec<u8>,
}

/// An Ethernet/IPv4/TCP frame of `ip_len` bytes of IP packet to a MAC that is
/// not the tap's (the stack drops it early); with `tso`, a GSO frame the tap
/// segments (MSS 1448) with the checksum left to it.
fn frame(name: &'static str, ip_len: usize, tso: bool) -> Frame {
    let mut hdr = [0u8; VNET_HDR_LEN];
    if tso {
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
        hdr[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        hdr[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    }
    let mut bytes = hdr.to_vec();
    bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let mut ip = vec![0u8; ip_len];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&[192, 0, 2, 1]);
    ip[16..20].copy_from_slice(&[192, 0, 2, 2]);
    let mut sum = 0u32;
    for pair in ip[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&5201u16.to_be_bytes());
    ip[32] = 5 << 4; // data offset
    ip[33] = 0x18; // PSH, ACK
    ip[34..36].copy_from_slice(&65535u16.to_be_bytes());
    bytes.extend_from_slice(&ip);
    Frame { name, bytes }
}

fn queue_for(driver: &GuestQueue) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_desc_table_address(Some(driver.desc_table as u32), Some(0));
    queue.set_avail_ring_address(Some(driver.avail_ring as u32), Some(0));
    queue.set_used_ring_address(Some(driver.used_ring as u32), Some(0));
    queue.set_ready(true);
    queue
}

struct Rig {
    mem: GuestMemoryMmap,
    rx: GuestQueue,
    tx: GuestQueue,
    datapath: Datapath,
    backend: Arc<Backend>,
}

fn rig(backend: Arc<Backend>, mergeable: bool) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    let (rx, tx) = (GuestQueue::new(RX_QUEUE, QUEUE_SIZE), GuestQueue::new(TX_QUEUE, QUEUE_SIZE));
    let interrupt = Arc::new(Interrupt::new(IrqLine::new().unwrap()));
    let datapath =
        Datapath::new(mem.clone(), queue_for(&rx), queue_for(&tx), interrupt, backend.clone(), None, mergeable);
    Rig { mem, rx, tx, datapath, backend }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// An AF_PACKET socket on the tap that takes a virtio_net_hdr before each frame.
struct Injector(std::os::fd::OwnedFd);

impl Injector {
    fn new() -> Injector {
        // SAFETY: plain socket/setsockopt/bind calls with valid pointers and lengths.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let one: libc::c_int = 1;
            let rc = libc::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, (&one as *const i32).cast(), 4);
            assert_eq!(rc, 0, "PACKET_VNET_HDR");
            let name = std::ffi::CString::new(TAP).unwrap();
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind to {TAP}");
            Injector(std::os::fd::FromRawFd::from_raw_fd(fd))
        }
    }

    /// Sends `count` copies of `frame` out of the tap (into its read queue).
    fn send(&self, frame: &Frame, count: usize) {
        // The packet socket's header is the 10-byte virtio_net_hdr (no num_buffers).
        let bytes = [&frame.bytes[..10], &frame.bytes[VNET_HDR_LEN..]].concat();
        for _ in 0..count {
            // SAFETY: a send of a valid buffer of the given length.
            let n = unsafe { libc::send(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
            assert_eq!(n as usize, bytes.len(), "inject: {}", std::io::Error::last_os_error());
        }
    }
}

fn tx_device(rig: &mut Rig, frame: &Frame, rounds: usize) -> Duration {
    rig.mem.write_slice(&frame.bytes, GuestAddress(TX_FRAME)).unwrap();
    let mut elapsed = Duration::ZERO;
    for _ in 0..rounds {
        for _ in 0..ROUND {
            rig.tx.add_chain(&rig.mem, &[(TX_FRAME, frame.bytes.len() as u32, false)]);
        }
        let start = Instant::now();
        while !rig.datapath.process_tx().unwrap() {}
        elapsed += start.elapsed();
    }
    elapsed
}

fn tx_raw(backend: &Backend, frame: &Frame, rounds: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds * ROUND {
        use std::io::Write;
        let _ = backend.file().write(&frame.bytes);
    }
    start.elapsed()
}

/// Returns the time spent, the frames and the bytes (headers included) delivered.
fn rx_device(rig: &mut Rig, injector: &Injector, frame: &Frame, rounds: usize) -> (Duration, u64, u64) {
    let before = rig.datapath.counters;
    let mut elapsed = Duration::ZERO;
    let mut offered: u16 = 0;
    for _ in 0..rounds {
        // Keep ROUND buffers offered: the frames the stack sent on its own use some.
        let outstanding = offered.wrapping_sub(rig.rx.used_idx(&rig.mem));
        for i in outstanding..ROUND as u16 {
            let at = RX_BUFFERS + u64::from(i) * RX_BUFFER_LEN;
            rig.rx.add_chain(&rig.mem, &[(at, RX_BUFFER_LEN as u32, true)]);
            offered = offered.wrapping_add(1);
        }
        injector.send(frame, ROUND);
        let start = Instant::now();
        rig.datapath.process_rx().unwrap();
        elapsed += start.elapsed();
    }
    // Buffers left over (frames the tap dropped) do not matter: the next run has its own rig.
    let after = rig.datapath.counters;
    (elapsed, after.rx_frames - before.rx_frames, after.rx_bytes - before.rx_bytes)
}

fn rx_raw(backend: &Backend, injector: &Injector, frame: &Frame, rounds: usize) -> (Duration, u64, u64) {
    let mut buf = vec![0u8; 70_000];
    let (mut frames, mut bytes) = (0, 0);
    let mut elapsed = Duration::ZERO;
    for _ in 0..rounds {
        injector.send(frame, ROUND);
        let start = Instant::now();
        loop {
            use std::io::Read;
            match backend.file().read(&mut buf) {
                Ok(n) => {
                    frames += 1;
                    bytes += n as u64;
                }
                Err(_) => break,
            }
        }
        elapsed += start.elapsed();
    }
    (elapsed, frames, bytes)
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

fn main() {
    // SAFETY: unshare has no memory-safety preconditions; the process is still single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("net_throughput needs root (unshare(CLONE_NEWNET)): {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let backend = Arc::new(Backend::open(&TapSource::Name(TAP.into())).expect("create the tap"));
    ip(&["link", "set", TAP, "txqueuelen", "4096", "up"]);
    backend.set_offload(tap_offload(OFFLOAD_FEATURES)).expect("TUNSETOFFLOAD");
    let injector = Injector::new();
    // Let the stack settle (IPv6 DAD, router solicitations), then drain what it sent.
    std::thread::sleep(Duration::from_millis(200));
    let _ = rx_raw(&backend, &injector, &frame("warm-up", 60, false), 0);

    let frames = [(frame("1500", 1500, false), ROUNDS_1500), (frame("64 KiB TSO", 65535, true), ROUNDS_TSO)];
    println!("MB/s count the bytes crossing the tap fd (virtio_net_hdr included); RX frames: device/raw.");
    println!(
        "{:<4} {:<11} {:>13} {:>12} {:>13} {:>6}",
        "path", "frame", "frames", "device MB/s", "raw tap MB/s", "ratio"
    );
    for (frame, rounds) in &frames {
        let mut tx_rig = rig(backend.clone(), true);
        let device = tx_device(&mut tx_rig, frame, *rounds);
        let raw = tx_raw(&tx_rig.backend, frame, *rounds);
        let n = (*rounds * ROUND) as u64;
        let bytes = (frame.bytes.len() as u64) * n;
        let (d, r) = (rate(bytes, device), rate(bytes, raw));
        println!("{:<4} {:<11} {:>13} {:>12.0} {:>13.0} {:>5.0}%", "TX", frame.name, n, d, r, 100.0 * d / r);

        let mut rx_rig = rig(backend.clone(), true);
        let (raw, raw_frames, raw_bytes) = rx_raw(&backend, &injector, frame, *rounds);
        let (device, device_frames, device_bytes) = rx_device(&mut rx_rig, &injector, frame, *rounds);
        let (d, r) = (rate(device_bytes, device), rate(raw_bytes, raw));
        println!(
            "{:<4} {:<11} {:>13} {:>12.0} {:>13.0} {:>5.0}%",
            "RX",
            frame.name,
            format!("{device_frames}/{raw_frames}"),
            d,
            r,
            100.0 * d / r
        );
    }
}
