//! virtio-blk fed chains directly, well-formed and hostile, through the same
//! queue processing the worker thread runs.

use std::io::Write;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::irq::IrqLine;
use crate::devices::virtio::guest_queue::{Desc, GuestQueue, VIRTQ_DESC_F_NEXT};
use crate::devices::virtio::ActiveQueue;
use crate::image::DiskImage;

const MEM_SIZE: usize = 16 << 20;
const QUEUE_BASE: u64 = 0x1000;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const DISK_SECTORS: u64 = 2048; // 1 MiB

struct Rig {
    mem: GuestMemoryMmap,
    driver: GuestQueue,
    active: ActiveQueue,
    interrupt: Interrupt,
    disk: Arc<Disk>,
    file: tempfile::NamedTempFile,
    /// With `Content::Overlay`: the directory of the qcow2 overlay the disk
    /// is, over `file` as its base.
    _overlay: Option<tempfile::TempDir>,
}

fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// The disk behind a rig: `DISK_SECTORS` of `pattern`, or a sparse file of zeros.
#[derive(Clone, Copy)]
enum Content {
    Pattern,
    Sparse {
        sectors: u64,
    },
    /// A qcow2 overlay over a raw base of `Pattern` (`Rig::file`).
    Overlay,
}

fn rig_with(readonly: bool, queue_size: u16) -> Rig {
    rig_on(readonly, queue_size, Content::Pattern)
}

fn rig_on(readonly: bool, queue_size: u16, content: Content) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    match content {
        Content::Pattern | Content::Overlay => {
            file.write_all(&(0..DISK_SECTORS * SECTOR_SIZE).map(pattern).collect::<Vec<u8>>()).unwrap()
        }
        Content::Sparse { sectors } => file.as_file().set_len(sectors * SECTOR_SIZE).unwrap(),
    }
    let (image, overlay) = match content {
        Content::Overlay => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("overlay.qcow2");
            crate::image::create_overlay(std::fs::File::create_new(&path).unwrap(), file.path()).unwrap();
            let files = crate::image::ImageFiles::open(&path, readonly, &[file.path().to_path_buf()]).unwrap();
            (files.into_image(!readonly).unwrap(), Some(dir))
        }
        _ => {
            let handle = std::fs::OpenOptions::new().read(true).write(!readonly).open(file.path()).unwrap();
            (DiskImage::Raw(handle), None)
        }
    };
    // The device's own disk (capacity and id as Block::new computed them).
    let disk = Block::new(image, readonly, Some("disk-serial-0001")).unwrap().disk.clone();
    let driver = GuestQueue::new(QUEUE_BASE, queue_size);
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(queue_size);
    queue.set_desc_table_address(Some(driver.desc_table as u32), Some(0));
    queue.set_avail_ring_address(Some(driver.avail_ring as u32), Some(0));
    queue.set_used_ring_address(Some(driver.used_ring as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(&mem));
    let active = ActiveQueue { queue, notify: Arc::new(EventFd::new(0).unwrap()) };
    Rig { mem, driver, active, interrupt: Interrupt::new(IrqLine::new().unwrap()), disk, file, _overlay: overlay }
}

fn rig(readonly: bool) -> Rig {
    rig_with(readonly, 16)
}

