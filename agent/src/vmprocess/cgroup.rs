//! Moving VM processes out of the agent's cgroup.
//!
//! Under a DaemonSet the agent's container has its own cgroup; a VM process
//! left there would be killed with the container on a rolling update. With
//! `--cgroup-parent DIR` (a directory of the host's cgroup tree mounted into
//! the pod, e.g. `/sys/fs/cgroup/kvmlet`), each VM process is moved into
//! `DIR/<uid>/` right after it starts, before it runs any guest code, so it
//! outlives the agent's container. Works on cgroup v2 and on a v1 hierarchy
//! (both have `cgroup.procs`). Under systemd, `KillMode=process` does the same
//! job and no cgroup parent is needed.

use std::io;
use std::path::{Path, PathBuf};

use super::state_dir::StateDir;

fn vm_cgroup(parent: &Path, dir: &StateDir) -> PathBuf {
    parent.join(dir.path().file_name().unwrap_or_default())
}

/// Creates `parent/<uid>/` and moves `pid` into it.
pub fn enter(parent: &Path, dir: &StateDir, pid: u32) -> io::Result<()> {
    let cgroup = vm_cgroup(parent, dir);
    std::fs::create_dir_all(&cgroup)
        .map_err(|e| io::Error::new(e.kind(), format!("create cgroup {}: {e}", cgroup.display())))?;
    std::fs::write(cgroup.join("cgroup.procs"), format!("{pid}\n"))
        .map_err(|e| io::Error::new(e.kind(), format!("move pid {pid} into {}: {e}", cgroup.display())))
}

/// Removes the VM's cgroup once its process is gone (an empty cgroup is
/// removed with rmdir; its control files go with it).
pub fn remove(parent: &Path, dir: &StateDir) {
    let cgroup = vm_cgroup(parent, dir);
    if let Err(e) = std::fs::remove_dir(&cgroup) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(cgroup = %cgroup.display(), error = %e, "cannot remove the VM's cgroup");
        }
    }
}
