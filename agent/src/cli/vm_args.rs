//! The VM flags shared by `kvmlet run` and `kvmlet firmware-dump`.

use std::path::PathBuf;

use clap::Args;
use uuid::Uuid;
use vmm::VmConfig;

#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// Kernel image: a bzImage, or an ELF with a PVH note.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs (1..=32).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub memory: u64,
    /// Firmware (SMBIOS) system UUID.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<Uuid>,
    /// Firmware (SMBIOS) system serial number.
    #[arg(long, value_name = "STR")]
    pub serial: Option<String>,
}

impl VmArgs {
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            vcpus: self.vcpus,
            memory_mib: self.memory,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            uuid: self.uuid,
            serial: self.serial.clone(),
            ..VmConfig::new(&self.kernel)
        }
    }
}
