//! What can go wrong building or running a VM.

use crate::arch::x86_64::boot_params::BootInfoError;
use crate::arch::x86_64::regs::RegsError;
use crate::boot::BootError;
use crate::config::ConfigError;
use crate::devices::BusError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM does not support {0}, which kvmlet needs")]
    MissingCapability(&'static str),
    #[error("{0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("memory: cannot allocate guest memory: {0}")]
    GuestMemory(String),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error("KVM accepted {written} of {wanted} boot MSRs")]
    Msrs { written: usize, wanted: usize },
    #[error("firmware: {0}")]
    Firmware(String),
    #[error("device setup: {0}")]
    Device(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("console")]
    Console(#[source] std::io::Error),
    #[error("start vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error("the opened host files do not match the config's {0}")]
    FilesMismatch(&'static str),
    #[error("the VM was already started")]
    AlreadyStarted,
}
