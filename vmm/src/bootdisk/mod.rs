//! A disk's own kernel, found the way pygrub found it for Xen: kvmlet boots
//! kernels directly (no firmware), so for a disk that expects a boot loader
//! the kernel, initrd and command line its boot loader would have used are
//! read from the disk itself.
//!
//! - `partitions`: MBR or GPT, or a whole-disk file system.
//! - `fs`, `ext4`, `fat`: the boot file system, read-only, behind `BootFs`.
//! - `bls`, `grub`, `extlinux`: the loader configurations, pure text parsers.
//! - `search`: the order in which they are looked for (`find`).
//!
//! The disk is the tenant's, so it is hostile input: every size read is
//! capped (kernel `MAX_KERNEL_BYTES`, initrds together `MAX_INITRD_BYTES`,
//! a configuration `MAX_CONFIG_BYTES`, directory listings, symlink hops and
//! path depth), corrupt structures are errors and never panics, and no path
//! from the disk ever names a host file: files are copied out through the
//! caller's writer. The disk is read through `DiskRead`, as narrow as a
//! block device, so any image format can stand behind it.
//!
//! This lives in `vmm` because it stands in for the guest's firmware and
//! boot loader, and reads disks through the block device's image formats
//! (`vmm::image::DiskImage` implements `DiskRead`); it needs no `unsafe`.

#![forbid(unsafe_code)]

mod bls;
mod ext4;
mod extlinux;
mod fat;
mod fs;
mod grub;
pub mod partitions;
mod search;

use std::io::{self, Write};
use std::sync::Arc;

pub use fs::FsError;
pub use partitions::Partition;
pub use search::{find, LOOKED_FOR};

/// The largest kernel copied out of a disk (distribution kernels are 8–15 MiB).
pub const MAX_KERNEL_BYTES: u64 = 256 << 20;
/// The largest initrd (all of an entry's initrds together) copied out.
pub const MAX_INITRD_BYTES: u64 = 1 << 30;
/// The largest loader configuration read (`grub.cfg`, a BLS entry, `grubenv`…).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Symbolic links followed while resolving one path (Linux allows 40).
pub const MAX_SYMLINK_HOPS: usize = 16;
/// Components in one path, and nesting of directories walked.
pub const MAX_PATH_DEPTH: usize = 32;
/// Names read from one directory.
pub const MAX_DIR_ENTRIES: usize = 4096;

/// A disk, readable at any offset: `vmm::image::DiskImage` (raw or qcow2), or bytes in memory.
pub trait DiskRead {
    /// Fills `buf` from byte `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The disk's size in bytes, as the guest sees it.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An image in memory (tests, fuzzing).
impl DiskRead for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|s| *s <= self.len());
        let range = start.and_then(|s| Some(s..s.checked_add(buf.len()).filter(|e| *e <= self.len())?));
        let range = range.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(&self[range]);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len() as u64
    }
}

/// A file on one of the disk's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    pub partition: Partition,
    /// Its path on that partition, symlinks resolved.
    pub path: String,
    pub len: u64,
    components: Vec<String>,
}

/// What the disk boots: kernel, initrds (concatenated into one, as GRUB
/// loads them) and command line, and where that choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootChoice {
    pub kernel: BootFile,
    pub initrds: Vec<BootFile>,
    pub cmdline: String,
    /// `/boot/grub/grub.cfg menuentry "Debian GNU/Linux" (default "0")`.
    pub source: String,
    /// The partition the source was read from.
    pub source_partition: Partition,
}

/// Where on the disk: `partition 2`, or the whole disk for a file system without a table.
fn place(partition: &Partition) -> String {
    match partition.number {
        0 => "the whole disk".to_string(),
        n => format!("partition {n}"),
    }
}