impl Rig {
    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Submits a chain and processes the queue; returns (status byte, used length).
    fn submit(&mut self, chain: &[(u64, u32, bool)]) -> (u8, u32) {
        let before = self.driver.used_idx(&self.mem);
        self.driver.add_chain(&self.mem, chain);
        process_queue(&self.mem, &mut self.active, &self.interrupt, &self.disk);
        assert_eq!(self.driver.used_idx(&self.mem), before.wrapping_add(1), "every chain is returned");
        let (_, len) = self.driver.used(&self.mem, before);
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    fn request(&mut self, kind: u32, sector: u64, data_len: u32, device_writes: bool) -> (u8, u32) {
        self.header(kind, sector);
        self.submit(&[(HEADER, 16, false), (DATA, data_len, device_writes), (STATUS, 1, true)])
    }

    fn file_bytes(&self) -> Vec<u8> {
        std::fs::read(self.file.path()).unwrap()
    }
}

#[test]
fn reads_land_in_guest_memory() {
    let mut rig = rig(false);
    assert_eq!(rig.request(0, 3, 1024, true), (S_OK, 1025));
    let mut data = vec![0u8; 1024];
    rig.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert!(data.iter().enumerate().all(|(i, b)| *b == pattern(3 * 512 + i as u64)));
    assert_ne!(rig.interrupt.status() & crate::devices::virtio::INTERRUPT_VRING, 0);
}

#[test]
fn writes_and_flushes_reach_the_file() {
    let mut rig = rig(false);
    rig.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(rig.request(1, 7, 512, false), (S_OK, 1));
    rig.header(4, 0);
    assert_eq!(rig.submit(&[(HEADER, 16, false), (STATUS, 1, true)]), (S_OK, 1));
    let file = rig.file_bytes();
    assert!(file[7 * 512..8 * 512].iter().all(|b| *b == 0xab));
    assert_eq!(file[8 * 512], pattern(8 * 512));
}

#[test]
fn read_only_disk_refuses_writes_and_is_untouched() {
    let mut rig = rig(true);
    let before = rig.file_bytes();
    rig.mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(rig.request(1, 0, 512, false).0, S_IOERR);
    assert_eq!(rig.request(11, 0, 16, false).0, S_IOERR, "discard");
    assert_eq!(rig.file_bytes(), before);
    assert_eq!(rig.request(0, 0, 512, true).0, S_OK, "reads still work");
}

#[test]
fn requests_past_the_end_of_the_disk_fail() {
    let mut rig = rig(false);
    assert_eq!(rig.request(0, DISK_SECTORS - 1, 1024, true).0, S_IOERR);
    assert_eq!(rig.request(0, DISK_SECTORS, 512, true).0, S_IOERR);
    assert_eq!(rig.request(0, u64::MAX, 512, true).0, S_IOERR, "sector overflow");
    assert_eq!(rig.request(1, u64::MAX / 512, 512, false).0, S_IOERR);
    assert_eq!(rig.request(0, DISK_SECTORS - 1, 512, true).0, S_OK, "the last sector is fine");
    assert_eq!(rig.request(0, 0, 100, true).0, S_IOERR, "not a whole number of sectors");
}

#[test]
fn wrong_directions_fail() {
    let mut rig = rig(false);
    assert_eq!(rig.request(0, 0, 512, false).0, S_IOERR, "read into a device-readable buffer");
    let before = rig.file_bytes();
    assert_eq!(rig.request(1, 0, 512, true).0, S_IOERR, "write from a device-writable buffer");
    assert_eq!(rig.file_bytes(), before);
    // A device-writable header.
    rig.header(0, 0);
    assert_eq!(rig.submit(&[(HEADER, 16, true), (DATA, 512, true), (STATUS, 1, true)]).0, S_IOERR);
}

#[test]
fn buffers_outside_guest_memory_fail() {
    let mut rig = rig(false);
    rig.header(0, 0);
    let outside = MEM_SIZE as u64 + 0x1000;
    assert_eq!(rig.submit(&[(HEADER, 16, false), (outside, 512, true), (STATUS, 1, true)]).0, S_IOERR);
    // A buffer that starts inside RAM and runs past its end.
    assert_eq!(rig.submit(&[(HEADER, 16, false), (MEM_SIZE as u64 - 256, 512, true), (STATUS, 1, true)]).0, S_IOERR);
    // Header outside RAM.
    assert_eq!(rig.submit(&[(outside, 16, false), (DATA, 512, true), (STATUS, 1, true)]).0, S_IOERR);
}

#[test]
fn chains_without_a_usable_status_are_returned_empty() {
    let mut rig = rig(false);
    rig.header(0, 0);
    // Status device-readable: nothing may be written, used length 0.
    assert_eq!(rig.submit(&[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, false)]), (0xff, 0));
    // Status outside memory.
    let before = rig.driver.used_idx(&rig.mem);
    let head = rig.driver.add_chain(&rig.mem, &[(HEADER, 16, false), (MEM_SIZE as u64 + 10, 1, true)]);
    process_queue(&rig.mem, &mut rig.active, &rig.interrupt, &rig.disk);
    assert_eq!(rig.driver.used(&rig.mem, before), (u32::from(head), 0));
    // A lone header.
    assert_eq!(rig.submit(&[(HEADER, 16, false)]).1, 0);
}

