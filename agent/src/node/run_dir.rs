//! One agent per run directory: `RUN_DIR/agent.lock`, held with `flock` for
//! the agent's life and naming its pid. A second agent on the same directory
//! would re-attach to, and then fight over, the first one's VM processes; it
//! stops before touching anything instead.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the run directory.
pub const LOCK_NAME: &str = "agent.lock";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{} is in use by pid {pid}", path.display())]
    InUse { path: PathBuf, pid: String },
    #[error("cannot prepare the run directory {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The run directory's lock; released when dropped (or when the process ends).
/// The file is opened close-on-exec, so VM processes never inherit it.
#[derive(Debug)]
pub struct RunDirLock {
    _lock: Flock<File>,
}

impl RunDirLock {
    /// Takes the lock of `run_dir` (which must exist) and writes this
    /// process's pid into it, or says which process holds it.
    pub fn take(run_dir: &Path) -> Result<RunDirLock, RunDirError> {
        let path = run_dir.join(LOCK_NAME);
        let io = |source| RunDirError::Io { path: path.clone(), source };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_string(),
                    pid => pid.chars().take(20).collect(),
                };
                let path = std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
                return Err(RunDirError::InUse { path, pid });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(RunDirLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_names_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunDirLock::take(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_NAME)).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        // flock locks belong to the open file, so a second open in the same process conflicts too.
        let err = RunDirLock::take(dir.path()).unwrap_err();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(err.to_string(), format!("{} is in use by pid {}", real.display(), std::process::id()));
        drop(first);
        RunDirLock::take(dir.path()).expect("free again once the first holder is gone");
    }
}
