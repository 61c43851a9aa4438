//! CPU state at the kernel's entry point, for the two entry protocols:
//!
//! - 64-bit Linux boot protocol (bzImage, ELF without a PVH note): long mode,
//!   identity-mapped first 4 GiB, RSI = zero page.
//! - PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_COUNT, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryProtocol {
    /// 64-bit Linux boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode without paging, EBX = `hvm_start_info`.
    Pvh,
}

#[derive(Debug, thiserror::Error)]
#[error("write boot-time {what} to guest memory: {source}")]
pub struct RegsError {
    what: &'static str,
    source: vm_memory::GuestMemoryError,
}

/// A GDT descriptor from flags, base and limit (Intel SDM vol. 3, 3.4.5).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register matching a GDT descriptor.
fn segment(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    if granularity == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

fn gdt(protocol: EntryProtocol) -> [u64; 4] {
    let code = match protocol {
        EntryProtocol::Linux64 => gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, present, ring 0
        EntryProtocol::Pvh => gdt_entry(0xc09b, 0, 0xfffff),     // 32-bit code, 4 GiB flat
    };
    [
        gdt_entry(0, 0, 0),            // null
        code,                          // CS = 0x08
        gdt_entry(0xc093, 0, 0xfffff), // DS/ES/SS = 0x10, flat data
        gdt_entry(0x808b, 0, 0xfffff), // TR = 0x18, busy 32/64-bit TSS
    ]
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    addr: u64,
    value: T,
    what: &'static str,
) -> Result<(), RegsError> {
    mem.write_obj(value, GuestAddress(addr)).map_err(|source| RegsError { what, source })
}

/// Identity page tables for the first 4 GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write(mem, PML4_START, PDPTE_START | PAGE_PRESENT_RW, "PML4")?;
    for i in 0..PDE_COUNT {
        let pd = PDE_START + i * 0x1000;
        write(mem, PDPTE_START + i * 8, pd | PAGE_PRESENT_RW, "PDPT")?;
        for j in 0..512u64 {
            let frame = ((i * 512 + j) << 21) | PAGE_SIZE_2M | PAGE_PRESENT_RW;
            write(mem, pd + j * 8, frame, "page directory")?;
        }
    }
    Ok(())
}

/// Writes the boot GDT, IDT and (for the 64-bit protocol) page tables, and
/// returns the special registers that go with them.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    protocol: EntryProtocol,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let table = gdt(protocol);
    for (i, entry) in table.iter().enumerate() {
        write(mem, BOOT_GDT_START + i as u64 * 8, *entry, "GDT")?;
    }
    write(mem, BOOT_IDT_START, 0u64, "IDT")?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment(table[1], 1);
    let data = segment(table[2], 2);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(table[3], 3);

    match protocol {
        EntryProtocol::Linux64 => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryProtocol::Pvh => {
            // PVH: protected mode, paging off, CR4 and EFER clear.
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// General registers at the entry point.
pub fn boot_regs(protocol: EntryProtocol, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs { rflags: 0x2, rip: entry, ..Default::default() };
    match protocol {
        EntryProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryProtocol::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// x87 and SSE control words as after a processor reset with FNINIT.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_match_known_encodings() {
        // Values from the Linux boot code and Firecracker.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.g, code.selector, code.limit), (1, 0, 1, 8, 0xffff_ffff));
    }

    #[test]
    fn long_mode_sregs_and_identity_map() {
        let mem = mem();
        let sregs = boot_sregs(&mem, EntryProtocol::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        // 3 GiB + 2 MiB maps to itself through the fourth page directory.
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 8)).unwrap();
        assert_eq!(pde & !0xfff, (3 << 30) + (2 << 20));
    }

    #[test]
    fn pvh_starts_in_protected_mode_without_paging() {
        let sregs = boot_sregs(&mem(), EntryProtocol::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(boot_regs(EntryProtocol::Pvh, 0x1000).rbx, PVH_INFO_START);
        assert_eq!(boot_regs(EntryProtocol::Linux64, 0x1000).rsi, ZERO_PAGE_START);
    }
}
