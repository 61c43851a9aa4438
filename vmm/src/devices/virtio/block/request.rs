//! virtio-blk requests: parsed from a descriptor chain the guest wrote (and so
//! checked piece by piece), then executed against the disk file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub const SECTOR_SIZE: u64 = 512;
/// Most data segments one request may have (advertised as `seg_max`).
pub const MAX_SEGMENTS: usize = 254;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

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
            T_IN => RequestType::In,
            T_OUT => RequestType::Out,
            T_FLUSH => RequestType::Flush,
            T_GET_ID => RequestType::GetId,
            T_DISCARD => RequestType::Discard,
            T_WRITE_ZEROES => RequestType::WriteZeroes,
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
        let mut descriptors = Vec::new();
        for desc in chain {
            if descriptors.len() == MAX_SEGMENTS + 2 {
                return Err(ParseError { reason: "too many descriptors", status: None });
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
        let mut data = Vec::with_capacity(descriptors.len() - 2);
        for desc in &descriptors[1..descriptors.len() - 1] {
            // Data of a request we do not support is never touched: no direction to check.
            let known = !matches!(kind, RequestType::Unsupported(_));
            if known && desc.is_write_only() != kind.device_writes_data() {
                return Err(fail("a data descriptor has the wrong direction"));
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
    pub file: File,
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
        RequestType::Flush => disk.file.sync_data().map(|()| 0).map_err(|_| S_IOERR),
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

fn read_sectors(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> Result<(), u8> {
    let mut offset = disk_range(disk, request.sector, request.data_len())?;
    for segment in &request.data {
        let slice = mem.get_slice(segment.addr, segment.len as usize).map_err(|_| S_IOERR)?;
        let guard = slice.ptr_guard_mut();
        // SAFETY: the slice is a live mapping of guest RAM of `len` bytes,
        // checked at parse time; the guard keeps it valid while we write it.
        let buf = unsafe { std::slice::from_raw_parts_mut(guard.as_ptr(), slice.len()) };
        disk.file.read_exact_at(buf, offset).map_err(|_| S_IOERR)?;
        offset += u64::from(segment.len);
    }
    Ok(())
}

fn write_sectors(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> Result<(), u8> {
    let mut offset = disk_range(disk, request.sector, request.data_len())?;
    for segment in &request.data {
        let slice = mem.get_slice(segment.addr, segment.len as usize).map_err(|_| S_IOERR)?;
        let guard = slice.ptr_guard();
        // SAFETY: as in read_sectors; the guest may change the buffer under us,
        // which only changes what gets written, never memory safety on our side.
        let buf = unsafe { std::slice::from_raw_parts(guard.as_ptr(), slice.len()) };
        disk.file.write_all_at(buf, offset).map_err(|_| S_IOERR)?;
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

/// DISCARD and WRITE_ZEROES carry 16-byte segments: sector, count, flags.
fn discard_or_zero(mem: &GuestMemoryMmap, disk: &Disk, request: &Request) -> Result<(), u8> {
    let mut ranges = Vec::new();
    for segment in &request.data {
        if segment.len % 16 != 0 {
            return Err(S_IOERR);
        }
        for i in 0..u64::from(segment.len) / 16 {
            let at = segment.addr.unchecked_add(i * 16);
            let sector: u64 = mem.read_obj(at).map_err(|_| S_IOERR)?;
            let count: u32 = mem.read_obj(at.unchecked_add(8)).map_err(|_| S_IOERR)?;
            let flags: u32 = mem.read_obj(at.unchecked_add(12)).map_err(|_| S_IOERR)?;
            let offset = disk_range(disk, sector, u64::from(count) * SECTOR_SIZE)?;
            ranges.push((offset, u64::from(count) * SECTOR_SIZE, flags));
        }
    }
    for (offset, len, flags) in ranges {
        let punch = request.kind == RequestType::Discard || flags & WRITE_ZEROES_FLAG_UNMAP != 0;
        let mode =
            if punch { libc::FALLOC_FL_PUNCH_HOLE } else { libc::FALLOC_FL_ZERO_RANGE } | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on our own open fd with a range checked against the disk.
        let rc = unsafe { libc::fallocate(disk.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if rc != 0 {
            if request.kind == RequestType::Discard {
                continue; // discard is a hint; a filesystem without hole punching may ignore it
            }
            zero_by_writing(&disk.file, offset, len)?;
        }
    }
    Ok(())
}

fn zero_by_writing(file: &File, mut offset: u64, mut len: u64) -> Result<(), u8> {
    let zeros = vec![0u8; 64 << 10];
    while len > 0 {
        let n = len.min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], offset).map_err(|_| S_IOERR)?;
        offset += n;
        len -= n;
    }
    Ok(())
}
