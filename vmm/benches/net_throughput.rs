//! virtio-net device throughput without a guest, against the raw tap: frames
//! are placed in split queues in guest memory as a driver would, and moved by
//! the same datapath the device's worker runs; the same frames are then
//! written to (TX) or read from (RX) the same tap fd directly. Only the
//! device's processing (or the raw reads and writes) is timed, not the
//! driver's side. The bench moves itself into a network namespace of its own
//! (`unshare(CLONE_NEWNET)`, so it needs root) with one tap, `kvb0`, up.
//! RX frames are put in the tap's queue a round at a time: 1500-byte frames
//! through an AF_PACKET socket on the tap (PACKET_VNET_HDR); 64 KiB TSO frames
//! as the host makes them, by GRO: 45 TCP segments of 1448 bytes each are sent
//! into a veth whose peer has GRO on (and a GRO flush timeout, so segments
//! sent one by one still merge), and a bridge forwards the merged frame to the
//! tap whole. (A GSO frame sent straight into the tap through AF_PACKET is
//! marked untrusted and cut into segments before it reaches the tap's queue.)
//!
//! `cargo bench -p kvmlet-vmm --bench net_throughput`

// The raw side (AF_PACKET injection, unshare) is plain libc: `unsafe` stays in
// the vmm crate family, each block with its SAFETY comment.
#![allow(unsafe_code)]

use std::io::Read;
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

/// An AF_PACKET socket on an interface; with `vnet_hdr`, it takes a
/// virtio_net_hdr before each frame.
struct Injector(std::os::fd::OwnedFd);

impl Injector {
    fn new(interface: &str, vnet_hdr: bool) -> Injector {
        // SAFETY: plain socket/setsockopt/bind calls with valid pointers and lengths.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            if vnet_hdr {
                let one: libc::c_int = 1;
                let rc = libc::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, (&one as *const i32).cast(), 4);
                assert_eq!(rc, 0, "PACKET_VNET_HDR");
            }
            let name = std::ffi::CString::new(interface).unwrap();
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind to {interface}");
            Injector(std::os::fd::FromRawFd::from_raw_fd(fd))
        }
    }

    fn send_bytes(&self, bytes: &[u8]) {
        // SAFETY: a send of a valid buffer of the given length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        assert_eq!(n as usize, bytes.len(), "inject: {}", std::io::Error::last_os_error());
    }
}

/// Puts frames into the tap's read queue, as the host's stack would.
enum RxSource {
    /// 1500-byte frames sent out of the tap itself.
    Direct(Injector),
    /// 64 KiB TSO frames merged by GRO on the veth behind the bridge.
    Gro { injector: Injector, flow: std::cell::RefCell<TcpFlow> },
}

impl RxSource {
    /// Queues `count` copies of `frame` (for `Gro`: `count` merged frames of
    /// the flow, of `frame`'s size) in the tap.
    fn send(&self, frame: &Frame, count: usize) {
        match self {
            RxSource::Direct(injector) => {
                // The packet socket's header is the 10-byte virtio_net_hdr (no num_buffers).
                let bytes = [&frame.bytes[..10], &frame.bytes[VNET_HDR_LEN..]].concat();
                for _ in 0..count {
                    injector.send_bytes(&bytes);
                }
            }
            RxSource::Gro { injector, flow } => {
                let mut flow = flow.borrow_mut();
                for _ in 0..count {
                    for i in 0..SEGMENTS_PER_TSO_FRAME {
                        injector.send_bytes(&flow.segment(i + 1 == SEGMENTS_PER_TSO_FRAME));
                    }
                }
            }
        }
    }
}

/// Segments per merged frame: 45 × 1448 = 65160 bytes of TCP payload.
const SEGMENTS_PER_TSO_FRAME: usize = 45;
const MSS: usize = 1448;

/// One TCP flow from 192.0.2.2 to 192.0.2.1, cut into MSS-sized segments
/// whose checksums GRO accepts.
struct TcpFlow {
    seq: u32,
    ip_id: u16,
}