#[test]
fn short_header_and_unknown_type() {
    let mut rig = rig(false);
    rig.header(0, 0);
    assert_eq!(rig.submit(&[(HEADER, 8, false), (DATA, 512, true), (STATUS, 1, true)]).0, S_IOERR);
    assert_eq!(rig.request(0x1234, 0, 512, true).0, S_UNSUPP);
}

#[test]
fn descriptor_loops_end() {
    let mut rig = rig(false);
    rig.header(0, 0);
    // Descriptor 0 points to itself forever; the chain length is bounded by the queue size.
    rig.driver.write_desc(&rig.mem, 0, Desc { addr: HEADER, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 0 });
    let before = rig.driver.used_idx(&rig.mem);
    rig.driver.make_available(&rig.mem, 0);
    process_queue(&rig.mem, &mut rig.active, &rig.interrupt, &rig.disk);
    assert_eq!(rig.driver.used_idx(&rig.mem), before.wrapping_add(1));
    assert_eq!(rig.driver.used(&rig.mem, before).1, 0);
}

#[test]
fn corrupt_available_index_asks_for_reset() {
    let mut rig = rig(false);
    rig.mem.write_obj(1000u16, GuestAddress(rig.driver.avail_ring + 2)).unwrap();
    process_queue(&rig.mem, &mut rig.active, &rig.interrupt, &rig.disk);
    assert!(rig.interrupt.needs_reset());
}

#[test]
fn get_id_returns_the_serial() {
    let mut rig = rig(false);
    assert_eq!(rig.request(8, 0, ID_BYTES as u32, true), (S_OK, ID_BYTES as u32 + 1));
    let mut id = [0u8; ID_BYTES];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..16], b"disk-serial-0001");
    assert_eq!(&id[16..], &[0; 4]);
}

