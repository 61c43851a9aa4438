//! Hardware-reduced ACPI tables: RSDP, XSDT, FADT, MADT and DSDT, laid out
//! from `ACPI_TABLES_START` with the RSDP at `RSDP_START`.

use acpi_tables::sdt::Sdt;

use super::{dsdt, AcpiTable, Blob, FirmwareError};
use crate::arch::layout::{
    ACPI_RESET_VALUE, ACPI_SHUTDOWN_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_TABLES_START, APIC_START, IOAPIC_START,
    RSDP_START,
};
use crate::devices::manager::MmioSlot;

pub const OEM_ID: [u8; 6] = *b"KVMLET";
const OEM_REVISION: u32 = 1;

fn oem_table_id(signature: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"KVMLET  ";
    id[6..8].copy_from_slice(&signature[0..2]);
    id
}

fn sdt(signature: [u8; 4], length: u32, revision: u8) -> Sdt {
    Sdt::new(signature, length, revision, OEM_ID, oem_table_id(&signature), OEM_REVISION)
}

/// A Generic Address Structure for an 8-bit I/O port register.
fn io_port_gas(port: u16) -> [u8; 12] {
    let mut gas = [0u8; 12];
    gas[0] = 1; // address space: system I/O
    gas[1] = 8; // register bit width
    gas[3] = 1; // access size: byte
    gas[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    gas
}

// FADT field offsets (ACPI 6.5, table 5.9).
const FADT_LEN: u32 = 276;
const FADT_IAPC_BOOT_ARCH: usize = 109;
const FADT_FLAGS: usize = 112;
const FADT_RESET_REG: usize = 116;
const FADT_RESET_VALUE: usize = 128;
const FADT_MINOR_VERSION: usize = 131;
const FADT_X_DSDT: usize = 140;
const FADT_SLEEP_CONTROL_REG: usize = 244;
const FADT_SLEEP_STATUS_REG: usize = 256;
const FADT_HYPERVISOR_VENDOR: usize = 268;

const FLAG_PWR_BUTTON: u32 = 1 << 4; // the power button is a control-method device (GED), not fixed
const FLAG_SLP_BUTTON: u32 = 1 << 5; // no fixed-feature sleep button
const FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;

fn fadt(dsdt_address: u64) -> Sdt {
    let mut fadt = sdt(*b"FACP", FADT_LEN, 6);
    fadt.write_u16(FADT_IAPC_BOOT_ARCH, IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_PCIE_ASPM_CONTROLS);
    fadt.write_u32(FADT_FLAGS, FLAG_HW_REDUCED_ACPI | FLAG_PWR_BUTTON | FLAG_SLP_BUTTON | FLAG_RESET_REG_SUP);
    fadt.write_bytes(FADT_RESET_REG, &io_port_gas(ACPI_SHUTDOWN_PORT));
    fadt.write_u8(FADT_RESET_VALUE, ACPI_RESET_VALUE);
    fadt.write_u8(FADT_MINOR_VERSION, 5);
    fadt.write_u64(FADT_X_DSDT, dsdt_address);
    fadt.write_bytes(FADT_SLEEP_CONTROL_REG, &io_port_gas(ACPI_SHUTDOWN_PORT));
    fadt.write_bytes(FADT_SLEEP_STATUS_REG, &io_port_gas(ACPI_SLEEP_STATUS_PORT));
    fadt.write_bytes(FADT_HYPERVISOR_VENDOR, b"KVMLET\0\0");
    fadt.update_checksum();
    fadt
}

const MADT_FLAG_PCAT_COMPAT: u32 = 1;

fn madt(vcpus: u8) -> Sdt {
    let mut madt = sdt(*b"APIC", 44, 5);
    madt.write_u32(36, APIC_START as u32);
    madt.write_u32(40, MADT_FLAG_PCAT_COMPAT);
    for id in 0..vcpus {
        // Processor Local APIC: type 0, length 8, UID, APIC id, flags (enabled).
        madt.append_slice(&[0, 8, id, id, 1, 0, 0, 0]);
    }
    // I/O APIC: type 1, length 12, id 0, reserved, address, GSI base 0.
    madt.append_slice(&[1, 12, 0, 0]);
    madt.append_slice(&(IOAPIC_START as u32).to_le_bytes());
    madt.append_slice(&0u32.to_le_bytes());
    // Interrupt source override: ISA IRQ 0 (the PIT) is wired to GSI 2, as on a PC.
    madt.append_slice(&[2, 10, 0, 0]);
    madt.append_slice(&2u32.to_le_bytes());
    madt.append_slice(&0u16.to_le_bytes());
    madt.update_checksum();
    madt
}

fn dsdt_table(virtio_devices: &[MmioSlot]) -> Sdt {
    let mut dsdt = sdt(*b"DSDT", 36, 6);
    dsdt.append_slice(&dsdt::body(virtio_devices));
    dsdt.update_checksum();
    dsdt
}

fn xsdt(entries: &[u64]) -> Sdt {
    let mut xsdt = sdt(*b"XSDT", 36, 1);
    for entry in entries {
        xsdt.append_slice(&entry.to_le_bytes());
    }
    xsdt.update_checksum();
    xsdt
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// RSDP revision 2: the 20-byte ACPI 1.0 part and the extended part, each checksummed.
fn rsdp(xsdt_address: u64) -> Vec<u8> {
    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum of the first 20 bytes
    rsdp.extend_from_slice(&OEM_ID);
    rsdp.push(2); // revision
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt_address.to_le_bytes());
    rsdp.extend_from_slice(&[0, 0, 0, 0]); // extended checksum, reserved
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    rsdp
}

/// All tables with their guest addresses, and the RSDP.
pub fn build(vcpus: u8, virtio_devices: &[MmioSlot]) -> Result<(Blob, Vec<AcpiTable>), FirmwareError> {
    let mut next = ACPI_TABLES_START;
    let mut tables = Vec::new();
    let mut place = |signature: [u8; 4], bytes: Vec<u8>| -> Result<u64, FirmwareError> {
        let address = next;
        next = (address + bytes.len() as u64).next_multiple_of(8);
        if next > RSDP_START {
            return Err(FirmwareError::AcpiTooLarge { limit: RSDP_START - ACPI_TABLES_START });
        }
        tables.push(AcpiTable { signature, address, bytes });
        Ok(address)
    };
    let dsdt_address = place(*b"DSDT", dsdt_table(virtio_devices).as_slice().to_vec())?;
    let fadt_address = place(*b"FACP", fadt(dsdt_address).as_slice().to_vec())?;
    let madt_address = place(*b"APIC", madt(vcpus).as_slice().to_vec())?;
    let xsdt_address = place(*b"XSDT", xsdt(&[fadt_address, madt_address]).as_slice().to_vec())?;
    Ok((Blob { address: RSDP_START, bytes: rsdp(xsdt_address) }, tables))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, VmConfig};
    use crate::devices::manager::plan;

    fn two_disks() -> Vec<MmioSlot> {
        let mut config = VmConfig::new("/boot/vmlinuz");
        config.disks = vec![DiskConfig::new("a"); 2];
        plan(&config)
    }

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    #[test]
    fn every_table_checksums_and_is_as_long_as_it_says() {
        let (rsdp, tables) = build(4, &two_disks()).unwrap();
        assert!(sums_to_zero(&rsdp.bytes[..20]) && sums_to_zero(&rsdp.bytes));
        for table in &tables {
            assert!(sums_to_zero(&table.bytes), "{:?}", table.signature);
            let length = u32::from_le_bytes(table.bytes[4..8].try_into().unwrap());
            assert_eq!(length as usize, table.bytes.len());
        }
        let xsdt = tables.iter().find(|t| &t.signature == b"XSDT").unwrap();
        assert_eq!(u64::from_le_bytes(rsdp.bytes[24..32].try_into().unwrap()), xsdt.address);
        assert_eq!(xsdt.bytes.len(), 36 + 16);
    }

    #[test]
    fn madt_has_one_local_apic_per_vcpu() {
        for vcpus in [1u8, 2, 32] {
            let bytes = madt(vcpus).as_slice().to_vec();
            let mut at = 44;
            let mut local_apics = 0;
            while at < bytes.len() {
                if bytes[at] == 0 {
                    assert_eq!(bytes[at + 3], local_apics, "APIC ids count up");
                    local_apics += 1;
                }
                at += bytes[at + 1] as usize;
            }
            assert_eq!(local_apics, vcpus);
        }
    }

    #[test]
    fn fadt_points_at_the_shutdown_port_and_the_dsdt() {
        let bytes = fadt(0x1234).as_slice().to_vec();
        assert_eq!(bytes.len(), FADT_LEN as usize);
        assert_eq!(&bytes[FADT_SLEEP_CONTROL_REG + 4..FADT_SLEEP_CONTROL_REG + 6], &ACPI_SHUTDOWN_PORT.to_le_bytes());
        assert_eq!(u64::from_le_bytes(bytes[FADT_X_DSDT..FADT_X_DSDT + 8].try_into().unwrap()), 0x1234);
        let flags = u32::from_le_bytes(bytes[FADT_FLAGS..FADT_FLAGS + 4].try_into().unwrap());
        assert_ne!(flags & FLAG_HW_REDUCED_ACPI, 0);
    }

    #[test]
    fn dsdt_declares_the_devices() {
        let body = dsdt::body(&two_disks());
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        for name in [&b"COM1"[..], b"GED_", b"PWRB", b"_S5_", b"V000", b"V001", b"LNRO0005", b"ACPI0013"] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!has(b"V002"));
    }
}
