//! Emulated devices and the buses that reach them.
pub mod bus;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
