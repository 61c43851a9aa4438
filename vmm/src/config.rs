//! What a VM is made of, and the checks that run before any of it exists.
//!
//! `VmConfig::validate` reports the first problem with the name of the field
//! that holds it, so a caller (the CLI, the node agent writing a VMI
//! condition) can say exactly what is wrong. Nothing here touches KVM.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::arch::layout::{CMDLINE_MAX_SIZE, MAX_VCPUS, MAX_VIRTIO_DEVICES};
use crate::image::{ImageError, ImageFiles};
use crate::net_config::{NetConfig, NetConfigError};

/// SMBIOS strings are at most 64 characters in practice (dmidecode, firmware UIs).
pub const MAX_FIRMWARE_SERIAL_LEN: usize = 64;
/// virtio-blk GET_ID returns at most `ID_BYTES` (20) bytes.
pub const MAX_DISK_SERIAL_LEN: usize = crate::devices::virtio::block::ID_BYTES;

/// One microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1..=32.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Kernel image: a bzImage, or an ELF with a PVH note.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    /// SMBIOS type 1 system UUID (the VM's firmware identity).
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// SMBIOS type 1 serial number.
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-blk disks, in the order the guest enumerates them (`vda`, `vdb`, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs, after the disks, in the order the guest enumerates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<NetConfig>,
}

/// Where the guest's serial console output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Append the output to this file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Keep the last `ring_bytes` bytes in memory for callers to read (0: none).
    #[serde(default)]
    pub ring_bytes: usize,
    /// Copy the output to the VMM's standard output.
    #[serde(default)]
    pub stdout: bool,
}

/// A disk image attached as virtio-blk: raw or qcow2, told by its first
/// bytes (`crate::image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    /// Returned by virtio-blk GET_ID; at most 20 bytes.
    #[serde(default)]
    pub serial: Option<String>,
    /// The qcow2 image's backing chain, nearest first, opened read-only:
    /// each qcow2 layer that names a backing file in its header gets the
    /// next one here, and no other (a name in a header is never opened).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backing: Vec<PathBuf>,
}

/// A field of `VmConfig` that cannot be used, named as the user wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("vcpus: {0} is out of range (1..={MAX_VCPUS})")]
    Vcpus(u32),
    #[error("memory: must be at least 1 MiB")]
    MemoryZero,
    #[error("memory: {requested} MiB is more than this host has ({available} MiB)")]
    MemoryTooLarge { requested: u64, available: u64 },
    #[error("kernel: {path}")]
    KernelUnreadable { path: PathBuf, source: io::Error },
    #[error("kernel: {path}: not a bzImage or an ELF kernel")]
    KernelFormat { path: PathBuf },
    #[error("initrd: {path}")]
    InitrdUnreadable { path: PathBuf, source: io::Error },
    #[error("cmdline: {0}")]
    Cmdline(String),
    #[error("serial: {0}")]
    Serial(String),
    #[error("console.file: {path}")]
    ConsoleFile { path: PathBuf, source: io::Error },
    #[error("disks: {count} disks given, at most {MAX_VIRTIO_DEVICES} are supported")]
    TooManyDisks { count: usize },
    #[error("disks[{index}].path: {path}")]
    DiskUnreadable { index: usize, path: PathBuf, source: io::Error },
    #[error("disks[{index}]: {path}")]
    DiskImage { index: usize, path: PathBuf, source: ImageError },
    #[error("disks[{index}].serial: {reason}")]
    DiskSerial { index: usize, reason: String },
    #[error("nets: {disks} disks and {nets} NICs given, at most {MAX_VIRTIO_DEVICES} virtio devices are supported")]
    TooManyVirtioDevices { disks: usize, nets: usize },
    #[error(transparent)]
    Net(#[from] NetConfigError),
}

/// What kind of kernel image a file holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

impl KernelFormat {
    /// Sniffs `file`: "HdrS" at 0x202 is a bzImage, "\x7fELF" an ELF.
    pub fn detect(file: &mut File) -> io::Result<Option<Self>> {
        let mut magic = [0u8; 4];
        file.seek(SeekFrom::Start(0))?;
        if file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF" {
            return Ok(Some(KernelFormat::Elf));
        }
        file.seek(SeekFrom::Start(0x202))?;
        if file.read_exact(&mut magic).is_ok() && magic == *b"HdrS" {
            return Ok(Some(KernelFormat::BzImage));
        }
        Ok(None)
    }
}

