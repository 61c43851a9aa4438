// The virtio-blk fuzz harness, shared by the cargo-fuzz target
// (vmm/fuzz/fuzz_targets/block_request.rs) and the corpus test that runs in CI
// (vmm/tests/block_fuzz_corpus.rs).
//
// The input is what a hostile guest controls: the descriptor table, the
// available ring and the bytes of guest memory the descriptors point at
// (headers, sectors, statuses); an odd-length input makes the disk read-only.
// The device must return every chain it takes, never panic, never change
// the disk's size, and never hold more than `MAX_HEAP_BYTES` of heap while it
// serves the queue, whatever sizes and counts the guest wrote (a counting
// global allocator measures it, per thread).

use std::fs::File;
use std::sync::{Arc, OnceLock};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::irq::IrqLine;
use vmm::devices::virtio::block::{process_queue, Disk, ID_BYTES, SECTOR_SIZE};
use vmm::devices::virtio::{ActiveQueue, Interrupt};
use vmm::image::DiskImage;
use vmm_sys_util::eventfd::EventFd;

const MEMORY: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x1100;
const USED_RING: u64 = 0x1200;
const GUEST_DATA: u64 = 0x2000;
const DISK_BYTES: u64 = 64 << 10;

/// Heap the device may hold at once while serving one queue of up to
/// `QUEUE_SIZE` requests: its chain list and each request's segment list.
/// Guest-chosen lengths (up to the whole of guest memory) must not show here.
pub const MAX_HEAP_BYTES: usize = 16 << 10;

// A counting `GlobalAlloc` is `unsafe` by nature (vmm is where `unsafe` may live).
#[allow(unsafe_code)]
#[path = "heap.rs"]
mod heap;
use heap::peak_heap;

fn disk_file() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| tempfile::tempfile().expect("temporary disk"))
}

/// What the device did with one input (the fuzz target only needs the
/// assertions inside `run`; the corpus test reads the fields).
#[allow(dead_code)]
pub struct Outcome {
    pub available: u16,
    pub used: u16,
    pub needs_reset: bool,
    /// The status byte of the first request, at guest address 0x2010 in the seeds.
    pub first_status: u8,
    /// The most heap the device held while serving the queue.
    pub heap_bytes: usize,
}

pub fn run(data: &[u8]) -> Outcome {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    let (table, rest) = data.split_at(data.len().min(16 * usize::from(QUEUE_SIZE)));
    mem.write_slice(table, GuestAddress(DESC_TABLE)).unwrap();
    let (ring, guest) = rest.split_at(rest.len().min(1 + 2 * usize::from(QUEUE_SIZE)));
    let available = u16::from(ring.first().copied().unwrap_or(0)) % (QUEUE_SIZE + 1);
    mem.write_obj(available, GuestAddress(AVAIL_RING + 2)).unwrap();
    if ring.len() > 1 {
        mem.write_slice(&ring[1..], GuestAddress(AVAIL_RING + 4)).unwrap();
    }
    let guest = &guest[..guest.len().min(MEMORY - GUEST_DATA as usize)];
    mem.write_slice(guest, GuestAddress(GUEST_DATA)).unwrap();

    let file = disk_file();
    file.set_len(DISK_BYTES).unwrap();
    let disk = Disk {
        image: DiskImage::Raw(file.try_clone().unwrap()),
        readonly: data.len() % 2 == 1,
        capacity_sectors: DISK_BYTES / SECTOR_SIZE,
        id: [7; ID_BYTES],
    };

    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    let mut active = ActiveQueue { queue, notify: Arc::new(EventFd::new(0).unwrap()) };
    let interrupt = Interrupt::new(IrqLine::new().unwrap());
    let ((), heap_bytes) = peak_heap(|| process_queue(&mem, &mut active, &interrupt, &disk));

    let used: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
    let needs_reset = interrupt.needs_reset();
    // Either every chain comes back, or the device stopped and asked for a reset
    // (a head index or ring the queue cannot use).
    assert!(used == available || needs_reset, "used {used} of {available} chains without asking for a reset");
    assert!(used <= available);
    assert_eq!(file.metadata().unwrap().len(), DISK_BYTES, "the disk never grows or shrinks");
    assert!(heap_bytes <= MAX_HEAP_BYTES, "the device held {heap_bytes} bytes of heap serving one queue");
    let first_status = mem.read_obj(GuestAddress(GUEST_DATA + 0x10)).unwrap();
    Outcome { available, used, needs_reset, first_status, heap_bytes }
}
