//! virtio over MMIO (virtio 1.x "modern", transport version 2) and the
//! devices behind it. Everything the guest writes here is untrusted.

pub mod block;
pub mod guest_queue;
pub mod mmio;
pub mod net;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::irq::IrqLine;

/// Feature bits (virtio 1.x, section 6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Device status bits (section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits of the MMIO transport.
pub const INTERRUPT_VRING: u32 = 1;
pub const INTERRUPT_CONFIG: u32 = 2;

/// The interrupt a device raises: a status word the driver reads and
/// acknowledges, and the irqfd that delivers the GSI.
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    line: IrqLine,
}

impl Interrupt {
    pub fn new(line: IrqLine) -> Self {
        Interrupt { status: AtomicU32::new(0), needs_reset: AtomicBool::new(false), line }
    }

    /// The device cannot go on until the driver resets it (2.1.2): set
    /// DEVICE_NEEDS_RESET and send a configuration-change interrupt.
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.status.fetch_or(INTERRUPT_CONFIG, Ordering::SeqCst);
        let _ = self.line.raise();
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Forgets everything on a transport reset.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Tells the driver that used buffers are ready.
    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INTERRUPT_VRING, Ordering::SeqCst);
        if let Err(e) = self.line.raise() {
            tracing::warn!(error = %e, "virtio interrupt could not be raised");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn line(&self) -> &IrqLine {
        &self.line
    }
}

/// A queue ready to be processed: its state and the eventfd the driver kicks.
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: Arc<EventFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, the driver set up {found}")]
    QueueCount { expected: usize, found: usize },
    #[error("cannot start the device worker: {0}")]
    Worker(std::io::Error),
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Device ID (2 = block).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Reads device configuration space; bytes outside it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Starts processing with the negotiated features.
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
        features: u64,
    ) -> Result<(), ActivateError>;
    /// Stops processing; the transport then resets its own state.
    fn reset(&mut self);
}
