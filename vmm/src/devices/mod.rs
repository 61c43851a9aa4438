//! Emulated devices and the buses that reach them.
pub mod acpi;
pub mod bus;
pub mod coalesced;
pub mod irq;
pub mod legacy;
pub mod manager;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
