//! virtio-blk requests: parsed from a descriptor chain the guest wrote (and so
//! checked piece by piece), then executed against the disk image: a raw file
//! directly, a qcow2 image through `image::Qcow2Image`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use virtio_bindings::virtio_blk::{
    virtio_blk_discard_write_zeroes, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::image::DiskImage;

/// virtio-blk's unit for `sector` fields and the capacity, fixed by the spec
/// (5.2.6); also the block size the device advertises (`blk_size`).
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

// The limits the device advertises in its configuration space and enforces on
// every request, so that no request costs the host memory or time in
// proportion to a size the guest chose beyond these bounds.

/// Most data segments one request may have (`seg_max`).
pub const MAX_SEGMENTS: usize = 254;
/// Largest data segment (`size_max`). With `MAX_SEGMENTS` this caps a read or
/// write at 1016 MiB, which still fits the used ring's 32-bit length.
pub const MAX_SEGMENT_BYTES: u32 = 4 << 20;
/// Ranges one DISCARD / WRITE_ZEROES request may carry (`max_discard_seg`,
/// `max_write_zeroes_seg`); more are answered UNSUPP, as QEMU does.
pub const MAX_DISCARD_RANGES: u32 = 1;
pub const MAX_WRITE_ZEROES_RANGES: u32 = 1;
/// Largest DISCARD range (`max_discard_sectors`, 1 GiB): a hole punch, cheap
/// whatever its size.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Largest WRITE_ZEROES range (`max_write_zeroes_sectors`, 128 MiB): bounds
/// the writing a filesystem without `FALLOC_FL_ZERO_RANGE` falls back to.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 18;
/// DISCARD ranges may start at any sector (`discard_sector_alignment`):
/// punching a hole zeroes partial filesystem blocks itself.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 1;

/// Bytes of one DISCARD / WRITE_ZEROES range: sector, count, flags.
const RANGE_BYTES: u64 = std::mem::size_of::<virtio_blk_discard_write_zeroes>() as u64;
const _: () = assert!(RANGE_BYTES == 16);
const _: () = assert!((MAX_SEGMENTS as u64) * (MAX_SEGMENT_BYTES as u64) < u32::MAX as u64);
const _: () = assert!(MAX_SEGMENTS + 2 == super::QUEUE_SIZE as usize);

pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Zeros for filesystems that cannot `FALLOC_FL_ZERO_RANGE`: one fixed
/// buffer, written as often as the (bounded) range needs.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }

    /// Whether data descriptors are written by the device (true) or read (false).
    fn device_writes_data(self) -> bool {
        matches!(self, RequestType::In | RequestType::GetId)
    }
}

/// A guest buffer that lies inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    pub data: Vec<Segment>,
    pub status: GuestAddress,
}

/// Why a chain is not a request. `status` is where to report it, when the
/// chain had a usable status byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    pub reason: &'static str,
    pub status: Option<GuestAddress>,
}

fn in_ram(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    len == 0 || mem.get_slice(addr, len as usize).is_ok()
}

impl Request {
    /// Parses the descriptors of one chain: header (device-readable, 16 bytes),
    /// data segments in the direction the type requires, status (device-writable) last.
    pub fn parse(mem: &GuestMemoryMmap, chain: impl Iterator<Item = Descriptor>) -> Result<Request, ParseError> {
        // At most header, seg_max data segments and status are kept: the last
        // slot is overwritten by whatever follows, so that the status byte is
        // still the chain's last descriptor. (A queue's chains end after as
        // many descriptors as it has entries, QUEUE_SIZE = seg_max + 2.)
        let mut descriptors = Vec::with_capacity(4);
        let mut too_many_segments = false;
        for desc in chain {
            if descriptors.len() == MAX_SEGMENTS + 2 {
                too_many_segments = true;
                descriptors.pop();
            }
            descriptors.push(desc);
        }
        let fail = |reason| ParseError { reason, status: None };
        let (Some(header), Some(last)) = (descriptors.first(), descriptors.last()) else {
            return Err(fail("empty chain"));
        };
        if descriptors.len() < 2 {
            return Err(fail("a request needs a header and a status descriptor"));
        }
        if !last.is_write_only() || last.len() == 0 {
            return Err(fail("the last descriptor must be a device-writable status byte"));
        }
        let status = last.addr().checked_add(u64::from(last.len()) - 1).ok_or(fail("status address overflows"))?;
        if !in_ram(mem, status, 1) {
            return Err(fail("status byte outside guest memory"));
        }
        let fail = |reason| ParseError { reason, status: Some(status) };
        if header.is_write_only() || header.len() < 16 {
            return Err(fail("the header must be a device-readable descriptor of at least 16 bytes"));
        }
        let raw_type: u32 = mem.read_obj(header.addr()).map_err(|_| fail("header outside guest memory"))?;
        let sector: u64 =
            mem.read_obj(header.addr().unchecked_add(8)).map_err(|_| fail("header outside guest memory"))?;
        let kind = RequestType::from_raw(raw_type);
        if too_many_segments {
            return Err(fail("more data segments than seg_max"));
        }
        let data_descriptors = &descriptors[1..descriptors.len() - 1];
        let mut data = Vec::with_capacity(data_descriptors.len());
        for desc in data_descriptors {
            // Data of a request we do not support is never touched: no direction to check.
            let known = !matches!(kind, RequestType::Unsupported(_));
            if known && desc.is_write_only() != kind.device_writes_data() {
                return Err(fail("a data descriptor has the wrong direction"));
            }
            if desc.len() > MAX_SEGMENT_BYTES {
                return Err(fail("a data segment larger than size_max"));
            }
            if !in_ram(mem, desc.addr(), desc.len()) {
                return Err(fail("a data buffer lies outside guest memory"));
            }
            data.push(Segment { addr: desc.addr(), len: desc.len() });
        }
        Ok(Request { kind, sector, data, status })
    }

