//! Makes the files a `VmPlan` asks for, in the VM's state directory.

use std::io;
use std::path::Path;

use super::translate::DiskFile;

/// Creates every file; an existing host disk (`DiskOrCreate`) is kept as is.
pub fn make(files: &[DiskFile]) -> io::Result<()> {
    for file in files {
        match file {
            DiskFile::Sparse { path, bytes, keep_existing } => {
                if *keep_existing && path.exists() {
                    continue;
                }
                create_parent(path)?;
                let f = std::fs::File::create(path).map_err(|e| named(path, e))?;
                f.set_len(*bytes).map_err(|e| named(path, e))?;
            }
            DiskFile::Copy { from, to } => {
                create_parent(to)?;
                // std::fs::copy uses copy_file_range: a reflink where the
                // filesystem has them, else an in-kernel copy.
                std::fs::copy(from, to).map_err(|e| named(from, e))?;
            }
            DiskFile::Seed { path, seed } => {
                create_parent(path)?;
                seed.write_image(path).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
            }
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|e| named(parent, e)),
        None => Ok(()),
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
