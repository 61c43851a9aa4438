//! Firmware the guest finds in memory: ACPI tables and SMBIOS.
//!
//! `build` is a pure function of the `VmConfig`: the VM and `kvmlet
//! firmware-dump` see the very same bytes.

mod acpi;
mod dsdt;
mod smbios;

use crate::arch::layout::{ACPI_TABLES_START, RSDP_START, SMBIOS_START, SYSTEM_MEM_END};
use crate::config::VmConfig;
use crate::devices::manager::{self, MmioSlot};

/// Bytes and the guest-physical address they go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub address: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTable {
    pub signature: [u8; 4],
    pub address: u64,
    pub bytes: Vec<u8>,
}

impl AcpiTable {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.signature).into_owned()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FirmwareError {
    #[error("ACPI tables need more than the {limit} bytes reserved for them")]
    AcpiTooLarge { limit: u64 },
    #[error("SMBIOS data needs more than the {limit} bytes reserved for it")]
    SmbiosTooLarge { limit: u64 },
}

/// Everything the guest's firmware area holds.
#[derive(Debug, Clone)]
pub struct Firmware {
    pub rsdp: Blob,
    pub acpi_tables: Vec<AcpiTable>,
    pub smbios: Blob,
}

/// The firmware for `config`, with the virtio devices its device plan places.
pub fn build(config: &VmConfig) -> Result<Firmware, FirmwareError> {
    build_with_devices(config, &manager::plan(config))
}

/// The firmware for `config` declaring exactly the virtio-mmio devices in `devices`.
pub fn build_with_devices(config: &VmConfig, devices: &[MmioSlot]) -> Result<Firmware, FirmwareError> {
    let (rsdp, acpi_tables) = acpi::build(config.vcpus, devices)?;
    let smbios = smbios::build(config.uuid.as_ref(), config.serial.as_deref());
    if SMBIOS_START + smbios.bytes.len() as u64 > SYSTEM_MEM_END {
        return Err(FirmwareError::SmbiosTooLarge { limit: SYSTEM_MEM_END - SMBIOS_START });
    }
    debug_assert!(acpi_tables.iter().all(|t| t.address >= ACPI_TABLES_START && t.address < RSDP_START));
    Ok(Firmware { rsdp, acpi_tables, smbios })
}

impl Firmware {
    /// Everything to write into guest memory.
    pub fn blobs(&self) -> impl Iterator<Item = (u64, &[u8])> {
        std::iter::once((self.rsdp.address, self.rsdp.bytes.as_slice()))
            .chain(self.acpi_tables.iter().map(|t| (t.address, t.bytes.as_slice())))
            .chain(std::iter::once((self.smbios.address, self.smbios.bytes.as_slice())))
    }

    /// The SMBIOS data as `dmidecode --dump-bin` writes it (and `--from-dump`
    /// reads it): the entry point at offset 0 pointing at the table at 0x20.
    pub fn smbios_dump(&self) -> Vec<u8> {
        let table = &self.smbios.bytes[smbios::TABLE_OFFSET as usize..];
        let mut dump = smbios::entry_point(smbios::TABLE_OFFSET, table.len()).to_vec();
        dump.resize(smbios::TABLE_OFFSET as usize, 0);
        dump.extend_from_slice(table);
        dump
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_is_deterministic_and_blobs_do_not_overlap() {
        let mut config = VmConfig::new("/boot/vmlinuz");
        config.vcpus = 8;
        let a = build(&config).unwrap();
        let b = build(&config).unwrap();
        assert_eq!(a.acpi_tables, b.acpi_tables);
        let mut ranges: Vec<(u64, u64)> = a.blobs().map(|(addr, bytes)| (addr, addr + bytes.len() as u64)).collect();
        ranges.sort();
        assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0), "{ranges:x?}");
        assert!(ranges.last().unwrap().1 <= SYSTEM_MEM_END);
    }

    #[test]
    fn smbios_dump_points_at_offset_0x20() {
        let fw = build(&VmConfig::new("/boot/vmlinuz")).unwrap();
        let dump = fw.smbios_dump();
        assert_eq!(&dump[..5], b"_SM3_");
        assert_eq!(u64::from_le_bytes(dump[16..24].try_into().unwrap()), 0x20);
        assert_eq!(&dump[0x20..], &fw.smbios.bytes[0x20..]);
    }
}
