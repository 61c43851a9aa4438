//! COM1: a 16550 UART (vm-superio) on port 0x3f8, IRQ 4, output to the console.
//!
//! Writes to the transmit register are coalesced by KVM when it can (no VM
//! exit per byte) while the guest polls rather than waits for the "transmit
//! empty" interrupt; they are replayed before any other access to the port
//! and at least every `REPLAY_INTERVAL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::coalesced::CoalescedRing;
use super::irq::IrqLine;
use super::BusDevice;
use crate::console::Console;

/// How long coalesced output may wait when the guest does nothing else with
/// the port: short enough for an interactive console.
pub const REPLAY_INTERVAL: Duration = Duration::from_millis(10);

/// How long the transmit interrupt must stay off before coalescing resumes.
const REARM_AFTER: Duration = Duration::from_millis(100);

const THR: u8 = 0;
const IER: u8 = 1;
const LCR: u8 = 3;
const IER_THRI: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;

pub struct SerialPort {
    uart: Serial<IrqLine, NoEvents, Console>,
    coalescing: Option<Coalescing>,
}

/// The port's coalesced-write zone and the ring KVM queues writes in.
struct Coalescing {
    ring: CoalescedRing,
    vm_fd: Arc<VmFd>,
    port: u16,
    /// Whether THR writes go to the ring now: not while the guest waits for
    /// the transmit interrupt, which needs each write seen at once.
    active: bool,
    /// Since when the guest has had the transmit interrupt off.
    thri_off_since: Option<Instant>,
}

impl Coalescing {
    /// Registers (`on`) or unregisters the zone; `active` follows what KVM did.
    fn switch(&mut self, on: bool) {
        let zone = IoEventAddress::Pio(self.port.into());
        let result = if on {
            self.vm_fd.register_coalesced_mmio(zone, 1)
        } else {
            self.vm_fd.unregister_coalesced_mmio(zone, 1)
        };
        match result {
            Ok(()) => self.active = on,
            Err(e) => tracing::warn!(error = %e, on, "switching serial write coalescing failed"),
        }
    }
}

impl SerialPort {
    pub fn new(irq: IrqLine, console: Console) -> Self {
        SerialPort { uart: Serial::new(irq, console), coalescing: None }
    }

    /// Lets KVM queue THR writes to `port` in `ring` instead of exiting.
    pub fn coalesce(&mut self, vm_fd: Arc<VmFd>, ring: CoalescedRing, port: u16) -> Result<(), kvm_ioctls::Error> {
        vm_fd.register_coalesced_mmio(IoEventAddress::Pio(port.into()), 1)?;
        self.coalescing = Some(Coalescing { ring, vm_fd, port, active: true, thri_off_since: None });
        Ok(())
    }

    /// Whether THR writes may be queued by KVM (then they need `replay`).
    pub fn is_coalescing(&self) -> bool {
        self.coalescing.is_some()
    }

    /// Feeds the queued THR writes to the UART, oldest first.
    pub fn replay(&mut self) {
        let Some(coalescing) = self.coalescing.as_mut() else { return };
        let (uart, port) = (&mut self.uart, coalescing.port);
        coalescing.ring.drain(|write| match write.bytes() {
            [byte] if write.pio && write.addr == u64::from(port) => {
                if let Err(e) = uart.write(THR, *byte) {
                    tracing::warn!(error = ?e, "serial port write failed");
                }
            }
            _ => tracing::warn!(?write, "unexpected coalesced write ignored"),
        });
    }

    /// Coalescing goes off as soon as the guest enables the transmit
    /// interrupt (a guest that waits for it must see each byte taken at
    /// once) and comes back only once the interrupt has stayed off for
    /// `REARM_AFTER` (see `rearm_if_quiet`).
    fn follow_ier(&mut self, ier: u8) {
        let Some(coalescing) = self.coalescing.as_mut() else { return };
        if ier & IER_THRI == 0 {
            coalescing.thri_off_since.get_or_insert_with(Instant::now);
            return;
        }
        coalescing.thri_off_since = None;
        if !coalescing.active {
            return;
        }
        coalescing.switch(false);
        // Writes queued before the zone went away come before this one.
        self.replay();
    }

    /// Turns coalescing back on when the transmit interrupt has been off
    /// since `REARM_AFTER` before `now`. Linux's console clears and
    /// restores IER around every message; re-registering the zone each
    /// time would cost more than the exits it saves.
    pub fn rearm_if_quiet(&mut self, now: Instant) {
        let Some(coalescing) = self.coalescing.as_mut() else { return };
        let quiet = coalescing.thri_off_since.is_some_and(|since| now.duration_since(since) >= REARM_AFTER);
        if quiet && !coalescing.active {
            coalescing.switch(true);
        }
    }

    /// Queues bytes typed on the console for the guest to read; returns how
    /// many fit in the 64-byte receive FIFO (the rest is the caller's to retry).
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(queued) => queued,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                tracing::warn!(error = ?e, "serial input interrupt failed");
                0
            }
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.replay();
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.replay();
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if offset == IER && self.uart.read(LCR) & LCR_DLAB == 0 {
                self.follow_ier(*byte);
            }
            if let Err(e) = self.uart.write(offset, *byte) {
                tracing::warn!(error = ?e, "serial port write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kvm_ioctls::Kvm;

    use super::*;
    use crate::config::ConsoleConfig;

    /// Against real KVM: the zone goes away while the guest wants the
    /// transmit interrupt and comes back after, and output keeps flowing.
    #[test]
    fn thr_writes_are_coalesced_only_while_the_transmit_interrupt_is_off() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm_fd = Arc::new(kvm.create_vm().unwrap());
        let vcpu = vm_fd.create_vcpu(0).unwrap();
        let console = Console::open(&ConsoleConfig { ring_bytes: 64, ..Default::default() }).unwrap();
        let output = console.ring().unwrap();
        let mut port = SerialPort::new(IrqLine::new().unwrap(), console);
        port.coalesce(vm_fd, CoalescedRing::map(&vcpu).unwrap(), 0x3f8).unwrap();
        let active = |port: &SerialPort| port.coalescing.as_ref().unwrap().active;
        assert!(active(&port));

        port.write(IER.into(), &[IER_THRI]);
        assert!(!active(&port), "waiting for the transmit interrupt");
        port.write(THR.into(), b"a");
        port.write(IER.into(), &[0]);
        let off = Instant::now();
        port.rearm_if_quiet(off);
        assert!(!active(&port), "not at once: the guest may turn the interrupt back on");
        // Linux's console: IER restored within a message, so no re-arming.
        port.write(IER.into(), &[IER_THRI]);
        port.rearm_if_quiet(off + REARM_AFTER * 2);
        assert!(!active(&port), "the interrupt is on again");
        port.write(IER.into(), &[0]);
        port.rearm_if_quiet(Instant::now() + REARM_AFTER);
        assert!(active(&port), "polling again for long enough");
        // With DLAB set, offset 1 is the divisor latch, not IER.
        port.write(LCR.into(), &[LCR_DLAB]);
        port.write(IER.into(), &[IER_THRI]);
        assert!(active(&port), "a divisor write is not an IER write");
        port.write(LCR.into(), &[0x03]);
        port.write(THR.into(), b"b");
        assert_eq!(output.text(), "ab");
    }
}
