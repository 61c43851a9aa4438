//! SMBIOS, found the way Linux finds it without EFI: scan 0xF0000-0xFFFFF.

use crate::hw::{peek, peek_bytes};

pub struct SystemInfo {
    pub version: (u8, u8),
    pub uuid: [u8; 16],
    pub serial: &'static str,
}

fn find_entry_point() -> Option<(u64, u32, (u8, u8))> {
    let mut addr = 0xf0000u64;
    while addr < 0x100000 {
        let anchor = peek_bytes(addr, 5);
        if anchor == b"_SM3_" {
            let len = usize::from(peek::<u8>(addr + 6));
            if checksum_ok(peek_bytes(addr, len)) {
                return Some((peek(addr + 16), peek(addr + 12), (peek(addr + 7), peek(addr + 8))));
            }
        }
        if &anchor[..4] == b"_SM_" {
            let len = usize::from(peek::<u8>(addr + 5));
            if checksum_ok(peek_bytes(addr, len)) {
                let table: u32 = peek(addr + 0x18);
                let size: u16 = peek(addr + 0x16);
                return Some((u64::from(table), u32::from(size), (peek(addr + 6), peek(addr + 7))));
            }
        }
        addr += 16;
    }
    None
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
}

/// String `index` (1-based) of the structure whose strings start at `strings`.
fn string_at(strings: u64, index: u8) -> &'static str {
    if index == 0 {
        return "";
    }
    let mut at = strings;
    for _ in 1..index {
        while peek::<u8>(at) != 0 {
            at += 1;
        }
        at += 1;
    }
    let bytes = peek_bytes(at, 256);
    let len = bytes.iter().position(|b| *b == 0).unwrap_or(0);
    core::str::from_utf8(&bytes[..len]).unwrap_or("<not UTF-8>")
}

/// The type 1 (system information) structure.
pub fn system_info() -> Option<SystemInfo> {
    let (table, size, version) = find_entry_point()?;
    let end = table + u64::from(size);
    let mut at = table;
    while at + 4 <= end {
        let kind: u8 = peek(at);
        let len = u64::from(peek::<u8>(at + 1));
        if len < 4 {
            return None;
        }
        let strings = at + len;
        if kind == 1 && len >= 0x19 {
            let uuid: [u8; 16] = peek(at + 8);
            return Some(SystemInfo { version, uuid, serial: string_at(strings, peek(at + 7)) });
        }
        if kind == 127 {
            return None;
        }
        // Skip the formatted area and the string set (ends with two NULs).
        let mut next = strings;
        while next + 1 < end && (peek::<u8>(next) != 0 || peek::<u8>(next + 1) != 0) {
            next += 1;
        }
        at = next + 2;
    }
    None
}

/// Writes the UUID canonically; SMBIOS stores the first three fields little-endian.
pub fn format_uuid(b: &[u8; 16], out: &mut impl core::fmt::Write) -> core::fmt::Result {
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    for (i, idx) in order.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.write_char('-')?;
        }
        write!(out, "{:02x}", b[*idx])?;
    }
    Ok(())
}
