//! `hostDisk` volumes, closed unless the operator opens them, as KubeVirt's
//! `HostDisk` feature gate: with the gate open, a hostDisk path must resolve
//! (symlinks followed, `..` removed) to a file strictly under one of the
//! node's host disk roots, and `DiskOrCreate` may only create the file, in
//! a directory that exists.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::SpecError;

/// KubeVirt's name for the gate.
pub const HOST_DISK_GATE: &str = "HostDisk";
/// Every feature gate this node knows.
pub const KNOWN_GATES: [&str; 1] = [HOST_DISK_GATE];

/// Whether hostDisk volumes may be used here, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDiskPolicy {
    enabled: bool,
    /// Canonical directories.
    roots: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("--feature-gates {HOST_DISK_GATE} needs at least one --host-disk-root")]
    NoRoots,
    #[error("--host-disk-root needs --feature-gates {HOST_DISK_GATE}")]
    GateClosed,
    #[error("--host-disk-root {path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("--host-disk-root {path}")]
    Unusable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HostDiskPolicy {
    /// The closed gate: no hostDisk volumes.
    pub fn closed() -> HostDiskPolicy {
        HostDiskPolicy::default()
    }

    /// The gate open with these roots (each must be an existing directory).
    pub fn new(enabled: bool, roots: &[PathBuf]) -> Result<HostDiskPolicy, PolicyError> {
        match (enabled, roots.is_empty()) {
            (true, true) => return Err(PolicyError::NoRoots),
            (false, false) => return Err(PolicyError::GateClosed),
            (false, true) => return Ok(HostDiskPolicy::closed()),
            (true, false) => {}
        }
        let canonical = roots
            .iter()
            .map(|root| {
                let path =
                    root.canonicalize().map_err(|source| PolicyError::Unusable { path: root.clone(), source })?;
                if !path.is_dir() {
                    return Err(PolicyError::NotADirectory { path: root.clone() });
                }
                Ok(path)
            })
            .collect::<Result<_, _>>()?;
        Ok(HostDiskPolicy { enabled: true, roots: canonical })
    }

    /// The resolved path of a hostDisk (`field` is `spec.volumes[i].hostDisk`),
    /// or why this node refuses it. `create`: the file may be made (`DiskOrCreate`).
    pub fn allow(&self, path: &str, create: bool, field: &str) -> Result<PathBuf, SpecError> {
        let path_field = format!("{field}.path");
        if !self.enabled {
            return Err(SpecError::new(
                path_field,
                format!(
                    "hostDisk volumes need the {HOST_DISK_GATE} feature gate, which is closed on this node \
                     (kvmlet agent --feature-gates {HOST_DISK_GATE} --host-disk-root DIR)"
                ),
            ));
        }
        let resolved = resolve(Path::new(path)).map_err(|e| SpecError::new(&path_field, format!("{path:?}: {e}")))?;
        if !self.roots.iter().any(|root| resolved.starts_with(root) && resolved != *root) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(SpecError::new(
                path_field,
                format!(
                    "{path:?} resolves to {}, which is not under a host disk root of this node ({})",
                    resolved.display(),
                    roots.join(", ")
                ),
            ));
        }
        match std::fs::symlink_metadata(&resolved) {
            Ok(meta) if meta.is_dir() => Err(SpecError::new(path_field, format!("{path:?} is a directory"))),
            Ok(_) => Ok(resolved),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let parent_is_dir = resolved.parent().is_some_and(Path::is_dir);
                if !parent_is_dir {
                    return Err(SpecError::new(
                        path_field,
                        format!("{path:?}: the directory does not exist (DiskOrCreate only creates the file)"),
                    ));
                }
                Ok(resolved)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SpecError::new(path_field, format!("{path:?} does not exist")))
            }
            Err(e) => Err(SpecError::new(path_field, format!("{path:?}: {e}"))),
        }
    }
}

