//! The hardware-reduced ACPI devices: the shutdown device behind the FADT's
//! sleep-control, sleep-status and reset registers (I/O port 0x600, Cloud
//! Hypervisor's convention) and the Generic Event Device that delivers the
//! power button.

use std::sync::Arc;

use super::irq::IrqLine;
use super::BusDevice;
use crate::arch::layout::{ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_STATUS_OFFSET, GED_EVENT_POWER_BUTTON};
use crate::exit::{ExitReason, ExitSignal};

const SLP_EN: u8 = 1 << 5;

/// Sleep-control / reset register at offset 0, sleep status at `ACPI_SLEEP_STATUS_OFFSET`.
pub struct AcpiShutdown {
    exit: Arc<ExitSignal>,
}

impl AcpiShutdown {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiShutdown { exit }
    }
}

impl BusDevice for AcpiShutdown {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken"; nothing else to report.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        if offset == u64::from(ACPI_SLEEP_STATUS_OFFSET) {
            return; // write-1-to-clear status bits: nothing is ever set
        }
        if offset != 0 {
            return;
        }
        let sleep_type = (value >> 2) & 0x7;
        if *value == ACPI_RESET_VALUE {
            self.exit.request(ExitReason::Reboot);
        } else if value & SLP_EN != 0 && sleep_type == ACPI_S5_SLEEP_TYPE {
            self.exit.request(ExitReason::PowerOff);
        } else {
            tracing::debug!(value, "ignored ACPI sleep-control write (only S5 is supported)");
        }
    }
}

/// Generic Event Device: byte 0 of its MMIO page holds pending events; a
/// read returns and clears them. The DSDT's `_EVT` reads it on the GED IRQ.
pub struct Ged {
    pending: u8,
    irq: IrqLine,
}

impl Ged {
    pub fn new(irq: IrqLine) -> Self {
        Ged { pending: 0, irq }
    }

    pub fn press_power_button(&mut self) -> std::io::Result<()> {
        self.pending |= GED_EVENT_POWER_BUTTON;
        self.irq.raise()
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = std::mem::take(&mut self.pending);
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_value_reboots() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = AcpiShutdown::new(exit.clone());
        dev.write(0, &[(3 << 2) | SLP_EN]); // S3: not supported, ignored
        dev.write(0, &[5 << 2]); // S5 without SLP_EN: ignored
        dev.write(0, &[0x34, 0]); // two bytes: not a register access
        dev.write(ACPI_SLEEP_STATUS_OFFSET.into(), &[0x34]); // the status register
        assert!(!exit.is_requested());
        dev.write(0, &[0x34]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));

        let exit = Arc::new(ExitSignal::default());
        AcpiShutdown::new(exit.clone()).write(0, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
    }

    #[test]
    fn ged_reports_the_power_button_once() {
        let irq = IrqLine::new().unwrap();
        let mut ged = Ged::new(irq.clone());
        let mut byte = [0xffu8];
        ged.read(0, &mut byte);
        assert_eq!(byte, [0]);
        ged.press_power_button().unwrap();
        assert_eq!(irq.eventfd().read().unwrap(), 1, "the GED interrupt was raised");
        ged.read(0, &mut byte);
        assert_eq!(byte, [GED_EVENT_POWER_BUTTON]);
        ged.read(0, &mut byte);
        assert_eq!(byte, [0], "reading clears the event");
    }
}
