//! Partition tables: MBR (primary and logical partitions) and GPT (primary
//! header, else the backup), or none (a whole-disk file system). Every
//! number read from the disk is checked against the disk's size; a table
//! that makes no sense is treated as no table, never trusted.

use std::io;

use super::DiskRead;

/// Primary MBR entries, then at most this many logical partitions (EBR hops).
const MAX_LOGICAL: usize = 64;
/// GPT entries read at most (the specification's minimum array holds 128).
const MAX_GPT_ENTRIES: u32 = 256;
/// GPT entry sizes accepted (128 in practice; the specification allows 128·2^n).
const MAX_GPT_ENTRY_SIZE: u32 = 1024;

/// Which table the disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
    /// No table: the whole disk is one file system (number 0).
    None,
}

/// One partition: a byte range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// As Linux numbers it (`vda1` is 1; logical MBR partitions from 5); 0 is the whole disk.
    pub number: u32,
    pub start: u64,
    pub len: u64,
    /// An EFI system partition (GPT type, or MBR type 0xEF).
    pub esp: bool,
}

/// The disk's table and its partitions in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
}

/// EFI system partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as stored (mixed endian).
const ESP_GUID: [u8; 16] =
    [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]])
}

/// Reads the partition table. Only I/O errors fail: a missing or senseless
/// table is `TableKind::None` (the whole disk).
pub fn read(disk: &dyn DiskRead) -> io::Result<Table> {
    let size = disk.len();
    let whole =
        Table { kind: TableKind::None, partitions: vec![Partition { number: 0, start: 0, len: size, esp: false }] };
    if size < 512 {
        return Ok(whole);
    }
    let mut mbr = [0u8; 512];
    disk.read_at(&mut mbr, 0)?;
    // A file system on the whole disk: FAT's boot sector also ends in 55 AA.
    if mbr[510..512] != [0x55, 0xaa] || looks_like_fat_boot_sector(&mbr) {
        return Ok(whole);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)]).collect();
    // A protective MBR: the table is the GPT.
    if entries.iter().any(|e| e[4] == 0xee) {
        for sector in [512u64, 4096] {
            if let Some(partitions) = gpt(disk, sector)? {
                return Ok(Table { kind: TableKind::Gpt, partitions });
            }
        }
        return Ok(whole);
    }
    // Boot indicators are 0x00 or 0x80 in a real table.
    if entries.iter().any(|e| e[0] & 0x7f != 0) {
        return Ok(whole);
    }
    let mut partitions = Vec::new();
    let mut extended = None;
    for (index, entry) in entries.iter().enumerate() {
        let (kind, start, count) = (entry[4], u64::from(u32_at(entry, 8)), u64::from(u32_at(entry, 12)));
        if kind == 0 || count == 0 {
            continue;
        }
        let Some(range) = in_disk(start, count, 512, size) else { continue };
        if matches!(kind, 0x05 | 0x0f | 0x85) {
            extended.get_or_insert(range);
            continue;
        }
        partitions.push(Partition { number: index as u32 + 1, start: range.0, len: range.1, esp: kind == 0xef });
    }
    if let Some((start, len)) = extended {
        partitions.extend(logical(disk, start, len)?);
    }
    if partitions.is_empty() {
        return Ok(whole);
    }
    Ok(Table { kind: TableKind::Mbr, partitions })
}

/// `count` sectors of `sector` bytes from sector `start`, as a byte range inside the disk.
fn in_disk(start: u64, count: u64, sector: u64, size: u64) -> Option<(u64, u64)> {
    let start = start.checked_mul(sector)?;
    let len = count.checked_mul(sector)?;
    (start > 0 && start.checked_add(len)? <= size).then_some((start, len))
}

/// A FAT boot sector: a jump, a power-of-two sector size and a non-zero
/// cluster size, as the kernel's msdos driver checks.
pub(super) fn looks_like_fat_boot_sector(sector: &[u8]) -> bool {
    let jump = sector[0] == 0xe9 || (sector[0] == 0xeb && sector[2] == 0x90);
    let bytes_per_sector = u16_at(sector, 11);
    let per_cluster = sector[13];
    jump && bytes_per_sector.is_power_of_two()
        && (512..=4096).contains(&bytes_per_sector)
        && per_cluster.is_power_of_two()
        && sector[16] != 0 // number of FATs
}

/// The logical partitions: a chain of extended boot records inside the
/// extended partition, each holding one partition and the link to the next.
fn logical(disk: &dyn DiskRead, ext_start: u64, ext_len: u64) -> io::Result<Vec<Partition>> {
    let mut found = Vec::new();
    let mut ebr = ext_start;
    let mut seen = Vec::new();
    let ext_end = ext_start + ext_len;
    while found.len() < MAX_LOGICAL && !seen.contains(&ebr) {
        seen.push(ebr);
        let mut sector = [0u8; 512];
        disk.read_at(&mut sector, ebr)?;
        if sector[510..512] != [0x55, 0xaa] {
            break;
        }
        let (this, next) = (&sector[446..462], &sector[462..478]);
        let count = u64::from(u32_at(this, 12));
        if this[4] != 0 && count > 0 {
            let start = (ebr / 512).checked_add(u64::from(u32_at(this, 8)));
            if let Some((start, len)) = start.and_then(|s| in_disk(s, count, 512, ext_end)) {
                let number = 5 + found.len() as u32;
                found.push(Partition { number, start, len, esp: this[4] == 0xef });
            }
        }
        // The next EBR is relative to the extended partition's start.
        if next[4] == 0 || u32_at(next, 8) == 0 {
            break;
        }
        match (ext_start / 512).checked_add(u64::from(u32_at(next, 8))).and_then(|s| in_disk(s, 1, 512, ext_end)) {
            Some((next_ebr, _)) => ebr = next_ebr,
            None => break,
        }
    }
    Ok(found)
}

