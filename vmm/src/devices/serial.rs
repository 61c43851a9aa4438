//! COM1: a 16550 UART (vm-superio) on port 0x3f8, IRQ 4, output to the console.
//!
//! Writes to the transmit register are coalesced by KVM when it can (no VM
//! exit per byte) while the guest polls rather than waits for the "transmit
//! empty" interrupt; they are replayed before any other access to the port
//! and, while output flows, at least every `REPLAY_INTERVAL`.
//!
//! An idle guest must not wake the host, so the coalescing zone exists only
//! while output flows: the first write of a burst exits to us (the zone is
//! off), which turns the zone on and rings the flusher's `Doorbell`; the
//! flusher replays every `REPLAY_INTERVAL` and, once the ring stayed empty
//! for `QUIET_AFTER`, turns the zone off again and sleeps until the next
//! burst. A silent guest therefore costs no periodic wake-up at all.

use std::sync::{Arc, Condvar, Mutex};
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

/// How long the ring must stay empty before the zone goes off and the
/// flusher sleeps until the next burst.
pub const QUIET_AFTER: Duration = Duration::from_millis(200);

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
    /// Wakes the flusher when the zone goes on.
    doorbell: Arc<Doorbell>,
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
            Ok(()) => {
                self.active = on;
                if on {
                    self.doorbell.ring();
                }
            }
            Err(e) => tracing::warn!(error = %e, on, "switching serial write coalescing failed"),
        }
    }
}

impl SerialPort {
    pub fn new(irq: IrqLine, console: Console) -> Self {
        SerialPort { uart: Serial::new(irq, console), coalescing: None }
    }

    /// Lets KVM queue THR writes to `port` in `ring` instead of exiting.
    /// The zone starts on (boot output follows at once); `flush_while_pending`
    /// must run on the returned doorbell.
    pub fn coalesce(
        &mut self,
        vm_fd: Arc<VmFd>,
        ring: CoalescedRing,
        port: u16,
    ) -> Result<Arc<Doorbell>, kvm_ioctls::Error> {
        vm_fd.register_coalesced_mmio(IoEventAddress::Pio(port.into()), 1)?;
        let doorbell = Arc::new(Doorbell::default());
        doorbell.ring();
        // Polling since before boot: the first burst may coalesce at once.
        let thri_off_since = Some(Instant::now().checked_sub(REARM_AFTER).unwrap_or_else(Instant::now));
        self.coalescing =
            Some(Coalescing { ring, vm_fd, port, active: true, thri_off_since, doorbell: doorbell.clone() });
        Ok(doorbell)
    }

    /// Feeds the queued THR writes to the UART, oldest first; returns how
    /// many there were.
    pub fn replay(&mut self) -> usize {
        let Some(coalescing) = self.coalescing.as_mut() else { return 0 };
        let (uart, port) = (&mut self.uart, coalescing.port);
        let mut replayed = 0;
        coalescing.ring.drain(|write| match write.bytes() {
            [byte] if write.pio && write.addr == u64::from(port) => {
                replayed += 1;
                if let Err(e) = uart.write(THR, *byte) {
                    tracing::warn!(error = ?e, "serial port write failed");
                }
            }
            _ => tracing::warn!(?write, "unexpected coalesced write ignored"),
        });
        replayed
    }

    /// Turns the zone off once output stopped, so the next write exits (and
    /// turns it back on) instead of waiting in the ring for a flusher that
    /// would have to poll. Writes queued before the zone went away are
    /// replayed.
    fn pause_coalescing(&mut self) {
        let Some(coalescing) = self.coalescing.as_mut() else { return };
        if coalescing.active {
            coalescing.switch(false);
            self.replay();
        }
    }

    /// Coalescing goes off as soon as the guest enables the transmit
    /// interrupt (a guest that waits for it must see each byte taken at
    /// once) and comes back only once the interrupt has stayed off for
    /// `REARM_AFTER` and the guest writes again (see `rearm_if_quiet`).
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

