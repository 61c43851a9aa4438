//! Files of the data directory that hold secrets (the database, the token,
//! the kubeconfig, TLS keys) are born private: the mode is given when the
//! file or directory is created, never set afterwards, so there is no moment
//! in which another user could open them.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;
/// Mode of private directories.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) as 0700; an existing directory that
/// others may read or enter is tightened to 0700, with a log line.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"), "tightening the data directory to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Opens (or creates, mode 0600) a file for reading and writing without
/// truncating it; an existing file others may read is tightened to 0600.
pub fn open_private(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(FILE_MODE).open(path)?;
    tighten(&file, path)?;
    Ok(file)
}

/// Reads a private file kept from an earlier run, tightening it to 0600
/// first if others may read it (written by an older version, or by hand).
pub fn read_private(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    tighten(&file, path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok(bytes)
}

/// Removes group and other permissions from an open file (fchmod: the file
/// opened, not whatever the path names by now), with a log line.
fn tighten(file: &File, path: &Path) -> std::io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(file = %path.display(), mode = format!("{mode:04o}"), "tightening a private file to 0600");
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (a new 0600 file renamed over it), so
/// a reader never sees half of it.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_born_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        write_private(&data.join("token"), b"secret").unwrap();
        assert_eq!(mode(&data.join("token")), 0o600);
        assert_eq!(std::fs::read(data.join("token")).unwrap(), b"secret");
        open_private(&data.join("state.redb")).unwrap();
        assert_eq!(mode(&data.join("state.redb")), 0o600);

        let shared = data.join("old-token");
        std::fs::write(&shared, b"kept").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_private(&shared).unwrap(), b"kept");
        assert_eq!(mode(&shared), 0o600, "a private file kept from before is tightened");

        let wide = dir.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&wide).unwrap();
        assert_eq!(mode(&wide), 0o700, "an existing 0755 data directory is tightened");
    }
}
