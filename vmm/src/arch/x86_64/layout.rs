//! The guest's physical memory and I/O map, in one place so that boot code,
//! firmware tables and devices agree. Modelled on Firecracker's x86_64 layout.
//!
//! ```text
//! 0x0000_0500  boot GDT            0x0000_0520  boot IDT (empty)
//! 0x0000_6000  PVH hvm_start_info  0x0000_6040  PVH module list
//! 0x0000_6100  PVH memory map      0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack top      0x0000_9000  PML4, 0xa000 PDPT, 0xb000.. PDs (4 GiB identity)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  ACPI tables ........ 0x000e_0000 RSDP      (e820 reserved from 0x9fc00)
//! 0x000f_0000  SMBIOS 3.0 entry point + structure table
//! 0x0010_0000  kernel (bzImage protected-mode part / ELF segments), then RAM
//! 0xc000_0000  MMIO hole: GED page, then one 4 KiB page per virtio-mmio device
//! 0xfec0_0000  IO-APIC             0xfee0_0000 local APIC
//! 0x1_0000_0000 RAM above 4 GiB, when the guest has more than fits below the hole
//! ```

/// Boot-time GDT written by the VMM for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot-time IDT (limit 0: any exception during early boot is a triple fault).
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH boot: `hvm_start_info`, its module list (initrd) and memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6100;

/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Identity page tables for the 64-bit entry: PML4, one PDPT and four page
/// directories of 2 MiB pages mapping the first 4 GiB (RAM and the MMIO hole).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const PDE_COUNT: u64 = 4;

/// Kernel command line and its maximum length including the NUL.
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 4096;

/// Start of the reserved low region (ACPI tables, RSDP, SMBIOS, BIOS area).
pub const SYSTEM_MEM_START: u64 = 0x9_fc00;
/// ACPI tables live in [ACPI_TABLES_START, RSDP_START).
pub const ACPI_TABLES_START: u64 = SYSTEM_MEM_START;
/// RSDP, also passed in `boot_params.acpi_rsdp_addr` / `hvm_start_info.rsdp_paddr`.
pub const RSDP_START: u64 = 0xe_0000;
/// SMBIOS 3.0 entry point; the structure table follows it.
pub const SMBIOS_START: u64 = 0xf_0000;
/// End of the reserved low region.
pub const SYSTEM_MEM_END: u64 = 0x10_0000;

/// Where kernels are loaded (bzImage protected-mode code, ELF/PVH segments start at or above).
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO hole below 4 GiB; RAM that does not fit below it continues at 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_END: u64 = 0x1_0000_0000;
pub const RAM_64BIT_START: u64 = MMIO32_END;

/// Generic Event Device: one page, first byte = pending-event register (read clears).
pub const GED_MMIO_START: u64 = MMIO32_START;
pub const GED_MMIO_SIZE: u64 = 0x1000;
/// GED event bit for the ACPI power button (Cloud Hypervisor's value).
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 3;

/// virtio-mmio devices: one 4 KiB page each, in disk order.
pub const VIRTIO_MMIO_START: u64 = GED_MMIO_START + GED_MMIO_SIZE;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// KVM's TSS (KVM_SET_TSS_ADDR): three pages of guest-physical space outside
/// RAM and every device window, below the 4 GiB boundary.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_TSS_SIZE: u64 = 3 * 0x1000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_LEN: u16 = 8;
/// The i8042 window: the data port, then the command/status port at
/// `I8042_COMMAND_OFFSET` (0x60..=0x64).
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_OFFSET: u16 = 4;
pub const I8042_COMMAND_PORT: u16 = I8042_DATA_PORT + I8042_COMMAND_OFFSET;
pub const I8042_PORT_LEN: u16 = I8042_COMMAND_OFFSET + 1;
/// ACPI shutdown device (Cloud Hypervisor's convention): the FADT sleep-control
/// and reset registers both point at `ACPI_SHUTDOWN_PORT`; sleep status is
/// `ACPI_SLEEP_STATUS_OFFSET` bytes further.
pub const ACPI_SHUTDOWN_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_OFFSET: u16 = 1;
pub const ACPI_SLEEP_STATUS_PORT: u16 = ACPI_SHUTDOWN_PORT + ACPI_SLEEP_STATUS_OFFSET;
pub const ACPI_SHUTDOWN_PORT_LEN: u16 = 8;
/// Value the guest writes to the reset register to reboot.
pub const ACPI_RESET_VALUE: u8 = 1;
/// Sleep type for S5 (soft off), as `_S5_` tells the guest.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// Interrupt lines (GSIs on the in-kernel IO-APIC).
pub const COM1_IRQ: u32 = 4;
pub const GED_IRQ: u32 = 5;
pub const VIRTIO_IRQ_BASE: u32 = 6;
/// IO-APIC pins 6..=23 are free for virtio devices.
pub const MAX_VIRTIO_DEVICES: usize = 18;

/// The guest sees at most this many vCPUs.
pub const MAX_VCPUS: u8 = 32;

// The low structures must not overlap; checked at compile time.
const _: () = assert!(PDE_START + PDE_COUNT * 0x1000 <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= SYSTEM_MEM_START);
const _: () = assert!(ACPI_TABLES_START < RSDP_START && RSDP_START < SMBIOS_START);
// KVM's TSS sits between the local APIC page and 4 GiB, clear of RAM and devices.
const _: () = assert!(APIC_START + 0x1000 <= KVM_TSS_ADDRESS && KVM_TSS_ADDRESS + KVM_TSS_SIZE <= MMIO32_END);
const _: () = assert!(ACPI_SLEEP_STATUS_OFFSET < ACPI_SHUTDOWN_PORT_LEN);

/// Base address of virtio-mmio device `index`.
pub const fn virtio_mmio_base(index: usize) -> u64 {
    VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE
}

/// GSI of virtio-mmio device `index`.
pub const fn virtio_irq(index: usize) -> u32 {
    VIRTIO_IRQ_BASE + index as u32
}

/// Guest RAM regions for `mem_size` bytes: below the MMIO hole, and the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    let below = mem_size.min(MMIO32_START);
    let mut regions = vec![(0, below)];
    if mem_size > below {
        regions.push((RAM_64BIT_START, mem_size - below));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions, vec![(0, MMIO32_START), (RAM_64BIT_START, (4 << 30) - MMIO32_START)]);
    }

    #[test]
    fn low_structures_do_not_overlap() {
        assert!(virtio_mmio_base(MAX_VIRTIO_DEVICES) <= IOAPIC_START);
        assert_eq!(virtio_irq(MAX_VIRTIO_DEVICES - 1), 23);
    }
}
