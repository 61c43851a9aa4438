//! A polling virtio-blk driver over virtio-mmio (version 2), written the way a
//! kernel driver initialises a device: reset, ACKNOWLEDGE, DRIVER, feature
//! negotiation, FEATURES_OK, one split queue, DRIVER_OK, then requests whose
//! completion is polled in the used ring.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::hw::{pause, rdtsc};

/// The virtio-mmio (version 2) register map, shared by the block and net drivers.
pub const MAGIC: u32 = 0x7472_6976;
pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC: u64 = 0x080;
pub const REG_QUEUE_DRIVER: u64 = 0x090;
pub const REG_QUEUE_DEVICE: u64 = 0x0a0;
pub const REG_CONFIG: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const FEATURE_RO: u32 = 1 << 5;
const FEATURE_VERSION_1_HIGH: u32 = 1; // bit 32

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// virtio-blk's sector (the unit of `sector` fields); named as in kvmlet's vmm.
pub const SECTOR_SIZE: usize = 512;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// Our own code for "the device never completed the request".
pub const S_TIMEOUT: u8 = 0xff;

/// Entries of our queue's memory: room for a chain of a header, 254 data
/// segments (kvmlet's `seg_max`) and a status. A device may offer fewer.
const QUEUE_SIZE: u16 = 256;
const MIN_QUEUE_SIZE: u16 = 8;
/// Largest transfer per request through the driver's own buffer.
pub const MAX_TRANSFER: usize = 64 * 1024;

/// One split queue; `repr(C)` aligns the used ring to 4 bytes after the available ring.
#[repr(C, align(4096))]
struct QueueMemory {
    desc: [[u8; 16]; QUEUE_SIZE as usize],
    avail: [u16; 3 + QUEUE_SIZE as usize],
    used: [u32; 1 + 2 * QUEUE_SIZE as usize],
}

#[repr(C, align(4096))]
struct Buffers {
    header: [u8; 16],
    status: u8,
    data: [u8; MAX_TRANSFER],
}

// One device is driven at a time; identity mapping makes these addresses physical.
static mut QUEUE: QueueMemory = QueueMemory {
    desc: [[0; 16]; QUEUE_SIZE as usize],
    avail: [0; 3 + QUEUE_SIZE as usize],
    used: [0; 1 + 2 * QUEUE_SIZE as usize],
};
static mut BUFFERS: Buffers = Buffers { header: [0; 16], status: 0, data: [0; MAX_TRANSFER] };

pub fn read32(base: u64, reg: u64) -> u32 {
    // SAFETY: `base` is a virtio-mmio window from the DSDT, identity mapped.
    unsafe { read_volatile((base + reg) as usize as *const u32) }
}

pub fn write32(base: u64, reg: u64, value: u32) {
    // SAFETY: as for read32.
    unsafe { write_volatile((base + reg) as usize as *mut u32, value) }
}

pub fn write64(base: u64, reg: u64, value: u64) {
    write32(base, reg, value as u32);
    write32(base, reg + 4, (value >> 32) as u32);
}

pub struct BlockDevice {
    base: u64,
    pub capacity: u64,
    pub readonly: bool,
    queue_size: u16,
    last_used: u16,
    next_avail: u16,
}

/// Why a device could not be brought up.
pub type InitError = &'static str;