impl BootChoice {
    /// One line for events and logs: `kernel /boot/vmlinuz-6.1 from
    /// /boot/grub/grub.cfg menuentry "Debian" (default "0") on disk rootdisk partition 1`.
    pub fn describe(&self, disk: &str) -> String {
        let on = |p: &Partition| match p.number {
            0 => format!("disk {disk} (whole-disk file system)"),
            n => format!("disk {disk} partition {n}"),
        };
        if self.kernel.partition == self.source_partition {
            format!("kernel {} from {} on {}", self.kernel.path, self.source, on(&self.kernel.partition))
        } else {
            format!(
                "kernel {} on {} from {} on {}",
                self.kernel.path,
                place(&self.kernel.partition),
                self.source,
                on(&self.source_partition)
            )
        }
    }

    /// Bytes the initrd file will have (the initrds, each padded to 4 bytes).
    pub fn initrd_len(&self) -> u64 {
        self.initrds.iter().map(|f| f.len.next_multiple_of(4)).sum()
    }

    /// Copies the kernel to `out`.
    pub fn write_kernel(&self, disk: &Arc<dyn DiskRead>, out: &mut dyn Write) -> Result<u64, BootDiskError> {
        guard(|| copy(disk, &self.kernel, "kernel", MAX_KERNEL_BYTES, out))
    }

    /// Copies the initrds to `out`, one after the other, each padded with
    /// zeros to a multiple of 4 bytes (the kernel unpacks concatenated archives).
    pub fn write_initrd(&self, disk: &Arc<dyn DiskRead>, out: &mut dyn Write) -> Result<u64, BootDiskError> {
        guard(|| {
            let mut total = 0u64;
            for file in &self.initrds {
                let left = MAX_INITRD_BYTES.saturating_sub(total);
                let n = copy(disk, file, "initrd", left, out)?;
                let pad = n.next_multiple_of(4) - n;
                out.write_all(&[0u8; 3][..pad as usize]).map_err(|e| file_error(file, "initrd", FsError::Write(e)))?;
                total += n + pad;
            }
            Ok(total)
        })
    }
}

fn file_error(file: &BootFile, what: &'static str, source: FsError) -> BootDiskError {
    BootDiskError::File { what, path: file.path.clone(), place: place(&file.partition), source }
}

fn copy(
    disk: &Arc<dyn DiskRead>,
    file: &BootFile,
    what: &'static str,
    limit: u64,
    out: &mut dyn Write,
) -> Result<u64, BootDiskError> {
    let fs = fs::open(disk, file.partition)
        .map_err(|e| file_error(file, what, e))?
        .ok_or_else(|| file_error(file, what, FsError::NotFound))?;
    fs.copy(&file.components, limit, out).map_err(|e| file_error(file, what, e))
}

/// Runs `f`, turning a panic in a file system crate into an error: the disk
/// is hostile and the crates are not ours.
fn guard<T>(f: impl FnOnce() -> Result<T, BootDiskError>) -> Result<T, BootDiskError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(Err(BootDiskError::Panicked))
}

/// Why a disk's kernel cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    #[error("reading the partition table")]
    Table(#[source] io::Error),
    /// Nothing bootable: the caller may fall back to another kernel.
    #[error("no bootable kernel: looked for {LOOKED_FOR} on {looked}")]
    NotFound { looked: String },
    #[error("{what} {path} on {place}")]
    File { what: &'static str, path: String, place: String, source: FsError },
    #[error("{config} names {what} {path} on {device}, which is not a partition of this disk with a file system")]
    Device { config: String, what: &'static str, path: String, device: String },
    #[error("reading the disk's file system failed unexpectedly (a bug in the file system reader, on hostile data)")]
    Panicked,
}

/// `e` and its sources, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_disks_refuse_reads_past_their_end() {
        let disk = vec![1u8; 10];
        let mut buf = [0u8; 4];
        disk.read_at(&mut buf, 6).unwrap();
        assert!(disk.read_at(&mut buf, 7).is_err());
        assert!(disk.read_at(&mut buf, u64::MAX).is_err());
        assert!(disk.read_at(&mut [], 10).is_ok());
    }
}
