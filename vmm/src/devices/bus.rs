//! Address-range dispatch of guest port I/O and MMIO exits to devices.
//!
//! A vCPU exit carries an address and a byte slice; the bus finds the device
//! whose range holds the address and hands it the offset into that range.
//! Accesses that fall in no range are ignored (reads return all ones), as on
//! real hardware: the guest may probe anything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through port I/O or MMIO.
///
/// `offset` is relative to the start of the range the device was inserted at.
/// Implementations must treat `data` (length 1..=8, any value) as untrusted.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overflows")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// One address space (port I/O or MMIO).
#[derive(Default)]
pub struct Bus {
    // Keyed by base address; ranges never overlap.
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::InvalidRange { base, len })?;
        let below = self.devices.range(..end).next_back();
        if let Some((&other_base, other)) = below {
            if other_base + other.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must lie inside the device's range.
        (offset.checked_add(size as u64)? <= entry.len).then_some((offset, &entry.device))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) if no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

// A device whose lock was poisoned by a panic on another vCPU thread is still
// the best state we have; the VM is being torn down by then anyway.
fn lock(device: &Arc<Mutex<dyn BusDevice>>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![0x41])));
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_ignored() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x10, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x2000, &mut data));
        assert_eq!(data, [0xff; 4]);
        // Last two bytes of the range plus two past it.
        assert!(!bus.read(0x100e, &mut data));
        assert!(!bus.write(u64::MAX - 1, &[0; 4]));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        assert_eq!(bus.insert(0x108, 0x10, dev.clone()), Err(BusError::Overlap { base: 0x108, len: 0x10 }));
        assert_eq!(bus.insert(0xf8, 0x10, dev.clone()), Err(BusError::Overlap { base: 0xf8, len: 0x10 }));
        assert_eq!(bus.insert(0x200, 0, dev.clone()), Err(BusError::InvalidRange { base: 0x200, len: 0 }));
        assert!(bus.insert(0x110, 0x10, dev).is_ok());
    }
}
