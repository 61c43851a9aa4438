//! What the probe does with its disks: list them, print the cloud-init
//! `user-data` from the `cidata` ISO 9660 seed, write, flush and read back
//! a marker sector on a data disk, and read chosen sectors of it back.

use crate::bootinfo::cmdline_value;
use crate::report;
use crate::serial;
use crate::virtio::{
    BlockDevice, ID_BYTES, MAX_TRANSFER, SECTOR_SIZE, S_IOERR, S_OK, S_TIMEOUT, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID,
    T_IN, T_OUT, T_WRITE_ZEROES,
};

const ISO_SECTOR: u64 = 2048;
const MARKER: &[u8] = b"KVMLET-PROBE-MARKER sector=";
/// Most sectors one `probe.blk_read` lists.
const MAX_BLK_READS: usize = 16;

fn status_name(status: u8) -> &'static str {
    match status {
        S_OK => "ok",
        S_IOERR => "ioerr",
        S_UNSUPP => "unsupp",
        S_TIMEOUT => "timeout",
        _ => "unknown",
    }
}

/// Reads `bytes` (at most MAX_TRANSFER) at byte `offset` (sector aligned).
fn read(dev: &mut BlockDevice, offset: u64, bytes: usize) -> Result<&[u8], u8> {
    let len = bytes.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
    match dev.request(T_IN, offset / SECTOR_SIZE as u64, len) {
        S_OK => Ok(&dev.data()[..bytes]),
        status => Err(status),
    }
}

fn trimmed(bytes: &[u8]) -> &str {
    core::str::from_utf8(bytes).unwrap_or("?").trim_end_matches([' ', '\0'])
}

/// The Rock Ridge NM name in a directory record's system use area, if any.
fn rock_ridge_name(record: &[u8]) -> Option<&[u8]> {
    let name_len = usize::from(*record.get(32)?);
    let mut at = 33 + name_len + (1 - name_len % 2);
    while at + 4 <= record.len() {
        let (sig, len) = (&record[at..at + 2], usize::from(record[at + 2]));
        if len < 4 || at + len > record.len() {
            break;
        }
        if sig == b"NM" && len > 5 {
            return Some(&record[at + 5..at + len]);
        }
        at += len;
    }
    None
}

/// Finds `user-data` on a `cidata` volume; returns (byte offset, size).
fn find_user_data(dev: &mut BlockDevice) -> Option<(u64, usize)> {
    let pvd = read(dev, 16 * ISO_SECTOR, ISO_SECTOR as usize).ok()?;
    if &pvd[1..6] != b"CD001" || pvd[0] != 1 || trimmed(&pvd[40..72]) != "cidata" {
        return None;
    }
    let root_extent = u32::from_le_bytes([pvd[158], pvd[159], pvd[160], pvd[161]]);
    let root_size = u32::from_le_bytes([pvd[166], pvd[167], pvd[168], pvd[169]]) as usize;
    let directory = read(dev, u64::from(root_extent) * ISO_SECTOR, root_size.min(MAX_TRANSFER)).ok()?;
    let mut at = 0;
    while at < directory.len() {
        let len = usize::from(directory[at]);
        if len == 0 {
            // Records do not cross sector boundaries: skip to the next sector.
            at = (at / ISO_SECTOR as usize + 1) * ISO_SECTOR as usize;
            continue;
        }
        let record = &directory[at..(at + len).min(directory.len())];
        let iso_name = record.get(33..33 + usize::from(*record.get(32)?))?;
        let is_user_data = match rock_ridge_name(record) {
            Some(name) => name == b"user-data",
            None => iso_name == b"USER_DAT.;1" || iso_name == b"USER-DATA;1" || iso_name == b"USER-DATA",
        };
        if is_user_data {
            let extent = u32::from_le_bytes([record[2], record[3], record[4], record[5]]);
            let size = u32::from_le_bytes([record[10], record[11], record[12], record[13]]) as usize;
            return Some((u64::from(extent) * ISO_SECTOR, size));
        }
        at += len;
    }
    None
}

fn print_user_data(dev: &mut BlockDevice, offset: u64, size: usize) {
    report!("user-data begin size={}", size);
    let mut done = 0;
    while done < size {
        let chunk = (size - done).min(MAX_TRANSFER);
        match read(dev, offset + done as u64, chunk) {
            Ok(bytes) => serial::write_bytes(bytes),
            Err(status) => {
                report!("error reading user-data: {}", status_name(status));
                return;
            }
        }
        done += chunk;
    }
    if size > 0 {
        serial::write_bytes(b"\n");
    }
    report!("user-data end");
}

fn write_marker(dev: &mut BlockDevice, index: usize, sector: u64) {
    let data = dev.data();
    data[..SECTOR_SIZE].fill(0);
    let mut text = crate::heapless_string::Line::new();
    let _ = core::fmt::Write::write_fmt(&mut text, format_args!("{}", sector));
    data[..MARKER.len()].copy_from_slice(MARKER);
    data[MARKER.len()..MARKER.len() + text.as_str().len()].copy_from_slice(text.as_str().as_bytes());
    let write = dev.request(T_OUT, sector, SECTOR_SIZE);
    let flush = dev.request(T_FLUSH, 0, 0);
    let readback = match dev.request(T_IN, sector, SECTOR_SIZE) {
        S_OK if dev.data()[..MARKER.len()] == *MARKER => "marker",
        S_OK => "other",
        status => status_name(status),
    };
    report!(
        "marker disk={} sector={} write={} flush={} readback={}",
        index,
        sector,
        status_name(write),
        status_name(flush),
        readback
    );
}