impl VmConfig {
    /// A config with the defaults `kvmlet run` uses: 1 vCPU, 128 MiB.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            vcpus: 1,
            memory_mib: 128,
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            uuid: None,
            serial: None,
            console: ConsoleConfig::default(),
            disks: Vec::new(),
            nets: Vec::new(),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks every field; files are opened to prove they are readable (and, for
    /// writable disks, writable) but nothing else happens.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus.into()));
        }
        self.validate_memory()?;
        self.kernel_format()?;
        self.open_initrd()?;
        validate_cmdline(&self.cmdline)?;
        if let Some(serial) = &self.serial {
            validate_firmware_serial(serial)?;
        }
        self.open_console_file()?;
        if self.disks.len() > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDisks { count: self.disks.len() });
        }
        for (index, disk) in self.disks.iter().enumerate() {
            disk.check_access(index)?;
            if let Some(serial) = &disk.serial {
                validate_disk_serial(index, serial)?;
            }
        }
        if self.disks.len() + self.nets.len() > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyVirtioDevices { disks: self.disks.len(), nets: self.nets.len() });
        }
        for (index, net) in self.nets.iter().enumerate() {
            net.validate(index)?;
        }
        Ok(())
    }

    fn validate_memory(&self) -> Result<(), ConfigError> {
        if self.memory_mib == 0 {
            return Err(ConfigError::MemoryZero);
        }
        let available = host_memory_mib();
        if self.memory_mib > available || self.memory_mib.checked_shl(20).is_none() {
            return Err(ConfigError::MemoryTooLarge { requested: self.memory_mib, available });
        }
        Ok(())
    }

    /// Opens the kernel and tells its format.
    pub fn kernel_format(&self) -> Result<KernelFormat, ConfigError> {
        self.open_kernel().map(|(_, format)| format)
    }

    /// Opens the kernel image, checked to be a file of a format kvmlet boots.
    pub fn open_kernel(&self) -> Result<(File, KernelFormat), ConfigError> {
        let unreadable = |source| ConfigError::KernelUnreadable { path: self.kernel.clone(), source };
        let mut file = File::open(&self.kernel).map_err(unreadable)?;
        if file.metadata().map_err(unreadable)?.is_dir() {
            return Err(unreadable(io::Error::from_raw_os_error(libc::EISDIR)));
        }
        let format = KernelFormat::detect(&mut file)
            .map_err(unreadable)?
            .ok_or_else(|| ConfigError::KernelFormat { path: self.kernel.clone() })?;
        Ok((file, format))
    }

    /// Opens the initrd, if the config has one.
    pub fn open_initrd(&self) -> Result<Option<File>, ConfigError> {
        let Some(path) = &self.initrd else { return Ok(None) };
        File::open(path).map(Some).map_err(|source| ConfigError::InitrdUnreadable { path: path.clone(), source })
    }

    /// Opens (creating it) the file the console appends to, if any.
    pub fn open_console_file(&self) -> Result<Option<File>, ConfigError> {
        let Some(path) = &self.console.file else { return Ok(None) };
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(Some)
            .map_err(|source| ConfigError::ConsoleFile { path: path.clone(), source })
    }
}

impl DiskConfig {
    /// A disk on `path`, writable, without serial or backing files.
    pub fn new(path: impl Into<PathBuf>) -> DiskConfig {
        DiskConfig { path: path.into(), readonly: false, serial: None, backing: Vec::new() }
    }

    /// Checks that the image and its backing files exist, are files, and
    /// allow the access the config asks for (backing files are only read),
    /// without opening them: the VM opens them once, in `open`.
    pub fn check_access(&self, index: usize) -> Result<(), ConfigError> {
        check_file_access(index, &self.path, self.readonly)?;
        for backing in &self.backing {
            check_file_access(index, backing, true)?;
        }
        Ok(())
    }

    /// Opens the image and its backing files with the access the config
    /// asks for, and checks that they make one image (`ImageFiles::open`).
    pub fn open(&self, index: usize) -> Result<ImageFiles, ConfigError> {
        ImageFiles::open(&self.path, self.readonly, &self.backing).map_err(|source| ConfigError::DiskImage {
            index,
            path: self.path.clone(),
            source,
        })
    }
}

