//! The limits the device advertises, enforced on requests that break them:
//! the status byte the guest gets back for each.

use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::*;

const T_IN: u32 = VIRTIO_BLK_T_IN;
const T_DISCARD: u32 = VIRTIO_BLK_T_DISCARD;
const T_WRITE_ZEROES: u32 = VIRTIO_BLK_T_WRITE_ZEROES;
const UNMAP: u32 = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
/// A 4 MiB guest buffer of discard ranges, as the flood of issue 12 used.
const FLOOD: u64 = 0x80_0000;

/// A disk large enough for the biggest DISCARD / WRITE_ZEROES ranges (sparse: 2 GiB).
fn big_disk_rig() -> Rig {
    rig_on(false, QUEUE_SIZE, Content::Sparse { sectors: 2 * u64::from(MAX_DISCARD_SECTORS) })
}

impl Rig {
    /// Writes one 16-byte range at `at`.
    fn range(&self, at: u64, sector: u64, count: u32, flags: u32) {
        self.mem.write_obj(sector, GuestAddress(at)).unwrap();
        self.mem.write_obj(count, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    }

    /// A request of `kind` whose data is `segments` (device-readable unless `device_writes`).
    fn segmented(&mut self, kind: u32, sector: u64, segments: &[(u64, u32)], device_writes: bool) -> u8 {
        self.header(kind, sector);
        let mut chain = vec![(HEADER, 16, false)];
        chain.extend(segments.iter().map(|&(addr, len)| (addr, len, device_writes)));
        chain.push((STATUS, 1, true));
        self.submit(&chain).0
    }

    fn allocated_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.as_file().metadata().unwrap().blocks() * 512
    }
}

#[test]
fn discard_and_write_zeroes_with_more_ranges_than_advertised_are_unsupported() {
    let mut rig = rig_with(false, QUEUE_SIZE);
    let before = rig.file_bytes();
    for kind in [T_DISCARD, T_WRITE_ZEROES] {
        rig.range(DATA, 0, 1, 0);
        rig.range(DATA + 16, 8, 1, 0);
        assert_eq!(rig.segmented(kind, 0, &[(DATA, 32)], false), S_UNSUPP, "two ranges in one segment, type {kind}");
        assert_eq!(rig.segmented(kind, 0, &[(DATA, 16), (DATA + 16, 16)], false), S_UNSUPP, "type {kind}");
        // Issue 12: seg_max segments of size_max bytes of ranges each.
        let flood = vec![(FLOOD, MAX_SEGMENT_BYTES); MAX_SEGMENTS];
        assert_eq!(rig.segmented(kind, 0, &flood, false), S_UNSUPP, "flood, type {kind}");
    }
    assert_eq!(rig.file_bytes(), before, "nothing was discarded or zeroed");
}

#[test]
fn partial_ranges_fail_and_a_range_split_across_segments_works() {
    let mut rig = rig_with(false, QUEUE_SIZE);
    rig.range(DATA, 4, 2, 0);
    assert_eq!(rig.segmented(T_DISCARD, 0, &[(DATA, 8)], false), S_IOERR, "half a range");
    assert_eq!(rig.segmented(T_WRITE_ZEROES, 0, &[(DATA, 15)], false), S_IOERR, "a range short of a byte");
    assert_eq!(rig.segmented(T_DISCARD, 0, &[], false), S_IOERR, "no range");
    assert_eq!(rig.file_bytes()[4 * 512], pattern(4 * 512), "nothing happened");
    // The driver may lay the one range out over any descriptors.
    assert_eq!(rig.segmented(T_WRITE_ZEROES, 0, &[(DATA, 3), (DATA + 3, 9), (DATA + 12, 4)], false), S_OK);
    let file = rig.file_bytes();
    assert!(file[4 * 512..6 * 512].iter().all(|b| *b == 0));
    assert_eq!(file[6 * 512], pattern(6 * 512));
}

