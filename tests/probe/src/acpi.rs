//! ACPI as a kernel reads it: RSDP -> XSDT -> FADT (-> DSDT) and MADT, every
//! checksum verified; the few DSDT facts the probe needs come from a small
//! AML scanner (devices, their `_HID`, `_CRS` resources, `_S5_`).

use crate::hw::{peek, peek_bytes};
use crate::report;

/// A Generic Address Structure (register location).
#[derive(Clone, Copy, Default)]
pub struct Gas {
    pub space: u8,
    pub address: u64,
}

impl Gas {
    fn read(addr: u64) -> Gas {
        Gas { space: peek(addr), address: peek(addr + 4) }
    }
}

#[derive(Default)]
pub struct Platform {
    pub cpus: u32,
    pub dsdt: Option<&'static [u8]>,
    pub sleep_control: Gas,
    pub pm1a_control: u32,
    pub reset_register: Gas,
    pub reset_value: u8,
    pub reset_supported: bool,
    pub ioapic: u64,
    pub tables_ok: bool,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
}

fn find_rsdp(hint: u64) -> Option<u64> {
    if hint != 0 && peek_bytes(hint, 8) == b"RSD PTR " {
        return Some(hint);
    }
    (0xe0000u64..0x100000).step_by(16).find(|&a| peek_bytes(a, 8) == b"RSD PTR " && checksum_ok(peek_bytes(a, 20)))
}

/// Reports and checks one SDT; returns its bytes.
fn table(addr: u64) -> (&'static [u8], bool) {
    let len = peek::<u32>(addr + 4) as usize;
    let bytes = peek_bytes(addr, len.clamp(36, 1 << 20));
    let ok = checksum_ok(bytes) && len >= 36;
    let sig = core::str::from_utf8(&bytes[..4]).unwrap_or("????");
    report!("acpi table={} addr={:#x} len={} checksum={}", sig, addr, len, if ok { "ok" } else { "bad" });
    (bytes, ok)
}

pub fn read(rsdp_hint: u64) -> Option<Platform> {
    let rsdp = find_rsdp(rsdp_hint)?;
    let revision: u8 = peek(rsdp + 15);
    let v1_ok = checksum_ok(peek_bytes(rsdp, 20));
    let v2_ok = revision < 2 || checksum_ok(peek_bytes(rsdp, peek::<u32>(rsdp + 20) as usize));
    report!("acpi rsdp addr={:#x} revision={} checksum={}", rsdp, revision, if v1_ok && v2_ok { "ok" } else { "bad" });
    let mut platform = Platform { tables_ok: v1_ok && v2_ok, ..Default::default() };

    // XSDT (64-bit entries) when there is one, else the RSDT.
    let (root, entry_size) = if revision >= 2 && peek::<u64>(rsdp + 24) != 0 {
        (peek::<u64>(rsdp + 24), 8)
    } else {
        (u64::from(peek::<u32>(rsdp + 16)), 4)
    };
    let (root_bytes, ok) = table(root);
    platform.tables_ok &= ok;
    let entries = (root_bytes.len() - 36) / entry_size;
    for i in 0..entries {
        let at = root + 36 + (i * entry_size) as u64;
        let addr = if entry_size == 8 { peek::<u64>(at) } else { u64::from(peek::<u32>(at)) };
        let (bytes, ok) = table(addr);
        platform.tables_ok &= ok;
        match &bytes[..4] {
            b"FACP" => read_fadt(addr, bytes.len(), &mut platform),
            b"APIC" => read_madt(bytes, &mut platform),
            _ => {}
        }
    }
    Some(platform)
}

fn read_fadt(addr: u64, len: usize, platform: &mut Platform) {
    let x_dsdt = if len >= 148 { peek::<u64>(addr + 140) } else { 0 };
    let dsdt = if x_dsdt != 0 { x_dsdt } else { u64::from(peek::<u32>(addr + 40)) };
    if dsdt != 0 {
        let (bytes, ok) = table(dsdt);
        platform.tables_ok &= ok;
        platform.dsdt = Some(bytes);
    }
    platform.pm1a_control = peek(addr + 64);
    let flags: u32 = peek(addr + 112);
    platform.reset_supported = flags & (1 << 10) != 0;
    if len >= 129 {
        platform.reset_register = Gas::read(addr + 116);
        platform.reset_value = peek(addr + 128);
    }
    if len >= 256 {
        platform.sleep_control = Gas::read(addr + 244);
    }
}

fn read_madt(bytes: &[u8], platform: &mut Platform) {
    let mut at = 44;
    while at + 2 <= bytes.len() {
        let (kind, len) = (bytes[at], usize::from(bytes[at + 1]));
        if len < 2 || at + len > bytes.len() {
            break;
        }
        let entry = &bytes[at..at + len];
        match kind {
            0 if len >= 8 && entry[4] & 1 != 0 => platform.cpus += 1,
            9 if len >= 16 && entry[8] & 1 != 0 => platform.cpus += 1,
            1 if len >= 12 => platform.ioapic = u64::from(u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]])),
            _ => {}
        }
        at += len;
    }
}

/// An AML package length at `at`: (length, bytes used by the encoding).
fn pkg_length(aml: &[u8], at: usize) -> Option<(usize, usize)> {
    let lead = *aml.get(at)?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    let mut len = usize::from(lead & 0x0f);
    for i in 0..follow {
        len |= usize::from(*aml.get(at + 1 + i)?) << (4 + 8 * i);
    }
    Some((len, follow + 1))
}

