//! A boot file system, read-only: ext2/3/4 (`ext4`) or FAT (`fat`) behind one
//! small trait, and the path resolution on top of it. Paths are the disk's
//! own (`/boot/vmlinuz`), resolved inside the file system with its symlinks
//! followed at most `MAX_SYMLINK_HOPS` times and `MAX_PATH_DEPTH` components
//! deep; none ever names a host file.

use std::io::{self, Write};
use std::sync::Arc;

use super::partitions::Partition;
use super::{DiskRead, MAX_CONFIG_BYTES, MAX_DIR_ENTRIES, MAX_PATH_DEPTH, MAX_SYMLINK_HOPS};

/// What a name in a directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File { len: u64 },
    Dir,
    Symlink,
    Other,
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("not found")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    #[error("not a directory")]
    NotADirectory,
    #[error("more than {MAX_SYMLINK_HOPS} symbolic links followed")]
    SymlinkHops,
    #[error("more than {MAX_PATH_DEPTH} path components")]
    TooDeep,
    #[error("{len} bytes, more than the {limit}-byte limit")]
    TooLarge { len: u64, limit: u64 },
    #[error("a symbolic link target that is not a path")]
    BadLink,
    #[error("ext2/3/4")]
    Ext4(#[source] ext4_view::Ext4Error),
    #[error("FAT")]
    Fat(#[source] io::Error),
    #[error("writing the copy")]
    Write(#[source] io::Error),
}

/// The operations boot-file lookups need. `path` is absolute, already
/// resolved (no `.`/`..`, no symlink but maybe the last component).
pub trait BootFs {
    /// What the last component is, without following it.
    fn kind(&self, path: &[String]) -> Result<Kind, FsError>;
    /// A symlink's target, as stored.
    fn read_link(&self, path: &[String]) -> Result<String, FsError>;
    /// The names in a directory (at most `MAX_DIR_ENTRIES`).
    fn list(&self, path: &[String]) -> Result<Vec<String>, FsError>;
    /// Copies a regular file to `out`; at most `limit` bytes, else `TooLarge`.
    fn copy(&self, path: &[String], limit: u64, out: &mut dyn Write) -> Result<u64, FsError>;
    /// The UUID Linux's `root=UUID=` names this file system by.
    fn uuid(&self) -> String;
    /// "ext4" or "vfat", for messages.
    fn name(&self) -> &'static str;
}

/// A partition as a disk of its own.
#[derive(Clone)]
pub struct Slice {
    pub disk: Arc<dyn DiskRead>,
    pub part: Partition,
}

impl Slice {
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.part.len) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the partition"));
        }
        self.disk.read_at(buf, self.part.start + offset)
    }
}

/// Opens the file system on `part`, if it holds one kvmlet reads.
pub fn open(disk: &Arc<dyn DiskRead>, part: Partition) -> Result<Option<Box<dyn BootFs>>, FsError> {
    let slice = Slice { disk: disk.clone(), part };
    if super::ext4::probe(&slice) {
        return Ok(Some(Box::new(super::ext4::Ext4Fs::open(slice)?)));
    }
    if super::fat::probe(&slice) {
        return Ok(Some(Box::new(super::fat::FatFs::open(slice)?)));
    }
    Ok(None)
}

/// Splits `path` into components, applying `.` and `..` (never above the root).
fn push_components(into: &mut Vec<String>, path: &str) -> Result<(), FsError> {
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                into.pop();
            }
            name => {
                if name.contains('\0') {
                    return Err(FsError::BadLink);
                }
                into.push(name.to_string());
                if into.len() > MAX_PATH_DEPTH {
                    return Err(FsError::TooDeep);
                }
            }
        }
    }
    Ok(())
}

/// Resolves `path` (absolute, or relative to the root) to the components of
/// what it names, following symlinks, the last one too.
pub fn resolve(fs: &dyn BootFs, path: &str) -> Result<(Vec<String>, Kind), FsError> {
    let mut pending = Vec::new();
    push_components(&mut pending, path)?;
    pending.reverse();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            done.pop();
            continue;
        }
        done.push(name);
        if done.len() > MAX_PATH_DEPTH {
            return Err(FsError::TooDeep);
        }
        match fs.kind(&done)? {
            Kind::Symlink => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(FsError::SymlinkHops);
                }
                let target = fs.read_link(&done)?;
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                // The target's components go first, `..` kept for the loop above.
                let mut parts: Vec<String> =
                    target.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_string).collect();
                if parts.iter().any(|c| c.contains('\0')) {
                    return Err(FsError::BadLink);
                }
                if parts.len() + pending.len() > MAX_PATH_DEPTH * 4 {
                    return Err(FsError::TooDeep);
                }
                parts.reverse();
                pending.extend(parts);
            }
            Kind::Dir => {}
            kind if pending.is_empty() => return Ok((done, kind)),
            _ => return Err(FsError::NotADirectory),
        }
    }
    Ok((done, Kind::Dir))
}

/// The regular file at `path`, resolved; its components and length.
pub fn file(fs: &dyn BootFs, path: &str) -> Result<(Vec<String>, u64), FsError> {
    match resolve(fs, path)? {
        (components, Kind::File { len }) => Ok((components, len)),
        _ => Err(FsError::NotAFile),
    }
}

/// A small text file (a boot loader configuration): None when it does not
/// exist; at most `MAX_CONFIG_BYTES`.
pub fn read_config(fs: &dyn BootFs, path: &str) -> Result<Option<String>, FsError> {
    let (components, _) = match file(fs, path) {
        Ok(found) => found,
        Err(FsError::NotFound | FsError::NotADirectory) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    fs.copy(&components, MAX_CONFIG_BYTES, &mut bytes)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The names in directory `path` (empty when it does not exist).
pub fn list_dir(fs: &dyn BootFs, path: &str) -> Result<Vec<String>, FsError> {
    match resolve(fs, path) {
        Ok((components, Kind::Dir)) => {
            let mut names = fs.list(&components)?;
            names.truncate(MAX_DIR_ENTRIES);
            Ok(names)
        }
        Ok(_) | Err(FsError::NotFound | FsError::NotADirectory) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// "/a/b" for components `[a, b]`.
pub fn display(components: &[String]) -> String {
    format!("/{}", components.join("/"))
}

/// Copies at most `limit` bytes from `read` (a file reader) to `out`, failing
/// past the limit whatever the file claimed its length was.
pub fn copy_bounded(
    mut read: impl FnMut(&mut [u8]) -> Result<usize, FsError>,
    limit: u64,
    out: &mut dyn Write,
) -> Result<u64, FsError> {
    let mut buffer = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = read(&mut buffer)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(FsError::TooLarge { len: total, limit });
        }
        out.write_all(&buffer[..n]).map_err(FsError::Write)?;
    }
}