impl BlockDevice {
    /// Brings up the virtio-blk device at `base`.
    pub fn init(base: u64) -> Result<BlockDevice, InitError> {
        if read32(base, REG_MAGIC) != MAGIC {
            return Err("no virtio-mmio magic");
        }
        if read32(base, REG_VERSION) != 2 {
            return Err("not a virtio-mmio version 2 (modern) device");
        }
        if read32(base, REG_DEVICE_ID) != 2 {
            return Err("not a block device");
        }
        write32(base, REG_STATUS, 0);
        write32(base, REG_STATUS, STATUS_ACKNOWLEDGE);
        write32(base, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write32(base, REG_DEVICE_FEATURES_SEL, 0);
        let low = read32(base, REG_DEVICE_FEATURES);
        write32(base, REG_DEVICE_FEATURES_SEL, 1);
        if read32(base, REG_DEVICE_FEATURES) & FEATURE_VERSION_1_HIGH == 0 {
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        write32(base, REG_DRIVER_FEATURES_SEL, 0);
        write32(base, REG_DRIVER_FEATURES, low & FEATURE_RO);
        write32(base, REG_DRIVER_FEATURES_SEL, 1);
        write32(base, REG_DRIVER_FEATURES, FEATURE_VERSION_1_HIGH);
        let negotiated = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        write32(base, REG_STATUS, negotiated);
        if read32(base, REG_STATUS) & STATUS_FEATURES_OK == 0 {
            return Err("device refused our features");
        }
        write32(base, REG_QUEUE_SEL, 0);
        let queue_size = read32(base, REG_QUEUE_NUM_MAX).min(u32::from(QUEUE_SIZE)) as u16;
        if queue_size < MIN_QUEUE_SIZE {
            return Err("queue too small");
        }
        // SAFETY: the queue memory is ours alone while this device is driven;
        // a device from a previous init was reset before we got here.
        unsafe {
            let q = addr_of_mut!(QUEUE);
            core::ptr::write_bytes(q, 0, 1);
            write32(base, REG_QUEUE_NUM, u32::from(queue_size));
            write64(base, REG_QUEUE_DESC, addr_of!((*q).desc) as u64);
            write64(base, REG_QUEUE_DRIVER, addr_of!((*q).avail) as u64);
            write64(base, REG_QUEUE_DEVICE, addr_of!((*q).used) as u64);
        }
        write32(base, REG_QUEUE_READY, 1);
        write32(base, REG_STATUS, negotiated | STATUS_DRIVER_OK);
        let capacity = u64::from(read32(base, REG_CONFIG)) | (u64::from(read32(base, REG_CONFIG + 4)) << 32);
        Ok(BlockDevice { base, capacity, readonly: low & FEATURE_RO != 0, queue_size, last_used: 0, next_avail: 0 })
    }

    /// Leaves the device reset, so the next device can reuse the queue memory.
    pub fn shutdown(self) {
        write32(self.base, REG_STATUS, 0);
    }

    /// Submits one request (header, optional data of `len` bytes from the
    /// driver's buffer, status) and polls for its completion. Returns the status byte.
    pub fn request(&mut self, kind: u32, sector: u64, len: usize) -> u8 {
        let len = len.min(MAX_TRANSFER);
        // SAFETY: only the address of the buffer is taken; `submit` hands it to the device.
        let data = unsafe { addr_of!(BUFFERS.data) } as u64;
        if len == 0 {
            self.submit(kind, sector, &[])
        } else {
            self.submit(kind, sector, &[(data, len as u32)])
        }
    }

    /// Most data segments one request can have: the queue less header and status.
    pub fn max_segments(&self) -> usize {
        usize::from(self.queue_size) - 2
    }

    /// Submits one request whose data segments are `segments` (guest-physical
    /// address, length; at most `max_segments()` are used, device-writable for
    /// IN and GET_ID) and polls for its completion. Returns the status byte.
    pub fn submit(&mut self, kind: u32, sector: u64, segments: &[(u64, u32)]) -> u8 {
        let segments = &segments[..segments.len().min(self.max_segments())];
        let device_writes = kind == T_IN || kind == T_GET_ID;
        // SAFETY: the buffers and queue are only touched by this driver, and
        // by the device between notify and completion, which we wait for; the
        // caller's segments lie in RAM it does not use meanwhile.
        unsafe {
            let buffers = &mut *addr_of_mut!(BUFFERS);
            buffers.header[0..4].copy_from_slice(&kind.to_le_bytes());
            buffers.header[4..8].fill(0);
            buffers.header[8..16].copy_from_slice(&sector.to_le_bytes());
            write_volatile(addr_of_mut!(buffers.status), S_TIMEOUT);
            let q = &mut *addr_of_mut!(QUEUE);
            let mut n = 0;
            let mut put = |addr: u64, size: u32, flags: u16| {
                let d = &mut q.desc[n];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&size.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&((n as u16) + 1).to_le_bytes());
                n += 1;
            };
            put(addr_of!(buffers.header) as u64, 16, DESC_F_NEXT);
            for &(addr, len) in segments {
                put(addr, len, DESC_F_NEXT | if device_writes { DESC_F_WRITE } else { 0 });
            }
            put(addr_of!(buffers.status) as u64, 1, DESC_F_WRITE);
            let slot = 2 + usize::from(self.next_avail % self.queue_size);
            write_volatile(addr_of_mut!(q.avail[slot]), 0);
            self.next_avail = self.next_avail.wrapping_add(1);
            fence(Ordering::SeqCst);
            write_volatile(addr_of_mut!(q.avail[1]), self.next_avail);
            fence(Ordering::SeqCst);
            write32(self.base, REG_QUEUE_NOTIFY, 0);
            let start = rdtsc();
            loop {
                let used_idx = read_volatile(addr_of!(q.used[0])) >> 16;
                if used_idx as u16 != self.last_used {
                    self.last_used = used_idx as u16;
                    break;
                }
                if rdtsc().wrapping_sub(start) > 20_000_000_000 {
                    return S_TIMEOUT;
                }
                pause();
            }
            fence(Ordering::SeqCst);
            read_volatile(addr_of!(buffers.status))
        }
    }

    /// The data buffer of the last (or next) request.
    pub fn data(&mut self) -> &mut [u8; MAX_TRANSFER] {
        // SAFETY: no request is in flight when the caller holds this borrow.
        unsafe { &mut *addr_of_mut!(BUFFERS.data) }
    }
}
