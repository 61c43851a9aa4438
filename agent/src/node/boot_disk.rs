//! Booting a disk's own kernel: for a VMI without `firmware.kernelBoot`
//! (KubeVirt would boot its disk through firmware, which a microVM has not)
//! and for `kvmlet run --boot-from-disk`. `vmm::bootdisk` finds the kernel,
//! initrd and command line on the disk; this module copies them into the
//! VM's own directory (`kernel`, `initrd`, born 0600, never through a
//! symlink) and adds the serial console. On the node, a disk without a
//! bootable kernel falls back to the node's `--default-kernel`, else the VMI
//! fails naming the disk and what was looked for.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm::bootdisk::{self, BootDiskError, DiskRead};
use vmm::image::{ImageError, ImageFiles};
use vmm::DiskConfig;

use super::translate::{NodeDefaults, SpecError, VmPlan};

/// The guest's console, COM1, as Linux names it: added to a disk's command
/// line that does not name it, so `kvmlet console` and the serial log show the guest.
pub const SERIAL_CONSOLE: &str = "console=ttyS0";

/// The kernel and initrd copied out of a disk, and the command line to boot them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Which kernel and why: `kernel /boot/vmlinuz-6.1 from /boot/grub/grub.cfg
    /// menuentry "Debian" (default "0") on disk rootdisk partition 1`.
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("disk {disk}: cannot open {}", path.display())]
    Open { disk: String, path: PathBuf, source: ImageError },
    #[error("disk {disk}")]
    Disk { disk: String, source: BootDiskError },
    #[error("cannot write {}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

impl BootError {
    /// The disk holds nothing bootable (as opposed to a broken or hostile entry).
    pub fn nothing_bootable(&self) -> bool {
        matches!(self, BootError::Disk { source: BootDiskError::NotFound { .. }, .. })
    }
}

/// `cmdline` with the serial console added unless it already names ttyS0.
pub fn with_serial_console(cmdline: &str) -> String {
    if cmdline.split_whitespace().any(|w| w == SERIAL_CONSOLE || w.starts_with("console=ttyS0,")) {
        return cmdline.to_string();
    }
    format!("{cmdline} {SERIAL_CONSOLE}").trim_start().to_string()
}

/// Finds the kernel on `disk` (raw, or qcow2 over its backing files; called
/// `name` in messages) and writes it and its initrd into `dir` (made 0700 if missing).
pub fn extract(disk: &DiskConfig, name: &str, dir: &Path) -> Result<Booted, BootError> {
    let open = ImageFiles::open(&disk.path, true, &disk.backing).and_then(|files| files.into_image(false));
    let open = open.map_err(|source| BootError::Open { disk: name.into(), path: disk.path.clone(), source })?;
    let disk: Arc<dyn DiskRead> = Arc::new(open);
    let disk_error = |source| BootError::Disk { disk: name.into(), source };
    let choice = bootdisk::find(disk.clone()).map_err(disk_error)?;
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Write { path, source }
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        let made = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
        made.map_err(write_error(dir))?;
    }
    let kernel = dir.join("kernel");
    let mut out = BufWriter::new(super::disks::create_private(&kernel).map_err(write_error(&kernel))?);
    choice.write_kernel(&disk, &mut out).map_err(disk_error)?;
    out.flush().map_err(write_error(&kernel))?;
    let initrd = if choice.initrds.is_empty() {
        None
    } else {
        let initrd = dir.join("initrd");
        let mut out = BufWriter::new(super::disks::create_private(&initrd).map_err(write_error(&initrd))?);
        choice.write_initrd(&disk, &mut out).map_err(disk_error)?;
        out.flush().map_err(write_error(&initrd))?;
        Some(initrd)
    };
    Ok(Booted { kernel, initrd, cmdline: with_serial_console(&choice.cmdline), reason: choice.describe(name) })
}

/// What the node tells the VMI about its kernel (event `BootKernel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNote {
    pub warning: bool,
    pub message: String,
}

/// Gives a plan that boots its disk (`plan.boot_disk`) a kernel: the disk's
/// own, copied into `dir`, else the node's default kernel. The disk file
/// must exist (made by `node::disks`).
pub fn prepare(plan: &mut VmPlan, dir: &Path, node: &NodeDefaults) -> Result<Option<BootNote>, SpecError> {
    let Some(boot) = plan.boot_disk.clone() else { return Ok(None) };
    let disk = plan.config.disks[boot.index].clone();
    match extract(&disk, &boot.name, dir) {
        Ok(booted) => {
            plan.config.kernel = booted.kernel;
            plan.config.initrd = booted.initrd;
            plan.config.cmdline = booted.cmdline;
            Ok(Some(BootNote { warning: false, message: booted.reason }))
        }
        Err(e) if e.nothing_bootable() && node.kernel.is_some() => {
            let kernel = node.kernel.clone().unwrap_or_default();
            let message =
                format!("{}; booting the node's default kernel {}", crate::errors::with_causes(&e), kernel.display());
            plan.config.kernel = kernel;
            plan.config.initrd = node.initrd.clone();
            plan.config.cmdline = node.cmdline.clone();
            Ok(Some(BootNote { warning: true, message }))
        }
        Err(e) => Err(SpecError::new(boot.field, crate::errors::with_causes(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_console_is_added_once() {
        assert_eq!(with_serial_console("root=/dev/vda1 ro"), "root=/dev/vda1 ro console=ttyS0");
        assert_eq!(with_serial_console(""), "console=ttyS0");
        assert_eq!(with_serial_console("console=ttyS0,115200n8 quiet"), "console=ttyS0,115200n8 quiet");
        assert_eq!(with_serial_console("console=tty0"), "console=tty0 console=ttyS0");
    }

    #[test]
    fn a_disk_without_a_kernel_says_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let error = extract(&DiskConfig::new(&disk), "rootdisk", &dir.path().join("boot")).unwrap_err();
        assert!(error.nothing_bootable());
        let text = crate::errors::with_causes(&error);
        assert!(text.starts_with("disk rootdisk: no bootable kernel: looked for /loader/entries/*.conf"), "{text}");
        assert!(text.ends_with("the whole disk: no ext2/3/4 or FAT file system"), "{text}");
        assert!(!dir.path().join("boot/kernel").exists(), "nothing was written");
        // Read through a qcow2 overlay over it, the disk says the same.
        let overlay = dir.path().join("overlay.qcow2");
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&overlay).unwrap();
        vmm::image::create_overlay(file, &disk).unwrap();
        let on_overlay = DiskConfig { backing: vec![disk.clone()], ..DiskConfig::new(&overlay) };
        let error = extract(&on_overlay, "rootdisk", &dir.path().join("boot")).unwrap_err();
        assert!(error.nothing_bootable(), "{}", crate::errors::with_causes(&error));
        let error = extract(&DiskConfig::new(dir.path().join("missing.img")), "rootdisk", dir.path()).unwrap_err();
        assert!(!error.nothing_bootable());
        assert!(crate::errors::with_causes(&error).starts_with("disk rootdisk: cannot open"));
    }
}
