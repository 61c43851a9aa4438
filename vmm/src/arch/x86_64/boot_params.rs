//! What the kernel is told at entry: the e820 memory map, command line,
//! initrd and RSDP, as a Linux zero page (`boot_params`) or a PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    CMDLINE_START, HIMEM_START, MMIO32_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, RAM_64BIT_START,
    RSDP_START, SYSTEM_MEM_END, SYSTEM_MEM_START, ZERO_PAGE_START,
};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// One e820 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The guest's memory map: low RAM, the reserved firmware area (ACPI, SMBIOS),
/// RAM from 1 MiB up to the MMIO hole, and the rest above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry { addr: 0, size: SYSTEM_MEM_START, kind: E820_RAM },
        E820Entry { addr: SYSTEM_MEM_START, size: SYSTEM_MEM_END - SYSTEM_MEM_START, kind: E820_RESERVED },
    ];
    let low_end = mem_size.min(MMIO32_START);
    if low_end > HIMEM_START {
        map.push(E820Entry { addr: HIMEM_START, size: low_end - HIMEM_START, kind: E820_RAM });
    }
    if mem_size > MMIO32_START {
        map.push(E820Entry { addr: RAM_64BIT_START, size: mem_size - MMIO32_START, kind: E820_RAM });
    }
    map
}

/// Where the initrd was loaded.
#[derive(Debug, Clone, Copy)]
pub struct InitrdRange {
    pub addr: u64,
    pub size: u64,
}

/// Inputs to the boot information, whatever the protocol.
pub struct BootInfo<'a> {
    pub e820: &'a [E820Entry],
    pub cmdline_len: usize,
    pub initrd: Option<InitrdRange>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    #[error("the memory map has {0} entries, more than the zero page holds")]
    TooManyE820Entries(usize),
    #[error("write boot information to guest memory")]
    Write(#[from] GuestMemoryError),
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: boot_params is a packed C struct of integers and arrays of integers:
// every byte pattern is a valid value and it has no padding.
unsafe impl ByteValued for ZeroPage {}

/// Writes the Linux zero page. `header` is the bzImage's setup header, or None
/// for an ELF kernel entered at its 64-bit entry point.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    info: &BootInfo,
) -> Result<(), BootInfoError> {
    let hdr = header.unwrap_or_else(|| setup_header {
        boot_flag: KERNEL_BOOT_FLAG_MAGIC,
        header: KERNEL_HDR_MAGIC,
        kernel_alignment: KERNEL_MIN_ALIGNMENT_BYTES,
        ..Default::default()
    });
    let mut params = boot_params { hdr, ..Default::default() };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some(initrd) = info.initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = RSDP_START;
    if info.e820.len() > params.e820_table.len() {
        return Err(BootInfoError::TooManyE820Entries(info.e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(info.e820) {
        *slot = boot_e820_entry { addr: entry.addr, size: entry.size, r#type: entry.kind };
    }
    params.e820_entries = info.e820.len() as u8;
    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Writes `hvm_start_info`, its memory map and module list for a PVH entry.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootInfoError> {
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: RSDP_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: info.e820.len() as u32,
        ..Default::default()
    };
    for (i, entry) in info.e820.iter().enumerate() {
        let slot = hvm_memmap_table_entry { addr: entry.addr, size: entry.size, type_: entry.kind, reserved: 0 };
        let addr = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(slot, GuestAddress(addr))?;
    }
    if let Some(initrd) = info.initrd {
        let module = hvm_modlist_entry { paddr: initrd.addr, size: initrd.size, ..Default::default() };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(start_info, GuestAddress(PVH_INFO_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserves_firmware_and_skips_the_mmio_hole() {
        let map = e820_map(4 << 30);
        assert_eq!(
            map[1],
            E820Entry { addr: SYSTEM_MEM_START, size: SYSTEM_MEM_END - SYSTEM_MEM_START, kind: E820_RESERVED }
        );
        assert_eq!(map[2], E820Entry { addr: HIMEM_START, size: MMIO32_START - HIMEM_START, kind: E820_RAM });
        assert_eq!(map[3], E820Entry { addr: RAM_64BIT_START, size: (4 << 30) - MMIO32_START, kind: E820_RAM });
        let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, (4 << 30) - (SYSTEM_MEM_END - SYSTEM_MEM_START));
        assert_eq!(e820_map(128 << 20).len(), 3);
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_rsdp_and_e820() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let e820 = e820_map(64 << 20);
        let info =
            BootInfo { e820: &e820, cmdline_len: 12, initrd: Some(InitrdRange { addr: 0x200_0000, size: 0x1000 }) };
        write_zero_page(&mem, None, &info).unwrap();
        let read_u32 = |off: u64| mem.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + off)).unwrap();
        assert_eq!(read_u32(0x202), KERNEL_HDR_MAGIC);
        assert_eq!(read_u32(0x228), CMDLINE_START as u32);
        assert_eq!(read_u32(0x218), 0x200_0000);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(ZERO_PAGE_START + 0x70)).unwrap(), RSDP_START);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(ZERO_PAGE_START + 0x1e8)).unwrap(), 3);
    }
}