fn checksum(sum: u32, bytes: &[u8]) -> u32 {
    let mut sum = sum;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl TcpFlow {
    /// The next segment; `push` ends a merged frame (GRO flushes on PSH).
    fn segment(&mut self, push: bool) -> Vec<u8> {
        let mut bytes = vec![0x02, 0, 0, 0, 0, 0x99, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
        let mut ip = vec![0u8; 40 + MSS];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((40 + MSS) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6; // TCP
        ip[12..16].copy_from_slice(&[192, 0, 2, 2]);
        ip[16..20].copy_from_slice(&[192, 0, 2, 1]);
        let ip_sum = fold(checksum(0, &ip[..20]));
        ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp = &mut ip[20..];
        tcp[0..2].copy_from_slice(&5201u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes()); // ack
        tcp[12] = 5 << 4;
        tcp[13] = if push { 0x18 } else { 0x10 }; // (PSH,) ACK
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        for (i, byte) in tcp[20..].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        let pseudo = checksum(0, &[192, 0, 2, 2, 192, 0, 2, 1, 0, 6]) + (20 + MSS) as u32;
        let tcp_sum = fold(checksum(pseudo, tcp));
        tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
        self.seq = self.seq.wrapping_add(MSS as u32);
        self.ip_id = self.ip_id.wrapping_add(1);
        bytes.extend_from_slice(&ip);
        bytes
    }
}

/// A veth (`kvbv0` → `kvbv1`, GRO on with a flush timeout) bridged with the
/// tap; returns the source that sends TSO frames through it.
fn gro_source() -> RxSource {
    for args in [
        &["link", "add", "kvbv0", "type", "veth", "peer", "name", "kvbv1"][..],
        &["link", "add", "kvbbr", "type", "bridge"],
        &["link", "set", TAP, "master", "kvbbr"],
        &["link", "set", "kvbv1", "master", "kvbbr"],
        &["link", "set", "kvbv0", "up"],
        &["link", "set", "kvbv1", "up"],
        &["link", "set", "kvbbr", "up"],
    ] {
        ip(args);
    }
    // veth hands a frame to its peer's GRO only when the sender has no TSO.
    ethtool_set("kvbv0", ETHTOOL_STSO, 0);
    ethtool_set("kvbv1", ETHTOOL_SGRO, 1);
    // GRO keeps merging across NAPI polls only with a flush timeout (sysfs
    // only; a sysfs mounted in this namespace shows its interfaces).
    let sysfs = std::env::temp_dir().join(format!("kvmlet-net-bench-sysfs-{}", std::process::id()));
    std::fs::create_dir_all(&sysfs).unwrap();
    let status = Command::new("mount").args(["-t", "sysfs", "sysfs"]).arg(&sysfs).status().expect("run mount");
    assert!(status.success(), "mount sysfs");
    let written = std::fs::write(sysfs.join("class/net/kvbv1/gro_flush_timeout"), "10000000");
    let _ = Command::new("umount").arg(&sysfs).status();
    let _ = std::fs::remove_dir(&sysfs);
    written.expect("set kvbv1's gro_flush_timeout");
    RxSource::Gro {
        injector: Injector::new("kvbv0", false),
        flow: std::cell::RefCell::new(TcpFlow { seq: 1, ip_id: 1 }),
    }
}

const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `ethtool -K NAME tso|gro on|off` (the legacy ETHTOOL_S* requests).
fn ethtool_set(name: &str, cmd: u32, data: u32) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue { cmd, data };
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: &mut value, _pad: [0; 16] };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: socket and ioctl with a valid ifreq whose data points at a live ethtool_value.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut request);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, 0, "ethtool request {cmd:#x} on {name}: {error}");
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

/// Time spent, frames and bytes (headers included) received.
#[derive(Default)]
struct RxTally {
    elapsed: Duration,
    frames: u64,
    bytes: u64,
}