/// The GPT with `sector`-byte logical blocks: the primary header at LBA 1,
/// else the backup at the last LBA; None when neither is valid.
fn gpt(disk: &dyn DiskRead, sector: u64) -> io::Result<Option<Vec<Partition>>> {
    let size = disk.len();
    let last_lba = (size / sector).saturating_sub(1);
    if last_lba < 2 {
        return Ok(None);
    }
    for lba in [1, last_lba] {
        let mut header = vec![0u8; sector as usize];
        disk.read_at(&mut header, lba * sector)?;
        if let Some(partitions) = gpt_at(disk, &header, sector)? {
            return Ok(Some(partitions));
        }
    }
    Ok(None)
}

fn gpt_at(disk: &dyn DiskRead, header: &[u8], sector: u64) -> io::Result<Option<Vec<Partition>>> {
    if &header[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_size = u32_at(header, 12) as usize;
    if !(92..=header.len()).contains(&header_size) {
        return Ok(None);
    }
    let mut checked = header[..header_size].to_vec();
    checked[16..20].fill(0);
    if crc32(&checked) != u32_at(header, 16) {
        return Ok(None);
    }
    let (entries_lba, count, entry_size) = (u64_at(header, 72), u32_at(header, 80), u32_at(header, 84));
    if !(1..=MAX_GPT_ENTRIES).contains(&count)
        || !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size)
        || entry_size % 8 != 0
    {
        return Ok(None);
    }
    let bytes = u64::from(count) * u64::from(entry_size);
    let Some(start) = entries_lba.checked_mul(sector) else { return Ok(None) };
    if start.checked_add(bytes).is_none_or(|end| end > disk.len()) {
        return Ok(None);
    }
    let mut array = vec![0u8; bytes as usize];
    disk.read_at(&mut array, start)?;
    if crc32(&array) != u32_at(header, 88) {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    for (index, entry) in array.chunks_exact(entry_size as usize).enumerate() {
        if entry[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (u64_at(entry, 32), u64_at(entry, 40));
        let Some(count) = last.checked_sub(first).and_then(|n| n.checked_add(1)) else { continue };
        if let Some((start, len)) = in_disk(first, count, sector, disk.len()) {
            let esp = entry[0..16] == ESP_GUID;
            partitions.push(Partition { number: index as u32 + 1, start, len, esp });
        }
    }
    Ok(Some(partitions))
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn short_and_empty_disks_are_whole_disks() {
        for disk in [Vec::new(), vec![0u8; 100], vec![0u8; 4096]] {
            let table = read(&disk).unwrap();
            assert_eq!(table.kind, TableKind::None);
            assert_eq!(table.partitions[0].len, disk.len() as u64);
        }
    }

    #[test]
    fn entries_outside_the_disk_and_bad_boot_flags_are_not_trusted() {
        let mut disk = vec![0u8; 1 << 20];
        disk[510] = 0x55;
        disk[511] = 0xaa;
        // Entry 1: type 0x83 from sector 2048, 2048 sectors: past the 1 MiB disk.
        disk[446 + 4] = 0x83;
        disk[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        disk[446 + 12..446 + 16].copy_from_slice(&2048u32.to_le_bytes());
        assert_eq!(read(&disk).unwrap().kind, TableKind::None);
        // Fits: from sector 1 to the end.
        disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        disk[446 + 12..446 + 16].copy_from_slice(&2047u32.to_le_bytes());
        let table = read(&disk).unwrap();
        assert_eq!(table.kind, TableKind::Mbr);
        assert_eq!(table.partitions, [Partition { number: 1, start: 512, len: 2047 * 512, esp: false }]);
        disk[446] = 0x13; // not a boot indicator
        assert_eq!(read(&disk).unwrap().kind, TableKind::None);
    }

    #[test]
    fn an_extended_partition_linking_to_itself_ends() {
        let mut disk = vec![0u8; 1 << 20];
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
        disk[446 + 4] = 0x05;
        disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        disk[446 + 12..446 + 16].copy_from_slice(&2047u32.to_le_bytes());
        // The EBR at sector 1: a logical partition and a link back to itself.
        let ebr = 512;
        disk[ebr + 510..ebr + 512].copy_from_slice(&[0x55, 0xaa]);
        disk[ebr + 446 + 4] = 0x83;
        disk[ebr + 446 + 8..ebr + 446 + 12].copy_from_slice(&1u32.to_le_bytes());
        disk[ebr + 446 + 12..ebr + 446 + 16].copy_from_slice(&100u32.to_le_bytes());
        disk[ebr + 462 + 4] = 0x05;
        disk[ebr + 462 + 8..ebr + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
        let table = read(&disk).unwrap();
        assert_eq!(table.partitions.len(), 1, "{table:?}");
        assert_eq!(table.partitions[0].number, 5);
    }

    #[test]
    fn a_gpt_with_a_bad_checksum_is_not_read() {
        let mut disk = vec![0u8; 1 << 20];
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
        disk[446 + 4] = 0xee;
        disk[512..520].copy_from_slice(b"EFI PART");
        disk[512 + 12..512 + 16].copy_from_slice(&92u32.to_le_bytes());
        assert_eq!(read(&disk).unwrap().kind, TableKind::None);
    }
}