    fn data_len(&self) -> u64 {
        self.data.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// The disk a device serves.
pub struct Disk {
    pub image: DiskImage,
    pub readonly: bool,
    pub capacity_sectors: u64,
    pub id: [u8; ID_BYTES],
}

/// Runs `request`; returns (status, bytes the device wrote into the chain).
pub fn execute(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> (u8, u32) {
    let result = match request.kind {
        RequestType::In => read_sectors(mem, disk, request).map(|()| request.data_len() as u32),
        RequestType::Out if disk.readonly => Err(S_IOERR),
        RequestType::Out => write_sectors(mem, disk, request).map(|()| 0),
        RequestType::Flush => flush(disk).map(|()| 0),
        RequestType::GetId => get_id(mem, disk, request),
        RequestType::Discard | RequestType::WriteZeroes if disk.readonly => Err(S_IOERR),
        RequestType::Discard | RequestType::WriteZeroes => discard_or_zero(mem, disk, request).map(|()| 0),
        RequestType::Unsupported(_) => Err(S_UNSUPP),
    };
    let (status, written) = match result {
        Ok(written) => (S_OK, written),
        Err(status) => (status, 0),
    };
    // The status byte was checked to be in RAM when the request was parsed.
    let _ = mem.write_obj(status, request.status);
    (status, written + 1)
}

/// Byte offset of `sectors` at `sector`, if the range lies inside the disk.
fn disk_range(disk: &Disk, sector: u64, bytes: u64) -> Result<u64, u8> {
    if bytes % SECTOR_SIZE != 0 {
        return Err(S_IOERR);
    }
    let end = sector.checked_add(bytes / SECTOR_SIZE).ok_or(S_IOERR)?;
    if end > disk.capacity_sectors {
        return Err(S_IOERR);
    }
    Ok(sector * SECTOR_SIZE)
}

fn flush(disk: &Disk) -> Result<(), u8> {
    let result = match &disk.image {
        DiskImage::Raw(file) => file.sync_data(),
        DiskImage::Qcow2(image) => image.flush(),
    };
    result.map_err(|e| io_error("flush", e))
}

/// S_IOERR, with the cause in the debug log (a guest can cause many).
fn io_error(what: &'static str, error: std::io::Error) -> u8 {
    tracing::debug!(%error, "virtio-blk: {what} failed");
    S_IOERR
}

/// The request's data segments as guest memory slices.
fn guest_slices<'m>(
    mem: &'m GuestMemoryMmap,
    request: &Request,
) -> Result<Vec<vm_memory::VolatileSlice<'m, vm_memory::bitmap::MS<'m, GuestMemoryMmap>>>, u8> {
    request.data.iter().map(|s| mem.get_slice(s.addr, s.len as usize).map_err(|_| S_IOERR)).collect()
}

fn read_sectors(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> Result<(), u8> {
    let mut offset = disk_range(disk, request.sector, request.data_len())?;
    let file = match &disk.image {
        DiskImage::Raw(file) => file,
        DiskImage::Qcow2(image) => {
            return image.read(&guest_slices(mem, request)?, offset).map_err(|e| io_error("qcow2 read", e))
        }
    };
    for segment in &request.data {
        let slice = mem.get_slice(segment.addr, segment.len as usize).map_err(|_| S_IOERR)?;
        let guard = slice.ptr_guard_mut();
        // SAFETY: the slice is a live mapping of guest RAM of `len` bytes,
        // checked at parse time; the guard keeps it valid while we write it.
        let buf = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), slice.len()) };
        file.read_exact_at(buf, offset).map_err(|_| S_IOERR)?;
        offset += u64::from(segment.len);
    }
    Ok(())
}

