//! An interrupt line backed by an eventfd that KVM's irqfd turns into a GSI.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Writing to the eventfd raises the GSI it is registered for.
#[derive(Clone)]
pub struct IrqLine {
    evt: Arc<EventFd>,
}

impl IrqLine {
    pub fn new() -> io::Result<Self> {
        Ok(IrqLine { evt: Arc::new(EventFd::new(EFD_NONBLOCK)?) })
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    pub fn raise(&self) -> io::Result<()> {
        self.evt.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.raise()
    }
}
