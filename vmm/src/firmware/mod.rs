//! Firmware the guest finds in memory: ACPI tables and SMBIOS.