#[test]
fn discard_and_write_zeroes_clear_the_range() {
    let mut rig = rig(false);
    for (kind, sector) in [(11u32, 10u64), (13, 20)] {
        rig.mem.write_obj(sector, GuestAddress(DATA)).unwrap();
        rig.mem.write_obj(4u32, GuestAddress(DATA + 8)).unwrap();
        rig.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(rig.request(kind, 0, 16, false).0, S_OK);
        let file = rig.file_bytes();
        let start = sector as usize * 512;
        assert!(file[start..start + 2048].iter().all(|b| *b == 0), "type {kind}");
        assert_eq!(file[start + 2048], pattern(start as u64 + 2048));
    }
    // A range past the end fails.
    rig.mem.write_obj(DISK_SECTORS, GuestAddress(DATA)).unwrap();
    assert_eq!(rig.request(13, 0, 16, false).0, S_IOERR);
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let read_u32 = |block: &Block, offset: u64| {
        let mut bytes = [0u8; 4];
        block.read_config(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    let writable = Block::new(DiskImage::Raw(file.reopen().unwrap()), false, None).unwrap();
    // Offsets from the virtio spec (5.2.4, struct virtio_blk_config), not from the bindings.
    let limits = [
        (8, MAX_SEGMENT_BYTES, "size_max"),
        (12, MAX_SEGMENTS as u32, "seg_max"),
        (20, SECTOR_SIZE as u32, "blk_size"),
        (36, MAX_DISCARD_SECTORS, "max_discard_sectors"),
        (40, 1, "max_discard_seg"),
        (44, DISCARD_SECTOR_ALIGNMENT, "discard_sector_alignment"),
        (48, MAX_WRITE_ZEROES_SECTORS, "max_write_zeroes_sectors"),
        (52, 1, "max_write_zeroes_seg"),
    ];
    for (offset, value, field) in limits {
        assert_eq!(read_u32(&writable, offset), value, "{field}");
    }
    let mut may_unmap = [0u8];
    writable.read_config(56, &mut may_unmap);
    assert_eq!(may_unmap, [1], "write_zeroes_may_unmap");
    let features = writable.features();
    for feature in [F_SIZE_MAX, F_SEG_MAX, F_BLK_SIZE, F_FLUSH, F_DISCARD, F_WRITE_ZEROES] {
        assert_ne!(features & feature, 0, "feature {feature:#x}");
    }

    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(10 * 512 + 100).unwrap();
    let block = Block::new(DiskImage::Raw(file.reopen().unwrap()), true, None).unwrap();
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 10, "whole sectors only");
    let mut beyond = [0xffu8; 4];
    block.read_config(1000, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert_ne!(block.features() & F_RO, 0);
    assert_eq!(block.features() & F_DISCARD, 0);
}

/// The same requests on a qcow2 overlay: reads of the base through it,
/// writes, flushes, zeroes and discards in the overlay, the base untouched.
#[test]
fn a_qcow2_overlay_serves_every_request_and_leaves_its_base_alone() {
    let mut rig = rig_on(false, 16, Content::Overlay);
    let base = rig.file_bytes();
    assert_eq!(rig.disk.capacity_sectors, DISK_SECTORS);
    let read_back = |rig: &mut Rig, sector: u64, len: usize| {
        assert_eq!(rig.request(0, sector, len as u32, true), (S_OK, len as u32 + 1));
        let mut data = vec![0u8; len];
        rig.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        data
    };
    // Two segments in one read, crossing a 64 KiB cluster boundary.
    rig.header(0, 127);
    let chain = [(HEADER, 16, false), (DATA, 512, true), (DATA + 512, 1024, true), (STATUS, 1, true)];
    assert_eq!(rig.submit(&chain), (S_OK, 1537));
    let mut data = vec![0u8; 1536];
    rig.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert!(data.iter().enumerate().all(|(i, b)| *b == pattern(127 * 512 + i as u64)));

    rig.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(rig.request(1, 7, 512, false), (S_OK, 1));
    rig.header(4, 0);
    assert_eq!(rig.submit(&[(HEADER, 16, false), (STATUS, 1, true)]), (S_OK, 1), "flush");
    let data = read_back(&mut rig, 6, 1536);
    assert!(data[..512].iter().enumerate().all(|(i, b)| *b == pattern(6 * 512 + i as u64)));
    assert!(data[512..1024].iter().all(|b| *b == 0xab));
    assert_eq!(data[1024], pattern(8 * 512));

    for (kind, sector) in [(13u32, 20u64), (11, 300)] {
        rig.mem.write_obj(sector, GuestAddress(DATA)).unwrap();
        rig.mem.write_obj(4u32, GuestAddress(DATA + 8)).unwrap();
        rig.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(rig.request(kind, 0, 16, false).0, S_OK, "type {kind}");
    }
    assert!(read_back(&mut rig, 20, 2048).iter().all(|b| *b == 0), "write-zeroes");
    assert_eq!(read_back(&mut rig, 24, 512)[0], pattern(24 * 512));
    // Past the end, as for raw.
    assert_eq!(rig.request(0, DISK_SECTORS, 512, true).0, S_IOERR);
    assert_eq!(rig.file_bytes(), base, "the base is untouched");
}

mod bounds;
