//! What the VMM told us at entry: Linux `boot_params` or PVH `hvm_start_info`.

use crate::hw::{peek, peek_bytes};

pub const PROTOCOL_LINUX: u64 = 0;
pub const PROTOCOL_PVH: u64 = 1;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
pub const MAX_E820: usize = 128;

#[derive(Clone, Copy, Default)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    pub protocol: &'static str,
    pub cmdline: &'static str,
    pub rsdp: u64,
    pub e820: [E820Entry; MAX_E820],
    pub e820_len: usize,
}

fn c_string(addr: u64) -> &'static str {
    if addr == 0 {
        return "";
    }
    let bytes = peek_bytes(addr, 4096);
    let len = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..len]).unwrap_or("<not UTF-8>")
}

pub fn read(addr: u64, protocol: u64) -> Result<BootInfo, &'static str> {
    let mut info = BootInfo { protocol: "", cmdline: "", rsdp: 0, e820: [E820Entry::default(); MAX_E820], e820_len: 0 };
    match protocol {
        PROTOCOL_LINUX => {
            info.protocol = "linux";
            let cmdline = u64::from(peek::<u32>(addr + 0x228)) | (u64::from(peek::<u32>(addr + 0x0c8)) << 32);
            info.cmdline = c_string(cmdline);
            info.rsdp = peek(addr + 0x070);
            info.e820_len = usize::from(peek::<u8>(addr + 0x1e8)).min(MAX_E820);
            for i in 0..info.e820_len {
                let entry = addr + 0x2d0 + i as u64 * 20;
                info.e820[i] = E820Entry { addr: peek(entry), size: peek(entry + 8), kind: peek(entry + 16) };
            }
        }
        PROTOCOL_PVH => {
            info.protocol = "pvh";
            if peek::<u32>(addr) != XEN_HVM_START_MAGIC {
                return Err("hvm_start_info magic mismatch");
            }
            info.cmdline = c_string(peek(addr + 0x18));
            info.rsdp = peek(addr + 0x20);
            let memmap: u64 = peek(addr + 0x28);
            info.e820_len = (peek::<u32>(addr + 0x30) as usize).min(MAX_E820);
            for i in 0..info.e820_len {
                let entry = memmap + i as u64 * 24;
                info.e820[i] = E820Entry { addr: peek(entry), size: peek(entry + 8), kind: peek(entry + 16) };
            }
        }
        _ => return Err("unknown boot protocol"),
    }
    Ok(info)
}

/// The value of `key=` on the command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split(' ').find_map(|word| word.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

pub fn e820_kind(kind: u32) -> &'static str {
    match kind {
        1 => "ram",
        2 => "reserved",
        3 => "acpi",
        4 => "nvs",
        5 => "unusable",
        _ => "other",
    }
}