    /// Turns coalescing back on, at a THR write that exited, when the
    /// transmit interrupt has been off since `REARM_AFTER` before `now`.
    /// Linux's console clears and restores IER around every message;
    /// re-registering the zone each time would cost more than the exits it
    /// saves.
    fn rearm_if_quiet(&mut self, now: Instant) {
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
            let dlab = self.uart.read(LCR) & LCR_DLAB != 0;
            if offset == IER && !dlab {
                self.follow_ier(*byte);
            }
            if offset == THR && !dlab {
                // Output starts: later bytes of the burst need not exit.
                self.rearm_if_quiet(Instant::now());
            }
            if let Err(e) = self.uart.write(offset, *byte) {
                tracing::warn!(error = ?e, "serial port write failed");
            }
        }
    }
}

/// Tells the flusher that the zone went on (or that the VM stops). A
/// condition variable, not a timer: nothing wakes while the guest is silent.
#[derive(Default)]
pub struct Doorbell {
    state: Mutex<DoorbellState>,
    changed: Condvar,
}

#[derive(Default)]
struct DoorbellState {
    rung: bool,
    stopped: bool,
}

impl Doorbell {
    fn ring(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rung = true;
        self.changed.notify_all();
    }

    /// Ends `flush_while_pending`.
    pub fn stop(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stopped = true;
        self.changed.notify_all();
    }

    /// Blocks until rung (true, and clears it) or stopped (false).
    fn wait_rung(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !state.rung && !state.stopped {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.rung = false;
        !state.stopped
    }

    /// Sleeps `interval`; false if stopped meanwhile.
    fn sleep(&self, interval: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (state, _) =
            self.changed.wait_timeout_while(state, interval, |s| !s.stopped).unwrap_or_else(|p| p.into_inner());
        !state.stopped
    }
}

/// The flusher thread's body: asleep while the guest is silent; while a
/// burst flows, replays every `REPLAY_INTERVAL` until the ring has stayed
/// empty for `QUIET_AFTER`, then turns the zone off and sleeps again.
pub fn flush_while_pending(serial: &Mutex<SerialPort>, doorbell: &Doorbell) {
    let quiet_ticks = QUIET_AFTER.as_millis().div_ceil(REPLAY_INTERVAL.as_millis()).max(1);
    while doorbell.wait_rung() {
        let mut quiet = 0;
        while quiet < quiet_ticks {
            if !doorbell.sleep(REPLAY_INTERVAL) {
                return;
            }
            let mut port = serial.lock().unwrap_or_else(|p| p.into_inner());
            quiet = if port.replay() > 0 { 0 } else { quiet + 1 };
            if quiet >= quiet_ticks {
                port.pause_coalescing();
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

    /// Against real KVM: the flusher turns the zone off once output stops,
    /// the next write turns it back on, and nothing written is lost.
    #[test]
    fn a_burst_turns_the_zone_on_and_silence_turns_it_off() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm_fd = Arc::new(kvm.create_vm().unwrap());
        let vcpu = vm_fd.create_vcpu(0).unwrap();
        let console = Console::open(&ConsoleConfig { ring_bytes: 64, ..Default::default() }).unwrap();
        let output = console.ring().unwrap();
        let mut port = SerialPort::new(IrqLine::new().unwrap(), console);
        let doorbell = port.coalesce(vm_fd, CoalescedRing::map(&vcpu).unwrap(), 0x3f8).unwrap();
        let serial = Arc::new(Mutex::new(port));
        let flusher = {
            let (serial, doorbell) = (serial.clone(), doorbell.clone());
            std::thread::spawn(move || flush_while_pending(&serial, &doorbell))
        };
        let active = || serial.lock().unwrap().coalescing.as_ref().unwrap().active;
        let wait_until_off = || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while active() {
                assert!(Instant::now() < deadline, "the zone stayed on while the guest was silent");
                std::thread::sleep(REPLAY_INTERVAL);
            }
        };
        wait_until_off();
        serial.lock().unwrap().write(THR.into(), b"x");
        assert!(active(), "a write that exits starts a burst");
        wait_until_off();
        serial.lock().unwrap().write(THR.into(), b"y");
        doorbell.stop();
        flusher.join().unwrap();
        assert_eq!(output.text(), "xy");
    }
}