/// Length of the NameString at `at`.
fn name_string_len(aml: &[u8], at: usize) -> usize {
    let mut i = at;
    while matches!(aml.get(i), Some(b'\\') | Some(b'^')) {
        i += 1;
    }
    match aml.get(i) {
        Some(0x2e) => i + 1 + 8 - at,
        Some(0x2f) => i + 2 + 4 * usize::from(*aml.get(i + 1).unwrap_or(&0)) - at,
        Some(0x00) => i + 1 - at,
        _ => i + 4 - at,
    }
}

/// A device in the DSDT and its resources.
#[derive(Default, Clone, Copy)]
pub struct Device {
    pub name: [u8; 4],
    pub hid: [u8; 8],
    pub mmio_base: u64,
    pub mmio_len: u32,
    pub gsi: u32,
    /// The first SystemMemory OperationRegion inside the device.
    pub region: u64,
}

/// Finds the `_HID` string (or EISA id, decoded) in a device body.
fn device_hid(body: &[u8]) -> [u8; 8] {
    let mut hid = [b' '; 8];
    if let Some(at) = find(body, b"\x08_HID") {
        match body.get(at + 5) {
            Some(0x0d) => {
                for (i, b) in body[at + 6..].iter().take_while(|b| **b != 0).take(8).enumerate() {
                    hid[i] = *b;
                }
            }
            Some(0x0c) if body.len() >= at + 10 => {
                let id = u32::from_le_bytes([body[at + 6], body[at + 7], body[at + 8], body[at + 9]]).swap_bytes();
                let c = |shift: u32| b'@' + ((id >> shift) & 0x1f) as u8;
                let hex = |shift: u32| b"0123456789ABCDEF"[((id >> shift) & 0xf) as usize];
                hid[..7].copy_from_slice(&[c(26), c(21), c(16), hex(12), hex(8), hex(4), hex(0)]);
            }
            _ => {}
        }
    }
    hid
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads Memory32Fixed and extended Interrupt descriptors from a `_CRS` buffer.
fn device_resources(body: &[u8], device: &mut Device) {
    let Some(at) = find(body, b"\x08_CRS\x11") else { return };
    let Some((len, used)) = pkg_length(body, at + 6) else { return };
    let buffer_start = at + 6;
    let end = (buffer_start + len).min(body.len());
    // Skip the buffer-size integer that follows the package length.
    let mut i = buffer_start + used;
    i += match body.get(i) {
        Some(0x0a) => 2,
        Some(0x0b) => 3,
        Some(0x0c) => 5,
        _ => 1,
    };
    while i < end {
        let tag = body[i];
        if tag & 0x80 == 0 {
            if tag >> 3 == 0x0f {
                break; // end tag
            }
            i += 1 + usize::from(tag & 7);
            continue;
        }
        let Some(len) = body.get(i + 1..i + 3).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))) else { break };
        let data = &body[(i + 3).min(end)..(i + 3 + len).min(end)];
        match tag {
            0x86 if data.len() >= 9 => {
                device.mmio_base = u64::from(u32::from_le_bytes([data[1], data[2], data[3], data[4]]));
                device.mmio_len = u32::from_le_bytes([data[5], data[6], data[7], data[8]]);
            }
            0x89 if data.len() >= 6 => device.gsi = u32::from_le_bytes([data[2], data[3], data[4], data[5]]),
            _ => {}
        }
        i += 3 + len;
    }
}

fn device_region(body: &[u8]) -> u64 {
    let Some(at) = find(body, b"\x5b\x80") else { return 0 };
    let space_at = at + 2 + name_string_len(body, at + 2);
    if body.get(space_at) != Some(&0) {
        return 0; // not SystemMemory
    }
    let v = &body[space_at + 1..];
    match v.first() {
        Some(0x0c) if v.len() >= 5 => u64::from(u32::from_le_bytes([v[1], v[2], v[3], v[4]])),
        Some(0x0e) if v.len() >= 9 => u64::from_le_bytes([v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]]),
        _ => 0,
    }
}

/// Calls `visit` for each `Device` in the AML, in order.
pub fn devices(dsdt: &[u8], mut visit: impl FnMut(&Device)) {
    let aml = &dsdt[36.min(dsdt.len())..];
    let mut at = 0;
    while at + 2 < aml.len() {
        if aml[at] == 0x5b && aml[at + 1] == 0x82 {
            if let Some((len, used)) = pkg_length(aml, at + 2) {
                let name_at = at + 2 + used;
                let body_end = (at + 2 + len).min(aml.len());
                let name_len = name_string_len(aml, name_at);
                if name_at + name_len <= body_end && name_len >= 4 {
                    let body = &aml[name_at + name_len..body_end];
                    let mut device =
                        Device { hid: device_hid(body), region: device_region(body), ..Default::default() };
                    device.name.copy_from_slice(&aml[name_at + name_len - 4..name_at + name_len]);
                    device_resources(body, &mut device);
                    visit(&device);
                    at = name_at + name_len;
                    continue;
                }
            }
        }
        at += 1;
    }
}

/// SLP_TYP for S5 from the DSDT's `_S5_` package.
pub fn s5_sleep_type(dsdt: &[u8]) -> Option<u8> {
    let at = find(dsdt, b"_S5_\x12")?;
    let (_, used) = pkg_length(dsdt, at + 5)?;
    let element = at + 5 + used + 1; // skip NumElements
    match dsdt.get(element)? {
        0x0a => dsdt.get(element + 1).copied(),
        0x00 => Some(0),
        0x01 => Some(1),
        value => Some(*value),
    }
}
