//! A polling virtio-net driver over virtio-mmio (version 2): VERSION_1, MAC,
//! MTU and STATUS, no offloads, no mergeable buffers. One receive queue kept
//! full of 2 KiB buffers, one transmit buffer in flight at a time; both rings
//! are polled, never interrupt-driven. It is smoltcp's `Device`.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::hw::{pause, rdtsc};
use crate::virtio::{
    read32, write32, write64, InitError, MAGIC, REG_CONFIG, REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL,
    REG_DEVICE_ID, REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL, REG_MAGIC, REG_QUEUE_DESC, REG_QUEUE_DEVICE,
    REG_QUEUE_DRIVER, REG_QUEUE_NOTIFY, REG_QUEUE_NUM, REG_QUEUE_NUM_MAX, REG_QUEUE_READY, REG_QUEUE_SEL, REG_STATUS,
    REG_VERSION,
};

pub const DEVICE_ID_NET: u32 = 1;
const F_MTU: u32 = 1 << 3;
const F_MAC: u32 = 1 << 5;
const F_STATUS: u32 = 1 << 16;
const F_VERSION_1_HIGH: u32 = 1;
const DESC_F_WRITE: u16 = 2;

/// virtio_net_hdr_v1 in front of every frame.
const HDR_LEN: usize = 12;
const QUEUE_SIZE: usize = 16;
const BUF_LEN: usize = 2048;
const RX: u32 = 0;
const TX: u32 = 1;
/// TSC ticks to wait for the device to take a transmitted frame.
const TX_TIMEOUT_TICKS: u64 = 10_000_000_000;

#[repr(C, align(4096))]
struct Ring {
    desc: [[u8; 16]; QUEUE_SIZE],
    avail: [u16; 3 + QUEUE_SIZE],
    used: [u32; 1 + 2 * QUEUE_SIZE],
}

const EMPTY_RING: Ring =
    Ring { desc: [[0; 16]; QUEUE_SIZE], avail: [0; 3 + QUEUE_SIZE], used: [0; 1 + 2 * QUEUE_SIZE] };
static mut RX_RING: Ring = EMPTY_RING;
static mut TX_RING: Ring = EMPTY_RING;
#[repr(C, align(4096))]
struct Buffers([[u8; BUF_LEN]; QUEUE_SIZE]);
static mut RX_BUFFERS: Buffers = Buffers([[0; BUF_LEN]; QUEUE_SIZE]);
static mut TX_BUFFER: Buffers = Buffers([[0; BUF_LEN]; QUEUE_SIZE]);

fn put_desc(ring: *mut Ring, index: usize, addr: u64, len: u32, flags: u16) {
    // SAFETY: `ring` is one of this driver's static rings and `index` < QUEUE_SIZE.
    unsafe {
        let d = &mut (*ring).desc[index];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&0u16.to_le_bytes());
    }
}

/// Offers descriptor `index` in the available ring.
fn make_available(ring: *mut Ring, next_avail: &mut u16, index: u16) {
    // SAFETY: as for put_desc; the device reads the ring only after the index store.
    unsafe {
        write_volatile(addr_of_mut!((*ring).avail[2 + usize::from(*next_avail) % QUEUE_SIZE]), index);
        *next_avail = next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*ring).avail[1]), *next_avail);
        fence(Ordering::SeqCst);
    }
}

fn used_idx(ring: *const Ring) -> u16 {
    // SAFETY: reading the device-written used index of a static ring.
    (unsafe { read_volatile(addr_of!((*ring).used[0])) } >> 16) as u16
}

fn used_elem(ring: *const Ring, n: u16) -> (u32, u32) {
    let at = 1 + 2 * (usize::from(n) % QUEUE_SIZE);
    // SAFETY: as for used_idx.
    unsafe { (read_volatile(addr_of!((*ring).used[at])), read_volatile(addr_of!((*ring).used[at + 1]))) }
}

pub struct RxSide {
    base: u64,
    next_avail: u16,
    last_used: u16,
    /// The last ARP reply seen: (sender IPv4, sender MAC).
    pub arp_reply: Option<([u8; 4], [u8; 6])>,
}

pub struct TxSide {
    base: u64,
    next_avail: u16,
}

pub struct NetDevice {
    pub mac: [u8; 6],
    pub mtu: u16,
    pub link_up: bool,
    pub rx: RxSide,
    pub tx: TxSide,
}

fn set_up_queue(base: u64, queue: u32, ring: *mut Ring) -> Result<(), InitError> {
    write32(base, REG_QUEUE_SEL, queue);
    if (read32(base, REG_QUEUE_NUM_MAX) as usize) < QUEUE_SIZE {
        return Err("queue too small");
    }
    // SAFETY: the ring is this driver's alone; it is cleared before the device sees it.
    unsafe { core::ptr::write_bytes(ring, 0, 1) };
    write32(base, REG_QUEUE_NUM, QUEUE_SIZE as u32);
    // SAFETY: only addresses are taken.
    unsafe {
        write64(base, REG_QUEUE_DESC, addr_of!((*ring).desc) as u64);
        write64(base, REG_QUEUE_DRIVER, addr_of!((*ring).avail) as u64);
        write64(base, REG_QUEUE_DEVICE, addr_of!((*ring).used) as u64);
    }
    write32(base, REG_QUEUE_READY, 1);
    Ok(())
}

