//! Everything a VM reads or writes on the host, opened once.
//!
//! A VM process opens these before it jails itself, after which it can open
//! nothing by path; each boot of the guest (a reboot included) builds its VM
//! from duplicates of the same descriptors.

use std::fs::File;
use std::io;
use std::sync::Arc;

use kvm_ioctls::Kvm;

use crate::config::{KernelFormat, VmConfig};
use crate::devices::virtio::net::Backend;
use crate::error::Error;
use crate::image::ImageFiles;

/// The open host side of one `VmConfig`: `/dev/kvm`, the kernel and initrd,
/// each disk image (with its backing files) in config order, each NIC's
/// tap, the console file.
pub struct HostFiles {
    pub(crate) kvm: Arc<Kvm>,
    pub(crate) kernel: File,
    pub(crate) kernel_format: KernelFormat,
    pub(crate) initrd: Option<File>,
    pub(crate) disks: Vec<ImageFiles>,
    pub(crate) taps: Vec<Backend>,
    pub(crate) console: Option<File>,
}

impl HostFiles {
    /// Validates `config` and opens what it names, with the access it asks for.
    pub fn open(config: &VmConfig) -> Result<HostFiles, Error> {
        config.validate()?;
        let kvm = Arc::new(Kvm::new().map_err(Error::OpenKvm)?);
        let (kernel, kernel_format) = config.open_kernel()?;
        let initrd = config.open_initrd()?;
        let disks = config.disks.iter().enumerate().map(|(index, disk)| disk.open(index)).collect::<Result<_, _>>()?;
        let taps = config
            .nets
            .iter()
            .enumerate()
            .map(|(index, net)| {
                Backend::open(&net.tap)
                    .map_err(|e| Error::Device(format!("nets[{index}].tap: {}", crate::vm::error_chain(&e))))
            })
            .collect::<Result<_, _>>()?;
        let console = config.open_console_file()?;
        Ok(HostFiles { kvm, kernel, kernel_format, initrd, disks, taps, console })
    }

    /// New descriptors for the same files, for one more boot.
    pub fn try_clone(&self) -> io::Result<HostFiles> {
        Ok(HostFiles {
            kvm: self.kvm.clone(),
            kernel: self.kernel.try_clone()?,
            kernel_format: self.kernel_format,
            initrd: self.initrd.as_ref().map(File::try_clone).transpose()?,
            disks: self.disks.iter().map(ImageFiles::try_clone).collect::<io::Result<_>>()?,
            taps: self.taps.iter().map(Backend::try_clone).collect::<io::Result<_>>()?,
            console: self.console.as_ref().map(File::try_clone).transpose()?,
        })
    }
}