fn check_file_access(index: usize, path: &std::path::Path, readonly: bool) -> Result<(), ConfigError> {
    let fail = |source| ConfigError::DiskUnreadable { index, path: path.to_path_buf(), source };
    if std::fs::metadata(path).map_err(fail)?.is_dir() {
        return Err(fail(io::Error::from_raw_os_error(libc::EISDIR)));
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| fail(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let mode = if readonly { libc::R_OK } else { libc::R_OK | libc::W_OK };
    // SAFETY: `c_path` is a valid NUL-terminated string; access() only reads it.
    if unsafe { libc::access(c_path.as_ptr(), mode) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(())
}

fn validate_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(ConfigError::Cmdline(format!(
            "{} bytes, at most {} are supported",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    if cmdline.bytes().any(|b| b == 0 || !(b.is_ascii_graphic() || b == b' ')) {
        return Err(ConfigError::Cmdline("only printable ASCII and spaces are allowed".into()));
    }
    Ok(())
}

fn validate_firmware_serial(serial: &str) -> Result<(), ConfigError> {
    if serial.is_empty() || serial.len() > MAX_FIRMWARE_SERIAL_LEN {
        return Err(ConfigError::Serial(format!("must be 1..={MAX_FIRMWARE_SERIAL_LEN} bytes long")));
    }
    if !serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(ConfigError::Serial("only printable ASCII is allowed".into()));
    }
    Ok(())
}

fn validate_disk_serial(index: usize, serial: &str) -> Result<(), ConfigError> {
    let reason = if serial.len() > MAX_DISK_SERIAL_LEN {
        format!("{} bytes, at most {MAX_DISK_SERIAL_LEN} are allowed", serial.len())
    } else if !serial.bytes().all(|b| b.is_ascii_graphic()) {
        "only printable ASCII without spaces is allowed".to_string()
    } else {
        return Ok(());
    };
    Err(ConfigError::DiskSerial { index, reason })
}

/// Physical memory of this host in MiB.
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || page_size <= 0 {
        return 0;
    }
    (pages as u64).saturating_mul(page_size as u64) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn kernel_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        f.write_all(&image).unwrap();
        f
    }

    fn err(config: &VmConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn valid_config_passes() {
        let kernel = kernel_file();
        let mut config = VmConfig::new(kernel.path());
        config.vcpus = 4;
        config.cmdline = "console=ttyS0 probe.action=poweroff".into();
        config.serial = Some("abc-123".into());
        config.validate().unwrap();
        assert_eq!(config.kernel_format().unwrap(), KernelFormat::BzImage);
    }

    #[test]
    fn each_bad_field_is_named() {
        let kernel = kernel_file();
        let base = VmConfig::new(kernel.path());

        assert!(err(&VmConfig { vcpus: 0, ..base.clone() }).starts_with("vcpus: 0"));
        assert!(err(&VmConfig { vcpus: 33, ..base.clone() }).starts_with("vcpus: 33"));
        assert!(err(&VmConfig { memory_mib: 0, ..base.clone() }).starts_with("memory:"));
        assert!(err(&VmConfig { memory_mib: 1 << 40, ..base.clone() }).starts_with("memory:"));
        assert!(err(&VmConfig { memory_mib: u64::MAX, ..base.clone() }).starts_with("memory:"));
        assert!(err(&VmConfig::new("/nonexistent/vmlinuz")).starts_with("kernel: /nonexistent/vmlinuz"));
        assert!(err(&VmConfig::new("/")).starts_with("kernel: /"));
        assert!(err(&VmConfig { initrd: Some("/nonexistent/initrd".into()), ..base.clone() })
            .starts_with("initrd: /nonexistent/initrd"));
        assert!(err(&VmConfig { cmdline: "x".repeat(CMDLINE_MAX_SIZE), ..base.clone() }).starts_with("cmdline:"));
        assert!(err(&VmConfig { cmdline: "a\nb".into(), ..base.clone() }).starts_with("cmdline:"));
        assert!(err(&VmConfig { serial: Some(String::new()), ..base.clone() }).starts_with("serial:"));
        assert!(err(&VmConfig { serial: Some("x".repeat(65)), ..base.clone() }).starts_with("serial:"));
        let disk = |path: &str| DiskConfig::new(path);
        assert!(err(&VmConfig { disks: vec![disk("/nonexistent/disk.img")], ..base.clone() })
            .starts_with("disks[0].path: /nonexistent/disk.img"));
        assert!(err(&VmConfig { disks: vec![disk(kernel.path().to_str().unwrap()); 19], ..base.clone() })
            .starts_with("disks: 19"));
        let long_serial = DiskConfig { serial: Some("x".repeat(21)), ..disk(kernel.path().to_str().unwrap()) };
        assert!(err(&VmConfig { disks: vec![long_serial], ..base.clone() }).starts_with("disks[0].serial:"));
    }

    #[test]
    fn non_kernel_file_is_rejected() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let config = VmConfig::new(f.path());
        assert!(matches!(config.validate(), Err(ConfigError::KernelFormat { .. })));
    }

    #[test]
    fn json_round_trip_rejects_unknown_fields() {
        let config = VmConfig::new("/boot/vmlinuz");
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains("\"memoryMib\":128"));
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), config);
        let extra = json.replacen('{', "{\"hugepages\":true,", 1);
        assert!(serde_json::from_str::<VmConfig>(&extra).unwrap_err().to_string().contains("hugepages"));
    }
}