/// `path` with every existing symlink followed and `..` removed, component
/// by component (so `link/..` is the parent of the link's target, as the
/// kernel sees it). Components that do not exist yet are kept as written; a
/// dangling symlink is an error (creating through it would land wherever it
/// points).
pub fn resolve(path: &Path) -> io::Result<PathBuf> {
    if !path.is_absolute() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"));
    }
    let mut resolved = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                match std::fs::symlink_metadata(&resolved) {
                    Ok(_) => {
                        resolved = resolved.canonicalize().map_err(|e| {
                            io::Error::new(e.kind(), format!("{} cannot be followed: {e}", resolved.display()))
                        })?
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Layout {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn layout() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("vms")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("vms/disk.img"), b"").unwrap();
        std::fs::write(outside.join("secret.img"), b"").unwrap();
        Layout { _dir: dir, root, outside }
    }

    fn policy(l: &Layout) -> HostDiskPolicy {
        HostDiskPolicy::new(true, std::slice::from_ref(&l.root)).unwrap()
    }

    fn allow(l: &Layout, path: &Path, create: bool) -> Result<PathBuf, SpecError> {
        policy(l).allow(path.to_str().unwrap(), create, "spec.volumes[0].hostDisk")
    }

    #[test]
    fn a_file_under_a_root_is_allowed() {
        let l = layout();
        assert_eq!(allow(&l, &l.root.join("vms/disk.img"), false), Ok(l.root.join("vms/disk.img")));
        assert_eq!(allow(&l, &l.root.join("vms/./new.img"), true), Ok(l.root.join("vms/new.img")));
        assert_eq!(allow(&l, &l.root.join("other/../vms/disk.img"), false), Ok(l.root.join("vms/disk.img")));
    }

    #[test]
    fn the_closed_gate_is_named() {
        let l = layout();
        let e = HostDiskPolicy::closed().allow(
            l.root.join("vms/disk.img").to_str().unwrap(),
            false,
            "spec.volumes[2].hostDisk",
        );
        let e = e.unwrap_err();
        assert_eq!(e.field, "spec.volumes[2].hostDisk.path");
        assert!(e.message.contains("HostDisk feature gate"), "{e}");
    }

    #[test]
    fn dot_dot_cannot_leave_the_root() {
        let l = layout();
        let e = allow(&l, &l.root.join("vms/../../outside/secret.img"), false).unwrap_err();
        assert_eq!(e.field, "spec.volumes[0].hostDisk.path");
        assert!(e.message.contains("not under a host disk root"), "{e}");
        assert!(e.message.contains(&l.root.display().to_string()), "the roots are named: {e}");
        assert!(allow(&l, &l.root.join("../outside/new.img"), true).is_err());
        assert!(allow(&l, &l.root, false).is_err(), "the root itself is no disk");
    }

    #[test]
    fn symlinks_are_followed_before_the_check() {
        let l = layout();
        symlink(&l.outside, l.root.join("escape")).unwrap();
        symlink(l.outside.join("secret.img"), l.root.join("vms/link.img")).unwrap();
        symlink(l.outside.join("missing.img"), l.root.join("vms/dangling.img")).unwrap();
        symlink(l.root.join("vms/disk.img"), l.root.join("vms/inside.img")).unwrap();
        assert!(allow(&l, &l.root.join("escape/secret.img"), false).unwrap_err().message.contains("not under"));
        assert!(allow(&l, &l.root.join("escape/new.img"), true).is_err(), "no file is created through a link");
        assert!(allow(&l, &l.root.join("vms/link.img"), false).is_err());
        assert!(allow(&l, &l.root.join("vms/dangling.img"), true).is_err(), "a dangling link is refused");
        assert_eq!(allow(&l, &l.root.join("vms/inside.img"), false), Ok(l.root.join("vms/disk.img")));
        // `link/..` is the parent of the link's target, not the root.
        symlink(l.outside.join("secret.img"), l.outside.join("x")).unwrap();
        std::fs::create_dir(l.outside.join("deep")).unwrap();
        symlink(l.outside.join("deep"), l.root.join("deep")).unwrap();
        assert!(allow(&l, &l.root.join("deep/../secret.img"), false).is_err());
    }

    #[test]
    fn disk_or_create_makes_no_directories_and_disk_needs_the_file() {
        let l = layout();
        let e = allow(&l, &l.root.join("newdir/new.img"), true).unwrap_err();
        assert!(e.message.contains("only creates the file"), "{e}");
        let e = allow(&l, &l.root.join("vms/missing.img"), false).unwrap_err();
        assert!(e.message.contains("does not exist"), "{e}");
        assert!(allow(&l, &l.root.join("vms"), false).unwrap_err().message.contains("is a directory"));
    }

    #[test]
    fn policy_flags_must_agree() {
        let l = layout();
        assert!(matches!(HostDiskPolicy::new(true, &[]), Err(PolicyError::NoRoots)));
        assert!(matches!(HostDiskPolicy::new(false, std::slice::from_ref(&l.root)), Err(PolicyError::GateClosed)));
        assert!(matches!(
            HostDiskPolicy::new(true, &[l.root.join("vms/disk.img")]),
            Err(PolicyError::NotADirectory { .. })
        ));
        assert!(matches!(HostDiskPolicy::new(true, &[l.root.join("nope")]), Err(PolicyError::Unusable { .. })));
        assert_eq!(HostDiskPolicy::new(false, &[]).unwrap(), HostDiskPolicy::closed());
    }
}