fn write_sectors(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> Result<(), u8> {
    let mut offset = disk_range(disk, request.sector, request.data_len())?;
    let file = match &disk.image {
        DiskImage::Raw(file) => file,
        DiskImage::Qcow2(image) => {
            return image.write(&guest_slices(mem, request)?, offset).map_err(|e| io_error("qcow2 write", e))
        }
    };
    for segment in &request.data {
        let slice = mem.get_slice(segment.addr, segment.len as usize).map_err(|_| S_IOERR)?;
        let guard = slice.ptr_guard();
        // SAFETY: as in read_sectors; the guest may change the buffer under us,
        // which only changes what gets written, never memory safety on our side.
        let buf = unsafe { std::slice::from_raw_parts(guard.as_ptr(), slice.len()) };
        file.write_all_at(buf, offset).map_err(|_| S_IOERR)?;
        offset += u64::from(segment.len);
    }
    Ok(())
}

fn get_id(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> Result<u32, u8> {
    let mut left = &disk.id[..];
    let mut written = 0;
    for segment in &request.data {
        let n = left.len().min(segment.len as usize);
        mem.write_slice(&left[..n], segment.addr).map_err(|_| S_IOERR)?;
        left = &left[n..];
        written += n as u32;
    }
    Ok(written)
}

/// The one range a DISCARD or WRITE_ZEROES request carries (the data
/// segments hold `virtio_blk_discard_write_zeroes` structures, split across
/// descriptors however the driver likes).
fn read_range(mem: &GuestMemoryMmap, request: &Request) -> Result<(u64, u32, u32), u8> {
    let max_ranges = match request.kind {
        RequestType::Discard => MAX_DISCARD_RANGES,
        _ => MAX_WRITE_ZEROES_RANGES,
    };
    let len = request.data_len();
    if len > u64::from(max_ranges) * RANGE_BYTES {
        return Err(S_UNSUPP); // more ranges than max_discard_seg / max_write_zeroes_seg
    }
    if len != RANGE_BYTES {
        return Err(S_IOERR); // no range, or a partial one
    }
    let mut raw = [0u8; RANGE_BYTES as usize];
    let mut filled = 0;
    for segment in &request.data {
        let n = segment.len as usize;
        mem.read_slice(&mut raw[filled..filled + n], segment.addr).map_err(|_| S_IOERR)?;
        filled += n;
    }
    let sector = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
    let flags = u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
    Ok((sector, count, flags))
}

/// DISCARD punches a hole; WRITE_ZEROES punches one (UNMAP) or zeroes the
/// range in place, writing `ZEROS` where the filesystem cannot.
fn discard_or_zero(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> Result<(), u8> {
    let (sector, count, flags) = read_range(mem, request)?;
    let discard = request.kind == RequestType::Discard;
    // Discard has no flags; write-zeroes knows UNMAP only (5.2.6.2).
    let known_flags = if discard { 0 } else { VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
    if flags & !known_flags != 0 {
        return Err(S_UNSUPP);
    }
    let max_sectors = if discard { MAX_DISCARD_SECTORS } else { MAX_WRITE_ZEROES_SECTORS };
    if count > max_sectors {
        return Err(S_IOERR);
    }
    let len = u64::from(count) * SECTOR_SIZE;
    let offset = disk_range(disk, sector, len)?;
    if count == 0 {
        return Ok(());
    }
    let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
    let file = match &disk.image {
        DiskImage::Raw(file) => file,
        DiskImage::Qcow2(image) if discard => {
            return image.discard(offset, len).map_err(|e| io_error("qcow2 discard", e))
        }
        DiskImage::Qcow2(image) => {
            return image.write_zeroes(offset, len, unmap).map_err(|e| io_error("qcow2 write-zeroes", e))
        }
    };
    let punch = discard || unmap;
    let mode = if punch { libc::FALLOC_FL_PUNCH_HOLE } else { libc::FALLOC_FL_ZERO_RANGE } | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on our own open fd with a range checked against the
    // disk (offset + len <= capacity, so both fit in i64).
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 || discard {
        return Ok(()); // discard is a hint; a filesystem without hole punching may ignore it
    }
    zero_by_writing(file, offset, len)
}

fn zero_by_writing(file: &File, mut offset: u64, mut len: u64) -> Result<(), u8> {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], offset).map_err(|_| S_IOERR)?;
        offset += n;
        len -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback for filesystems without `FALLOC_FL_ZERO_RANGE`.
    #[test]
    fn zero_by_writing_covers_ranges_longer_than_its_buffer() {
        let file = tempfile::tempfile().unwrap();
        let size = 4 * ZEROS.len();
        file.write_all_at(&vec![0xaa; size], 0).unwrap();
        let (offset, len) = (512, 2 * ZEROS.len() + 1024);
        zero_by_writing(&file, offset as u64, len as u64).unwrap();
        let mut back = vec![0u8; size];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..offset].iter().all(|b| *b == 0xaa));
        assert!(back[offset..offset + len].iter().all(|b| *b == 0));
        assert!(back[offset + len..].iter().all(|b| *b == 0xaa));
    }
}
