//! FAT12/16/32 (EFI system partitions, syslinux disks) through the `fatfs`
//! crate, on a reader that refuses every write. Names match case-insensitively,
//! long or short, as Linux's vfat and the firmware do. Directories are walked
//! here, entry by entry with a cap, so a cluster chain that loops cannot keep
//! a lookup going.

use std::io::{self, Read, Seek, SeekFrom, Write};

use fatfs::{Dir, FileSystem, FsOptions};

use super::fs::{copy_bounded, BootFs, FsError, Kind, Slice};
use super::MAX_DIR_ENTRIES;

pub fn probe(slice: &Slice) -> bool {
    let mut sector = [0u8; 512];
    slice.read_at(&mut sector, 0).is_ok() && super::partitions::looks_like_fat_boot_sector(&sector)
}

/// The partition as `Read + Seek`, and a `Write` that always fails: the
/// boot disk is only ever read.
struct ReadOnly {
    slice: Slice,
    position: u64,
}

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.slice.part.len.saturating_sub(self.position);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.slice.read_at(&mut buf[..n], self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let position = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
            SeekFrom::End(delta) => self.slice.part.len.checked_add_signed(delta),
        };
        self.position = position.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.position)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "the boot disk is read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct FatFs {
    fs: FileSystem<ReadOnly>,
}

impl FatFs {
    pub fn open(slice: Slice) -> Result<FatFs, FsError> {
        // Never update access dates: nothing is written.
        let options = FsOptions::new().update_accessed_date(false);
        let fs = FileSystem::new(ReadOnly { slice, position: 0 }, options).map_err(FsError::Fat)?;
        Ok(FatFs { fs })
    }

    /// The entry at `components` (the root has none).
    fn entry(&self, components: &[String]) -> Result<Option<fatfs::DirEntry<'_, ReadOnly>>, FsError> {
        let mut dir = self.fs.root_dir();
        let mut found = None;
        for (index, name) in components.iter().enumerate() {
            let entry = find(&dir, name)?.ok_or(FsError::NotFound)?;
            if index + 1 < components.len() {
                if !entry.is_dir() {
                    return Err(FsError::NotADirectory);
                }
                dir = entry.to_dir();
            }
            found = Some(entry);
        }
        Ok(found)
    }

    fn dir(&self, components: &[String]) -> Result<Dir<'_, ReadOnly>, FsError> {
        match self.entry(components)? {
            None => Ok(self.fs.root_dir()),
            Some(entry) if entry.is_dir() => Ok(entry.to_dir()),
            Some(_) => Err(FsError::NotADirectory),
        }
    }
}

/// The entry named `name` in `dir`, among its first `MAX_DIR_ENTRIES`.
fn find<'a>(dir: &Dir<'a, ReadOnly>, name: &str) -> Result<Option<fatfs::DirEntry<'a, ReadOnly>>, FsError> {
    for entry in dir.iter().take(MAX_DIR_ENTRIES) {
        let entry = entry.map_err(FsError::Fat)?;
        if entry.file_name().eq_ignore_ascii_case(name) || entry.short_file_name().eq_ignore_ascii_case(name) {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

impl BootFs for FatFs {
    fn kind(&self, components: &[String]) -> Result<Kind, FsError> {
        Ok(match self.entry(components)? {
            None => Kind::Dir,
            Some(entry) if entry.is_dir() => Kind::Dir,
            Some(entry) if entry.is_file() => Kind::File { len: entry.len() },
            Some(_) => Kind::Other,
        })
    }

    fn read_link(&self, _: &[String]) -> Result<String, FsError> {
        Err(FsError::BadLink)
    }

    fn list(&self, components: &[String]) -> Result<Vec<String>, FsError> {
        let dir = self.dir(components)?;
        let mut names = Vec::new();
        for entry in dir.iter().take(MAX_DIR_ENTRIES) {
            let name = entry.map_err(FsError::Fat)?.file_name();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn copy(&self, components: &[String], limit: u64, out: &mut dyn Write) -> Result<u64, FsError> {
        let entry = self.entry(components)?.ok_or(FsError::NotAFile)?;
        if !entry.is_file() {
            return Err(FsError::NotAFile);
        }
        if entry.len() > limit {
            return Err(FsError::TooLarge { len: entry.len(), limit });
        }
        let mut file = entry.to_file();
        copy_bounded(|buf| file.read(buf).map_err(FsError::Fat), limit, out)
    }

    /// Linux shows a FAT volume's serial number as `XXXX-XXXX`.
    fn uuid(&self) -> String {
        let id = self.fs.volume_id();
        format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
    }

    fn name(&self) -> &'static str {
        "vfat"
    }
}