/// FNV-1a, 64 bits: a checksum a test recomputes in a few lines.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `probe.blk_read=SECTOR,...`: reads each sector and reports its first 16
/// bytes (hex) and the FNV-1a of all 512.
fn read_sectors(dev: &mut BlockDevice, index: usize, list: &str) {
    for sector in list.split(',').take(MAX_BLK_READS) {
        let Ok(sector) = sector.parse::<u64>() else {
            report!("error blk-read: `{}` is not a sector number", sector);
            continue;
        };
        let status = dev.request(T_IN, sector, SECTOR_SIZE);
        if status != S_OK {
            report!("blk-read disk={} sector={} status={}", index, sector, status_name(status));
            continue;
        }
        let data = &dev.data()[..SECTOR_SIZE];
        let mut head = crate::heapless_string::Line::new();
        for b in &data[..16] {
            let _ = core::fmt::Write::write_fmt(&mut head, format_args!("{:02x}", b));
        }
        report!("blk-read disk={} sector={} status=ok fnv={:016x} head={}", index, sector, fnv1a(data), head.as_str());
    }
}

/// Bytes of each data segment of a flood request.
pub const FLOOD_SEGMENT_BYTES: u32 = 4 << 20;

/// Issue 12's hostile requests: one DISCARD, then one WRITE_ZEROES, each
/// with as many data segments as the queue allows, every one the same
/// `FLOOD_SEGMENT_BYTES` of zeroed RAM at `buffer` (ranges of sector 0,
/// 0 sectors: 262144 of them per segment). A device that honours its
/// `max_discard_seg` / `max_write_zeroes_seg` of 1 answers UNSUPP at once.
fn flood(dev: &mut BlockDevice, index: usize, buffer: u64) {
    let segments = [(buffer, FLOOD_SEGMENT_BYTES); 256];
    let count = dev.max_segments().min(segments.len());
    let discard = dev.submit(T_DISCARD, 0, &segments[..count]);
    let write_zeroes = dev.submit(T_WRITE_ZEROES, 0, &segments[..count]);
    report!(
        "blk-flood disk={} segments={} segment_bytes={} discard={} write_zeroes={}",
        index,
        count,
        FLOOD_SEGMENT_BYTES,
        status_name(discard),
        status_name(write_zeroes)
    );
}

/// Visits every virtio-blk disk in DSDT order. `flood_buffer` is free RAM of
/// `FLOOD_SEGMENT_BYTES`, if there is any.
pub fn probe_disks(bases: &[u64], cmdline: &str, flood_buffer: Option<u64>) {
    let flood_wanted = cmdline_value(cmdline, "probe.blk_flood") == Some("1");
    let mut flooded = false;
    let marker_sector = cmdline_value(cmdline, "probe.marker_sector").and_then(|s| s.parse::<u64>().ok());
    let marker_disk = cmdline_value(cmdline, "probe.marker_disk").and_then(|s| s.parse::<usize>().ok());
    let blk_read = cmdline_value(cmdline, "probe.blk_read");
    let mut read_done = false;
    let mut marked = false;
    for (index, &base) in bases.iter().enumerate() {
        let mut dev = match BlockDevice::init(base) {
            Ok(dev) => dev,
            Err(why) => {
                report!("error disk={} base={:#x}: {}", index, base, why);
                continue;
            }
        };
        let serial = match dev.request(T_GET_ID, 0, ID_BYTES) {
            S_OK => {
                let id = &dev.data()[..ID_BYTES];
                let len = id.iter().position(|b| *b == 0).unwrap_or(ID_BYTES);
                let mut copy = [0u8; ID_BYTES];
                copy[..len].copy_from_slice(&id[..len]);
                (copy, len)
            }
            _ => ([0u8; ID_BYTES], 0),
        };
        let serial_text = core::str::from_utf8(&serial.0[..serial.1]).unwrap_or("?");
        report!(
            "disk index={} base={:#x} sectors={} serial={} ro={}",
            index,
            base,
            dev.capacity,
            serial_text,
            u8::from(dev.readonly)
        );
        let user_data = find_user_data(&mut dev);
        if let Some((offset, size)) = user_data {
            report!("cidata disk={}", index);
            print_user_data(&mut dev, offset, size);
        }
        let wanted = match marker_disk {
            Some(disk) => disk == index,
            None => user_data.is_none() && !marked,
        };
        if let (Some(sector), true) = (marker_sector, wanted) {
            write_marker(&mut dev, index, sector);
            marked = true;
        }
        // The same disk as the marker, read after it.
        let wanted = match marker_disk {
            Some(disk) => disk == index,
            None => user_data.is_none() && !read_done,
        };
        if let (Some(list), true) = (blk_read, wanted) {
            read_sectors(&mut dev, index, list);
            read_done = true;
        }
        if flood_wanted && !flooded && user_data.is_none() && !dev.readonly {
            match flood_buffer {
                Some(buffer) => flood(&mut dev, index, buffer),
                None => report!("error blk-flood: no free RAM for its buffer"),
            }
            flooded = true;
        }
        dev.shutdown();
    }
}
