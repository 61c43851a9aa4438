//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2): one 4 KiB
//! register window per device. Register writes that the device status does not
//! allow are ignored, as the spec says a device may; nothing a driver writes
//! can make the VMM panic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{status, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::irq::IrqLine;
use crate::devices::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of QueueNotify, where ioeventfds are registered.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    notify: Vec<Arc<EventFd>>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    active: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("queue of size {0}: {1:?}")]
    Queue(u16, virtio_queue::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestMemoryMmap, irq: IrqLine) -> Result<Self, TransportError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| TransportError::Queue(max, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let notify = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new).map_err(TransportError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            memory,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            notify,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            active: false,
        })
    }

    /// (offset of QueueNotify, queue index, eventfd) for ioeventfd registration.
    pub fn queue_notifiers(&self) -> impl Iterator<Item = (u64, u32, &EventFd)> {
        self.notify.iter().enumerate().map(|(i, evt)| (REG_QUEUE_NOTIFY, i as u32, evt.as_ref()))
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.has(status::FEATURES_OK) && !self.has(status::DRIVER_OK) && !self.has(status::FAILED)
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.clear();
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        self.driver_features & VIRTIO_F_VERSION_1 != 0 && self.driver_features & !offered == 0
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (2.1.1); anything else is a bug we refuse.
        if value & self.status != self.status {
            tracing::warn!(old = self.status, new = value, "virtio-mmio: driver cleared status bits; ignored");
            return;
        }
        let added = value & !self.status;
        if added & status::DRIVER != 0 && !self.has(status::ACKNOWLEDGE) && value & status::ACKNOWLEDGE == 0 {
            return;
        }
        if added & status::FEATURES_OK != 0 && (value & status::DRIVER == 0 || !self.features_acceptable()) {
            // Leaving FEATURES_OK clear tells the driver its features were refused.
            self.status = value & !status::FEATURES_OK;
            return;
        }
        if added & status::DRIVER_OK != 0 {
            if value & status::FEATURES_OK == 0 {
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn activate(&mut self) {
        if self.has(status::DEVICE_NEEDS_RESET) {
            return;
        }
        let ready: Vec<bool> = self.queues.iter().map(|q| q.ready() && q.is_valid(&self.memory)).collect();
        if ready.iter().any(|ready| !ready) {
            tracing::warn!(?ready, "virtio-mmio: DRIVER_OK with a queue that is not ready and valid");
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        // The device gets its own copy of each queue; the transport keeps the
        // registers' view for reads until the next reset.
        let copies: Result<Vec<Queue>, _> = self.queues.iter().map(|q| Queue::try_from(q.state())).collect();
        let Ok(copies) = copies else {
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        };
        let queues = copies
            .into_iter()
            .zip(&self.notify)
            .map(|(queue, notify)| ActiveQueue { queue, notify: notify.clone() })
            .collect();
        match self.device.activate(self.memory.clone(), queues, self.interrupt.clone(), self.driver_features) {
            Ok(()) => self.active = true,
            Err(e) => {
                tracing::error!(error = %e, "virtio device activation failed");
                self.status |= status::DEVICE_NEEDS_RESET;
            }
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS if self.interrupt.needs_reset() => self.status | status::DEVICE_NEEDS_RESET,
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0, // the configuration never changes
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let config_allowed = self.queue_config_allowed();
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if self.has(status::DRIVER) && !self.has(status::FEATURES_OK) => {
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM if config_allowed => {
                let Some(q) = self.selected_queue() else { return };
                let max = u32::from(q.max_size());
                if value == 0 || value > max || !value.is_power_of_two() {
                    // A size the queue cannot take would leave driver and device
                    // disagreeing about the rings: ask for a reset instead.
                    tracing::warn!(value, max, "virtio-mmio: invalid queue size; device needs reset");
                    self.status |= status::DEVICE_NEEDS_RESET;
                } else {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY if config_allowed => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH
                if config_allowed =>
            {
                let high = offset & 4 != 0;
                let (low, high) = if high { (None, Some(value)) } else { (Some(value), None) };
                if let Some(q) = self.selected_queue() {
                    match offset & !4 {
                        REG_QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            REG_QUEUE_NOTIFY if self.active => {
                if let Some(evt) = self.notify.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.write_status(value),
            _ => tracing::debug!(offset, value, status = self.status, "virtio-mmio: write ignored"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and read whole.
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            return; // virtio-blk's configuration is read-only
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return };
        if offset % 4 == 0 {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Counters {
        activations: AtomicUsize,
        resets: AtomicUsize,
    }

    struct Dummy(Arc<Counters>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1 << 9
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            q: Vec<ActiveQueue>,
            _: Arc<Interrupt>,
            _: u64,
        ) -> Result<(), ActivateError> {
            assert_eq!(q.len(), 1);
            self.0.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) {
            self.0.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn transport() -> (MmioTransport, Arc<Counters>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let counters = Arc::new(Counters::default());
        (MmioTransport::new(Box::new(Dummy(counters.clone())), mem, IrqLine::new().unwrap()).unwrap(), counters)
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn set_up_queue(t: &mut MmioTransport) {
        write(t, REG_QUEUE_SEL, 0);
        write(t, REG_QUEUE_NUM, 16);
        write(t, REG_QUEUE_DESC_LOW, 0x1000);
        write(t, REG_QUEUE_DRIVER_LOW, 0x2000);
        write(t, REG_QUEUE_DEVICE_LOW, 0x3000);
        write(t, REG_QUEUE_READY, 1);
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        write(t, REG_STATUS, status::ACKNOWLEDGE);
        write(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(t, REG_DRIVER_FEATURES_SEL, 0);
        write(t, REG_DRIVER_FEATURES, features as u32);
        write(t, REG_DRIVER_FEATURES_SEL, 1);
        write(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        write(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport();
        assert_eq!(read(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(read(&mut t, REG_VERSION), 2);
        assert_eq!(read(&mut t, REG_DEVICE_ID), 2);
        write(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 16);
        let mut narrow = [0xffu8; 2];
        t.read(REG_MAGIC, &mut narrow);
        assert_eq!(narrow, [0, 0], "registers are only read 32 bits wide");
    }

    #[test]
    fn full_initialisation_activates_the_device() {
        let (mut t, counters) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        assert_ne!(read(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
        set_up_queue(&mut t);
        write(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(counters.activations.load(Ordering::SeqCst), 1);
        assert_eq!(read(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
        write(&mut t, REG_STATUS, 0);
        assert_eq!(counters.resets.load(Ordering::SeqCst), 1);
        assert_eq!(read(&mut t, REG_STATUS), 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 0, "reset clears the queues");
    }

    #[test]
    fn features_without_version_1_or_unoffered_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 9);
        assert_eq!(read(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(read(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn writes_in_the_wrong_state_are_ignored() {
        let (mut t, counters) = transport();
        // Queue setup before FEATURES_OK does nothing.
        set_up_queue(&mut t);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 0);
        // DRIVER_OK without FEATURES_OK does not activate.
        write(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
        assert_eq!(counters.activations.load(Ordering::SeqCst), 0);
        // Features cannot change after FEATURES_OK.
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        write(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        write(&mut t, REG_DRIVER_FEATURES, 0);
        assert_eq!(t.driver_features, VIRTIO_F_VERSION_1);
        // Clearing a status bit without a reset is refused.
        write(&mut t, REG_STATUS, status::ACKNOWLEDGE);
        assert_ne!(read(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
        // Out-of-range queue selection is harmless.
        write(&mut t, REG_QUEUE_SEL, 7);
        write(&mut t, REG_QUEUE_NUM, 8);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn bad_queue_at_driver_ok_asks_for_reset() {
        let (mut t, counters) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        write(&mut t, REG_QUEUE_NUM, 12); // not a power of two
        write(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        write(&mut t, REG_QUEUE_DRIVER_LOW, 0x2000);
        write(&mut t, REG_QUEUE_DEVICE_LOW, 0x3000);
        write(&mut t, REG_QUEUE_READY, 1);
        write(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(counters.activations.load(Ordering::SeqCst), 0);
        assert_ne!(read(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);

        let (mut t, counters) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        write(&mut t, REG_QUEUE_DESC_HIGH, 0xffff_ffff); // outside guest memory
        write(&mut t, REG_QUEUE_NUM, 16);
        write(&mut t, REG_QUEUE_DRIVER_LOW, 0x2000);
        write(&mut t, REG_QUEUE_DEVICE_LOW, 0x3000);
        write(&mut t, REG_QUEUE_READY, 1);
        write(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(counters.activations.load(Ordering::SeqCst), 0);
        assert_ne!(read(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn config_space_is_readable_and_interrupts_acknowledge() {
        let (mut t, _) = transport();
        let mut byte = [0u8; 1];
        t.read(CONFIG_SPACE + 5, &mut byte);
        assert_eq!(byte, [5]);
        t.interrupt().signal_used_queue();
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 1);
        write(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 0);
    }
}
