//! Loading the kernel, initrd and command line into guest memory, and deciding
//! how the vCPU enters the kernel.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::{CMDLINE_START, HIMEM_START, MMIO32_START};
use crate::arch::x86_64::boot_params::InitrdRange;
use crate::arch::x86_64::regs::EntryProtocol;
use crate::config::KernelFormat;

/// The Linux 64-bit entry point sits 0x200 bytes into a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel: {path}")]
    Kernel { path: PathBuf, source: linux_loader::loader::Error },
    #[error("initrd: {path}: {reason}")]
    Initrd { path: PathBuf, reason: String },
    #[error("cmdline: does not fit in guest memory")]
    Cmdline,
}

/// Where and how the vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    pub protocol: EntryProtocol,
    pub address: u64,
    /// The bzImage's setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// First byte after the loaded kernel.
    pub kernel_end: u64,
}

/// Loads the kernel image `file` (opened from `path`, named in errors).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    format: KernelFormat,
) -> Result<KernelEntry, BootError> {
    let path = &path.to_path_buf();
    // linux-loader seeks to what it reads; the descriptor may have been read before.
    let kernel_error = |source| BootError::Kernel { path: path.clone(), source };
    let highmem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::BzImage => {
            let loaded: KernelLoaderResult =
                BzImage::load(mem, Some(GuestAddress(HIMEM_START)), file, highmem).map_err(kernel_error)?;
            Ok(KernelEntry {
                protocol: EntryProtocol::Linux64,
                address: loaded.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
                setup_header: loaded.setup_header,
                kernel_end: loaded.kernel_end,
            })
        }
        KernelFormat::Elf => {
            let loaded = Elf::load(mem, None, file, highmem).map_err(kernel_error)?;
            let (protocol, address) = match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => (EntryProtocol::Pvh, entry.raw_value()),
                // An ELF vmlinux without a PVH note: its e_entry is the 64-bit entry.
                _ => (EntryProtocol::Linux64, loaded.kernel_load.raw_value()),
            };
            Ok(KernelEntry { protocol, address, setup_header: None, kernel_end: loaded.kernel_end })
        }
    }
}

/// Places the initrd at the top of low memory, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    kernel_end: u64,
) -> Result<InitrdRange, BootError> {
    let fail = |reason: String| BootError::Initrd { path: path.to_path_buf(), reason };
    // The descriptor is shared with earlier boots: read from the start.
    file.seek(SeekFrom::Start(0)).map_err(|e| fail(e.to_string()))?;
    let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let low_end = mem
        .iter()
        .find(|region| region.start_addr().raw_value() == 0)
        .map(|region| region.len().min(MMIO32_START))
        .unwrap_or(0);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(|| fail(format!("{size} bytes do not fit in guest memory above the kernel")))?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize).map_err(|e| fail(e.to_string()))?;
    Ok(InitrdRange { addr, size })
}

/// Writes the command line (NUL-terminated) and returns its length without the NUL.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START)).map_err(|_| BootError::Cmdline)?;
    Ok(cmdline.len())
}
