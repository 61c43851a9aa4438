//! The i8042 controller, for its one job in a microVM: the CPU reset line.

use std::io;
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// vm-superio calls this when the guest writes 0xFE to the command port.
#[derive(Clone)]
pub struct ResetLine(pub Arc<ExitSignal>);

impl Trigger for ResetLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.request(ExitReason::Reboot);
        Ok(())
    }
}

/// The `I8042_PORT_LEN` ports at `I8042_DATA_PORT`; offset 0 is the data port,
/// `I8042_COMMAND_OFFSET` the command/status port.
pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042(I8042Device::new(ResetLine(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.0.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            let _ = self.0.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::I8042_COMMAND_OFFSET;

    #[test]
    fn reset_command_requests_reboot() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xfe]); // data port: not a command
        assert!(!exit.is_requested());
        dev.write(I8042_COMMAND_OFFSET.into(), &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
    }
}
