//! Makes the files a `VmPlan` asks for: the VM's own files in its state
//! directory, and a `DiskOrCreate` host disk where its (checked) path says.
//! Every file is born 0600; none is made through a symlink.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::translate::DiskFile;

/// Creates every file; an existing host disk (`DiskOrCreate`) is kept as is.
pub fn make(files: &[DiskFile]) -> io::Result<()> {
    for file in files {
        match file {
            DiskFile::Sparse { path, bytes } => {
                create_parent(path)?;
                let f = create_new(path, true)?;
                f.set_len(*bytes).map_err(|e| named(path, e))?;
            }
            DiskFile::HostDisk { path, bytes } => match create_new(path, false) {
                Ok(f) => f.set_len(*bytes).map_err(|e| named(path, e))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            },
            DiskFile::Overlay { base, path } => {
                create_parent(path)?;
                // Made here (0600, never through a link, owned by the node:
                // the VM process opens it before it drops to its own uid),
                // then formatted as qcow2 over the base: a few KiB, whatever
                // the base's size; nothing of the base is copied.
                let file = create_new(path, true)?;
                let size = vmm::image::create_overlay(file, base)
                    .map_err(|e| named(base, io::Error::other(crate::errors::with_causes(&e))))?;
                tracing::debug!(overlay = %path.display(), base = %base.display(), size, "qcow2 overlay created");
            }
            DiskFile::Seed { path, seed } => {
                create_parent(path)?;
                seed.write_image(path).map_err(|e| io::Error::other(crate::errors::with_causes(&e)))?;
            }
        }
    }
    Ok(())
}

/// A file of the VM's own, born 0600, never through a symlink (a file left
/// by an earlier attempt is truncated).
pub(super) fn create_private(path: &Path) -> io::Result<std::fs::File> {
    create_new(path, true)
}

/// A new file, 0600, refusing a symlink in its place. `replace`: a file
/// left by an earlier attempt (the VM's own state directory) is truncated.
fn create_new(path: &Path, replace: bool) -> io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    options.open(path).map_err(|e| named(path, e))
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    #[test]
    fn files_are_private_and_host_disks_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let disks = dir.path().join("vm/disks");
        let host = dir.path().join("host.img");
        std::fs::write(&host, b"keep me").unwrap();
        let source = dir.path().join("image.raw");
        std::fs::write(&source, vec![0x5a; 8192]).unwrap();
        let created = dir.path().join("created.img");
        make(&[
            DiskFile::Sparse { path: disks.join("disk-0.img"), bytes: 4096 },
            DiskFile::Overlay { base: source.clone(), path: disks.join("disk-1.qcow2") },
            DiskFile::HostDisk { path: host.clone(), bytes: 4096 },
            DiskFile::HostDisk { path: created.clone(), bytes: 1024 },
        ])
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(std::fs::metadata(disks.join("disk-0.img")).unwrap().len(), 4096);
        let overlay = std::fs::read(disks.join("disk-1.qcow2")).unwrap();
        assert_eq!(overlay[..4], vmm::image::QCOW2_MAGIC, "the overlay is a qcow2 image");
        assert!(overlay.len() < 1 << 20, "nothing of the base was copied: {} bytes", overlay.len());
        let name = source.to_str().unwrap().as_bytes();
        assert!(overlay.windows(name.len()).any(|w| w == name), "the overlay names its base");
        assert_eq!(std::fs::read(&host).unwrap(), b"keep me", "an existing host disk is kept");
        assert_eq!(std::fs::metadata(&created).unwrap().len(), 1024);
        for p in [disks.join("disk-0.img"), disks.join("disk-1.qcow2"), created] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn no_file_is_made_through_a_symlink_or_in_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        symlink(&target, dir.path().join("link.img")).unwrap();
        assert!(make(&[DiskFile::Sparse { path: dir.path().join("link.img"), bytes: 512 }]).is_err());
        assert!(!target.exists(), "nothing was created where the link points");
        let deep = dir.path().join("missing/host.img");
        assert!(make(&[DiskFile::HostDisk { path: deep.clone(), bytes: 512 }]).is_err());
        assert!(!deep.parent().unwrap().exists(), "a host disk gets no directories");
    }
}
