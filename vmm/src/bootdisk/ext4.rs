//! ext2/3/4 through the `ext4-view` crate (read-only by construction; it
//! checks metadata checksums and bounds its own lookups).

use std::io::Write;

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata};

use super::fs::{copy_bounded, BootFs, FsError, Kind, Slice};

/// The superblock's magic 0xEF53 at byte 1024 + 56.
pub fn probe(slice: &Slice) -> bool {
    let mut magic = [0u8; 2];
    slice.read_at(&mut magic, 1024 + 56).is_ok() && magic == [0x53, 0xef]
}

impl Ext4Read for Slice {
    fn read(&mut self, start: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_at(dst, start).map_err(Box::from)
    }
}

pub struct Ext4Fs {
    fs: Ext4,
}

impl Ext4Fs {
    pub fn open(slice: Slice) -> Result<Ext4Fs, FsError> {
        let fs = Ext4::load(Box::new(slice)).map_err(FsError::Ext4)?;
        Ok(Ext4Fs { fs })
    }
}

fn path(components: &[String]) -> String {
    format!("/{}", components.join("/"))
}

fn ext4_err(e: Ext4Error) -> FsError {
    match e {
        Ext4Error::NotFound => FsError::NotFound,
        Ext4Error::NotADirectory => FsError::NotADirectory,
        Ext4Error::IsADirectory | Ext4Error::IsASpecialFile => FsError::NotAFile,
        e => FsError::Ext4(e),
    }
}

fn kind_of(metadata: &Metadata) -> Kind {
    match metadata.file_type() {
        FileType::Regular => Kind::File { len: metadata.len() },
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

impl BootFs for Ext4Fs {
    fn kind(&self, components: &[String]) -> Result<Kind, FsError> {
        let metadata = self.fs.symlink_metadata(path(components).as_str()).map_err(ext4_err)?;
        Ok(kind_of(&metadata))
    }

    fn read_link(&self, components: &[String]) -> Result<String, FsError> {
        let target = self.fs.read_link(path(components).as_str()).map_err(ext4_err)?;
        target.to_str().map(str::to_string).map_err(|_| FsError::BadLink)
    }

    fn list(&self, components: &[String]) -> Result<Vec<String>, FsError> {
        let entries = self.fs.read_dir(path(components).as_str()).map_err(ext4_err)?;
        let mut names = Vec::new();
        for entry in entries.take(super::MAX_DIR_ENTRIES) {
            let entry = entry.map_err(ext4_err)?;
            if let Ok(name) = entry.file_name().as_str() {
                if name != "." && name != ".." {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    fn copy(&self, components: &[String], limit: u64, out: &mut dyn Write) -> Result<u64, FsError> {
        let mut file = self.fs.open(path(components).as_str()).map_err(ext4_err)?;
        let len = file.metadata().len();
        if len > limit {
            return Err(FsError::TooLarge { len, limit });
        }
        copy_bounded(|buf| file.read_bytes(buf).map_err(ext4_err), limit, out)
    }

    fn uuid(&self) -> String {
        self.fs.uuid().to_string()
    }

    fn name(&self) -> &'static str {
        "ext4"
    }
}
