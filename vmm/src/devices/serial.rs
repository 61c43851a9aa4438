//! COM1: a 16550 UART (vm-superio) on port 0x3f8, IRQ 4, output to the console.

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::irq::IrqLine;
use super::BusDevice;
use crate::console::Console;

pub struct SerialPort {
    uart: Serial<IrqLine, NoEvents, Console>,
}

impl SerialPort {
    pub fn new(irq: IrqLine, console: Console) -> Self {
        SerialPort { uart: Serial::new(irq, console) }
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
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *byte) {
                tracing::warn!(error = ?e, "serial port write failed");
            }
        }
    }
}
