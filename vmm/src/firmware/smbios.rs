//! SMBIOS 3.x: the 64-bit entry point at 0xF0000 and structures type 0 (BIOS),
//! 1 (system: the VM's UUID and serial) and 127 (end of table).

use uuid::Uuid;

use super::Blob;
use crate::arch::layout::SMBIOS_START;

const ENTRY_POINT_LEN: usize = 0x18;
/// The structure table follows the entry point at this offset.
pub const TABLE_OFFSET: u64 = 0x20;
const MANUFACTURER: &str = "kvmlet";
const PRODUCT: &str = "kvmlet";

/// One structure: formatted area then its strings (1-based indices).
struct Structure {
    bytes: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, length: u8, handle: u16) -> Self {
        let mut bytes = vec![kind, length];
        bytes.extend_from_slice(&handle.to_le_bytes());
        Structure { bytes, strings: Vec::new() }
    }

    /// Adds a string and returns its index, or 0 ("none") for an empty one.
    fn string(&mut self, value: &str) -> u8 {
        if value.is_empty() {
            return 0;
        }
        self.strings.push(value.to_string());
        self.strings.len() as u8
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn finish(self, out: &mut Vec<u8>) {
        debug_assert_eq!(self.bytes.len(), self.bytes[1] as usize);
        out.extend_from_slice(&self.bytes);
        for s in &self.strings {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        if self.strings.is_empty() {
            out.push(0);
        }
        out.push(0);
    }
}

fn bios_information(out: &mut Vec<u8>) {
    let mut s = Structure::new(0, 0x18, 0);
    let vendor = s.string(MANUFACTURER);
    let version = s.string(env!("CARGO_PKG_VERSION"));
    let date = s.string("01/01/2026");
    s.push(&[vendor, version]);
    s.push(&0xe800u16.to_le_bytes()); // BIOS starting segment
    s.push(&[date, 0]); // release date, ROM size (64 KiB units - 1)
    s.push(&(1u64 << 3).to_le_bytes()); // characteristics: "not supported" (no legacy BIOS services)
    s.push(&[0, 1 << 4]); // extension byte 2, bit 4: this is a virtual machine
    s.push(&[0, 1, 0xff, 0xff]); // BIOS release 0.1, no embedded controller
    s.finish(out);
}

/// SMBIOS stores the first three UUID fields little-endian (since 2.6).
fn smbios_uuid_bytes(uuid: &Uuid) -> [u8; 16] {
    let mut bytes = *uuid.as_bytes();
    bytes[0..4].reverse();
    bytes[4..6].reverse();
    bytes[6..8].reverse();
    bytes
}

fn system_information(out: &mut Vec<u8>, uuid: Option<&Uuid>, serial: Option<&str>) {
    let mut s = Structure::new(1, 0x1b, 1);
    let manufacturer = s.string(MANUFACTURER);
    let product = s.string(PRODUCT);
    let version = s.string(env!("CARGO_PKG_VERSION"));
    let serial = s.string(serial.unwrap_or(""));
    let family = s.string("kvmlet microVM");
    s.push(&[manufacturer, product, version, serial]);
    // No UUID configured: all zeros, which dmidecode reports as "Not Settable".
    s.push(&uuid.map(smbios_uuid_bytes).unwrap_or([0; 16]));
    s.push(&[6, 0, family]); // wake-up type: power switch; no SKU
    s.finish(out);
}

fn end_of_table(out: &mut Vec<u8>) {
    Structure::new(127, 4, 2).finish(out);
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The 64-bit entry point for a table of `table_len` bytes at `table_address`.
pub fn entry_point(table_address: u64, table_len: usize) -> [u8; ENTRY_POINT_LEN] {
    let mut ep = [0u8; ENTRY_POINT_LEN];
    ep[0..5].copy_from_slice(b"_SM3_");
    ep[6] = ENTRY_POINT_LEN as u8;
    ep[7] = 3; // SMBIOS 3.2
    ep[8] = 2;
    ep[9] = 0; // docrev
    ep[10] = 1; // entry point revision: 3.0 format
    ep[12..16].copy_from_slice(&(table_len as u32).to_le_bytes());
    ep[16..24].copy_from_slice(&table_address.to_le_bytes());
    ep[5] = checksum(&ep);
    ep
}

/// The structure table.
pub fn table(uuid: Option<&Uuid>, serial: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    bios_information(&mut out);
    system_information(&mut out, uuid, serial);
    end_of_table(&mut out);
    out
}

/// Entry point and table as one blob at `SMBIOS_START`.
pub fn build(uuid: Option<&Uuid>, serial: Option<&str>) -> Blob {
    let table = table(uuid, serial);
    let mut bytes = entry_point(SMBIOS_START + TABLE_OFFSET, table.len()).to_vec();
    bytes.resize(TABLE_OFFSET as usize, 0);
    bytes.extend(table);
    Blob { address: SMBIOS_START, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_stored_mixed_endian() {
        let uuid = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(
            smbios_uuid_bytes(&uuid),
            [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        );
    }

    #[test]
    fn entry_point_checksums_and_points_at_the_table() {
        let blob = build(None, Some("abc"));
        let ep = &blob.bytes[..ENTRY_POINT_LEN];
        assert_eq!(ep.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(u64::from_le_bytes(ep[16..24].try_into().unwrap()), SMBIOS_START + TABLE_OFFSET);
        let table = &blob.bytes[TABLE_OFFSET as usize..];
        assert_eq!(u32::from_le_bytes(ep[12..16].try_into().unwrap()) as usize, table.len());
        assert!(table.windows(4).any(|w| w == b"abc\0"));
        assert_eq!(&table[table.len() - 6..], &[127, 4, 2, 0, 0, 0]);
    }

    #[test]
    fn missing_serial_adds_no_string() {
        let table = table(None, None);
        // Type 1 starts after type 0; its serial index (offset 7) is 0.
        let type0_len = table[1] as usize;
        let strings_end = table[type0_len..].windows(2).position(|w| w == [0, 0]).unwrap() + type0_len + 2;
        assert_eq!(table[strings_end], 1);
        assert_eq!(table[strings_end + 7], 0);
    }
}