#[test]
fn unknown_flags_and_unmap_on_discard_are_unsupported() {
    let mut rig = rig_with(false, QUEUE_SIZE);
    let before = rig.file_bytes();
    rig.range(DATA, 0, 8, UNMAP);
    assert_eq!(rig.segmented(T_DISCARD, 0, &[(DATA, 16)], false), S_UNSUPP, "discard has no flags");
    rig.range(DATA, 0, 8, 2);
    assert_eq!(rig.segmented(T_WRITE_ZEROES, 0, &[(DATA, 16)], false), S_UNSUPP, "unknown write-zeroes flag");
    assert_eq!(rig.file_bytes(), before);
    rig.range(DATA, 0, 8, UNMAP);
    assert_eq!(rig.segmented(T_WRITE_ZEROES, 0, &[(DATA, 16)], false), S_OK, "write zeroes may unmap");
    assert!(rig.file_bytes()[..8 * 512].iter().all(|b| *b == 0));
}

#[test]
fn ranges_longer_than_advertised_fail_and_the_longest_allowed_work() {
    let mut rig = big_disk_rig();
    rig.range(DATA, 0, MAX_DISCARD_SECTORS + 1, 0);
    assert_eq!(rig.segmented(T_DISCARD, 0, &[(DATA, 16)], false), S_IOERR, "max_discard_sectors + 1");
    rig.range(DATA, 0, MAX_WRITE_ZEROES_SECTORS + 1, UNMAP);
    assert_eq!(rig.segmented(T_WRITE_ZEROES, 0, &[(DATA, 16)], false), S_IOERR, "max_write_zeroes_sectors + 1");
    rig.range(DATA, 0, u32::MAX, 0);
    assert_eq!(rig.segmented(T_DISCARD, 0, &[(DATA, 16)], false), S_IOERR, "u32::MAX sectors");

    // The longest ranges are served (as hole punches: cheap on a sparse file).
    rig.file.as_file().write_all_at(&[0xee; 4096], 4096).unwrap();
    assert_ne!(rig.allocated_bytes(), 0);
    rig.range(DATA, 0, MAX_DISCARD_SECTORS, 0);
    assert_eq!(rig.segmented(T_DISCARD, 0, &[(DATA, 16)], false), S_OK, "max_discard_sectors");
    rig.range(DATA, 0, MAX_WRITE_ZEROES_SECTORS, UNMAP);
    assert_eq!(rig.segmented(T_WRITE_ZEROES, 0, &[(DATA, 16)], false), S_OK, "max_write_zeroes_sectors");
    let mut back = [0xffu8; 4096];
    rig.file.as_file().read_exact_at(&mut back, 4096).unwrap();
    assert_eq!(back, [0; 4096]);
    assert_eq!(rig.file.as_file().metadata().unwrap().len(), 2 * u64::from(MAX_DISCARD_SECTORS) * SECTOR_SIZE);
}

#[test]
fn segments_larger_than_size_max_fail() {
    let mut rig = big_disk_rig();
    assert_eq!(rig.segmented(T_IN, 0, &[(FLOOD, MAX_SEGMENT_BYTES + 512)], true), S_IOERR, "size_max + 512");
    assert_eq!(rig.segmented(T_IN, 0, &[(FLOOD, MAX_SEGMENT_BYTES)], true), S_OK, "size_max");
}

#[test]
fn seg_max_segments_are_served() {
    let mut rig = rig_with(false, QUEUE_SIZE);
    let segments: Vec<(u64, u32)> = (0..MAX_SEGMENTS as u64).map(|i| (FLOOD + i * 512, 512)).collect();
    assert_eq!(rig.segmented(T_IN, 0, &segments, true), S_OK);
    let mut data = vec![0u8; MAX_SEGMENTS * 512];
    rig.mem.read_slice(&mut data, GuestAddress(FLOOD)).unwrap();
    assert!(data.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)));
}

/// The queue cannot deliver a chain with more than seg_max data segments
/// (seg_max + 2 = the queue size), so this one is handed to the parser directly.
#[test]
fn chains_with_more_segments_than_seg_max_fail_with_a_status() {
    let rig = rig_with(false, QUEUE_SIZE);
    rig.header(T_IN, 0);
    let data = (0..MAX_SEGMENTS + 40).map(|i| Descriptor::new(FLOOD + 512 * i as u64, 512, 2 | 1, 0));
    let chain = std::iter::once(Descriptor::new(HEADER, 16, 1, 0))
        .chain(data)
        .chain(std::iter::once(Descriptor::new(STATUS, 1, 2, 0)));
    let error = Request::parse(&rig.mem, chain).unwrap_err();
    assert_eq!(error.reason, "more data segments than seg_max");
    assert_eq!(error.status, Some(GuestAddress(STATUS)), "the status byte is the chain's real last descriptor");
}