impl NetDevice {
    pub fn init(base: u64) -> Result<NetDevice, InitError> {
        if read32(base, REG_MAGIC) != MAGIC || read32(base, REG_VERSION) != 2 {
            return Err("not a virtio-mmio version 2 device");
        }
        if read32(base, REG_DEVICE_ID) != DEVICE_ID_NET {
            return Err("not a network device");
        }
        write32(base, REG_STATUS, 0);
        write32(base, REG_STATUS, 1);
        write32(base, REG_STATUS, 1 | 2);
        write32(base, REG_DEVICE_FEATURES_SEL, 0);
        let low = read32(base, REG_DEVICE_FEATURES) & (F_MAC | F_MTU | F_STATUS);
        write32(base, REG_DEVICE_FEATURES_SEL, 1);
        if read32(base, REG_DEVICE_FEATURES) & F_VERSION_1_HIGH == 0 {
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        write32(base, REG_DRIVER_FEATURES_SEL, 0);
        write32(base, REG_DRIVER_FEATURES, low);
        write32(base, REG_DRIVER_FEATURES_SEL, 1);
        write32(base, REG_DRIVER_FEATURES, F_VERSION_1_HIGH);
        write32(base, REG_STATUS, 1 | 2 | 8);
        if read32(base, REG_STATUS) & 8 == 0 {
            return Err("device refused our features");
        }
        set_up_queue(base, RX, addr_of_mut!(RX_RING))?;
        set_up_queue(base, TX, addr_of_mut!(TX_RING))?;
        let mut rx = RxSide { base, next_avail: 0, last_used: 0, arp_reply: None };
        for i in 0..QUEUE_SIZE {
            // SAFETY: only the address of the buffer is taken.
            let addr = unsafe { addr_of!(RX_BUFFERS.0[i]) } as u64;
            put_desc(addr_of_mut!(RX_RING), i, addr, BUF_LEN as u32, DESC_F_WRITE);
            make_available(addr_of_mut!(RX_RING), &mut rx.next_avail, i as u16);
        }
        write32(base, REG_STATUS, 1 | 2 | 8 | 4);
        write32(base, REG_QUEUE_NOTIFY, RX);
        let config = |offset: u64| read32(base, REG_CONFIG + offset).to_le_bytes();
        let (c0, c4, c8) = (config(0), config(4), config(8));
        let mac = if low & F_MAC != 0 { [c0[0], c0[1], c0[2], c0[3], c4[0], c4[1]] } else { [2, 0, 0, 0, 0, 1] };
        let link_up = low & F_STATUS == 0 || u16::from_le_bytes([c4[2], c4[3]]) & 1 != 0;
        let mtu = if low & F_MTU != 0 { u16::from_le_bytes([c8[2], c8[3]]) } else { 1500 };
        Ok(NetDevice { mac, mtu, link_up, rx, tx: TxSide { base, next_avail: 0 } })
    }
}

pub struct RxToken<'a> {
    side: &'a mut RxSide,
    index: u32,
    len: usize,
}

pub struct TxToken<'a> {
    side: &'a mut TxSide,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let index = self.index as usize % QUEUE_SIZE;
        // SAFETY: the device returned this buffer; it is ours until offered again below.
        let buffer = unsafe { &*addr_of!(RX_BUFFERS.0[index]) };
        let frame = &buffer[HDR_LEN..self.len.clamp(HDR_LEN, BUF_LEN)];
        if frame.len() >= 42 && frame[12..14] == [0x08, 0x06] && frame[20..22] == [0, 2] {
            let mut ip = [0u8; 4];
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&frame[22..28]);
            ip.copy_from_slice(&frame[28..32]);
            self.side.arp_reply = Some((ip, mac));
        }
        let result = f(frame);
        make_available(addr_of_mut!(RX_RING), &mut self.side.next_avail, index as u16);
        write32(self.side.base, REG_QUEUE_NOTIFY, RX);
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(BUF_LEN - HDR_LEN);
        // SAFETY: the single transmit buffer is free: the previous frame was
        // waited for before this returned.
        let buffer = unsafe { &mut *addr_of_mut!(TX_BUFFER.0[0]) };
        buffer[..HDR_LEN].fill(0);
        let result = f(&mut buffer[HDR_LEN..HDR_LEN + len]);
        put_desc(addr_of_mut!(TX_RING), 0, buffer.as_ptr() as u64, (HDR_LEN + len) as u32, 0);
        make_available(addr_of_mut!(TX_RING), &mut self.side.next_avail, 0);
        write32(self.side.base, REG_QUEUE_NOTIFY, TX);
        let start = rdtsc();
        while used_idx(addr_of!(TX_RING)) != self.side.next_avail && rdtsc().wrapping_sub(start) < TX_TIMEOUT_TICKS {
            pause();
        }
        result
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if used_idx(addr_of!(RX_RING)) == self.rx.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let (index, len) = used_elem(addr_of!(RX_RING), self.rx.last_used);
        self.rx.last_used = self.rx.last_used.wrapping_add(1);
        Some((RxToken { side: &mut self.rx, index, len: len as usize }, TxToken { side: &mut self.tx }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { side: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(self.mtu).min(BUF_LEN - HDR_LEN - 14) + 14;
        caps.max_burst_size = Some(1);
        caps
    }
}
