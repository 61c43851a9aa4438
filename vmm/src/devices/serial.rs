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