/// Receives `rounds` rounds of ROUND frames each way, alternating a round
/// read by the device and one read raw from the tap, so that both see the
/// host in the same state. Returns (device, raw).
fn rx_compare(rig: &mut Rig, source: &RxSource, frame: &Frame, rounds: usize) -> (RxTally, RxTally) {
    let (mut device, mut raw) = (RxTally::default(), RxTally::default());
    let before = rig.datapath.counters;
    let mut offered: u16 = 0;
    let mut buf = vec![0u8; 70_000];
    for _ in 0..rounds {
        // Keep ROUND buffers offered: the frames the stack sent on its own use some.
        let outstanding = offered.wrapping_sub(rig.rx.used_idx(&rig.mem));
        for i in outstanding..ROUND as u16 {
            let at = RX_BUFFERS + u64::from(i) * RX_BUFFER_LEN;
            rig.rx.add_chain(&rig.mem, &[(at, RX_BUFFER_LEN as u32, true)]);
            offered = offered.wrapping_add(1);
        }
        source.send(frame, ROUND);
        let start = Instant::now();
        rig.datapath.process_rx().unwrap();
        device.elapsed += start.elapsed();

        // What the device left (the stack's own frames beyond ROUND) is not timed.
        while rig.backend.file().read(&mut buf).is_ok() {}
        source.send(frame, ROUND);
        let start = Instant::now();
        while let Ok(n) = rig.backend.file().read(&mut buf) {
            raw.frames += 1;
            raw.bytes += n as u64;
        }
        raw.elapsed += start.elapsed();
    }
    let after = rig.datapath.counters;
    (device.frames, device.bytes) = (after.rx_frames - before.rx_frames, after.rx_bytes - before.rx_bytes);
    (device, raw)
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

fn main() {
    // SAFETY: unshare has no memory-safety preconditions; the process is still single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
        eprintln!("net_throughput needs root (unshare(CLONE_NEWNET)): {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // Mounts made here (a sysfs, see gro_source) stay in this namespace.
    // SAFETY: mount with a valid C string and null optional arguments.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "make / private: {}", std::io::Error::last_os_error());
    let backend = Arc::new(Backend::open(&TapSource::Name(TAP.into())).expect("create the tap"));
    ip(&["link", "set", TAP, "txqueuelen", "4096", "up"]);
    backend.set_offload(tap_offload(OFFLOAD_FEATURES)).expect("TUNSETOFFLOAD");
    let direct = RxSource::Direct(Injector::new(TAP, true));
    let gro = gro_source();
    // Let the stack settle (IPv6 DAD, router solicitations), then drain what it sent.
    std::thread::sleep(Duration::from_millis(200));
    let mut drain = vec![0u8; 70_000];
    while backend.file().read(&mut drain).is_ok() {}

    let frames =
        [(frame("1500", 1500, false), ROUNDS_1500, &direct), (frame("64 KiB TSO", 65535, true), ROUNDS_TSO, &gro)];
    println!("MB/s count the bytes crossing the tap fd (virtio_net_hdr included); RX frames: device/raw.");
    println!(
        "{:<4} {:<11} {:>13} {:>12} {:>13} {:>6}",
        "path", "frame", "frames", "device MB/s", "raw tap MB/s", "ratio"
    );
    for (frame, rounds, source) in frames {
        let rounds = &rounds;
        let mut tx_rig = rig(backend.clone(), true);
        let device = tx_device(&mut tx_rig, &frame, *rounds);
        let raw = tx_raw(&tx_rig.backend, &frame, *rounds);
        let n = (*rounds * ROUND) as u64;
        let bytes = (frame.bytes.len() as u64) * n;
        let (d, r) = (rate(bytes, device), rate(bytes, raw));
        println!("{:<4} {:<11} {:>13} {:>12.0} {:>13.0} {:>5.0}%", "TX", frame.name, n, d, r, 100.0 * d / r);

        let mut rx_rig = rig(backend.clone(), true);
        let (device, raw) = rx_compare(&mut rx_rig, source, &frame, *rounds);
        let (d, r) = (rate(device.bytes, device.elapsed), rate(raw.bytes, raw.elapsed));
        println!(
            "{:<4} {:<11} {:>13} {:>12.0} {:>13.0} {:>5.0}%",
            "RX",
            frame.name,
            format!("{}/{}", device.frames, raw.frames),
            d,
            r,
            100.0 * d / r
        );
    }
}
