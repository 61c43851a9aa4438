//! A VM's state directory, `RUN_DIR/vms/<uid>/`: everything the agent and the
//! VM process share, so that a restarted agent finds its VMs again.
//!
//! | file | written by | what |
//! |---|---|---|
//! | `vm.json` | agent, before spawning | [`VmRecord`]: the VMI's identity and the `VmConfig` |
//! | `lock` | VM process holds `flock` on it while alive | at most one VM process per UID |
//! | `pid` | VM process | its pid |
//! | `control.sock` | VM process | [`proto::debug::ControlRequest`] lines |
//! | `serial.log` | VM process | the guest's serial console |
//! | `exit.json` | VM process, last | [`proto::debug::VmExit`] |
//! | `vmm.log` | VM process (stderr) | its own log |
//! | `disks/` | agent | seed image, empty disks, container disk overlays |
//! | `boot/` | agent | `kernel` and `initrd` copied out of the boot disk (no `kernelBoot`) |

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use proto::debug::VmExit;
use serde::{Deserialize, Serialize};
use vmm::VmConfig;

/// Who a VM is, as far as the node is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// `vm.json`: what the agent asked the VM process to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRecord {
    #[serde(flatten)]
    pub identity: VmIdentity,
    pub config: VmConfig,
    /// The network namespace (`/run/netns/kvmlet-<uid>`) the VM process
    /// enters before anything else: its tap is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<std::path::PathBuf>,
    /// The cgroups (made and limited by the agent) the VM process enters
    /// before anything else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<PathBuf>,
    /// Who the VM process jails itself as (`vmm::jail`). None only in records
    /// written before the jail existed: the agent always sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_user: Option<vmm::jail::VmUser>,
    /// Which kernel boots and why, when the node chose it from the VMI's
    /// boot disk (`node::boot_disk`): `kvmlet inspect` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    /// Answer `testJail` control requests (the agent's hidden `--test-vm-hooks`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_hooks: bool,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// `RUN_DIR/vms/<uid>`; the UID must be a plain name (it comes from the API).
    pub fn new(run_dir: &Path, uid: &str) -> io::Result<StateDir> {
        let valid = !uid.is_empty()
            && uid.len() <= 128
            && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a usable VMI uid: {uid:?}")));
        }
        Ok(StateDir { path: vms_dir(run_dir).join(uid) })
    }

    pub fn open(path: PathBuf) -> StateDir {
        StateDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn record(&self) -> PathBuf {
        self.path.join("vm.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.path.join("lock")
    }
    pub fn pid(&self) -> PathBuf {
        self.path.join("pid")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.path.join("serial.log")
    }
    pub fn exit(&self) -> PathBuf {
        self.path.join("exit.json")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }
    /// The empty directory the jailed VM process mounts its own root on.
    pub fn jail_root(&self) -> PathBuf {
        self.path.join("root")
    }
    pub fn disks(&self) -> PathBuf {
        self.path.join("disks")
    }
    /// Where a boot disk's own kernel and initrd are copied.
    pub fn boot(&self) -> PathBuf {
        self.path.join("boot")
    }

    pub fn read_record(&self) -> io::Result<VmRecord> {
        let bytes = std::fs::read(self.record())?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    pub fn write_record(&self, record: &VmRecord) -> io::Result<()> {
        write_atomically(&self.record(), &serde_json::to_vec_pretty(record)?)
    }

    /// The exit a VM process recorded, if it got that far.
    pub fn read_exit(&self) -> Option<VmExit> {
        serde_json::from_slice(&std::fs::read(self.exit()).ok()?).ok()
    }

    pub fn write_exit(&self, exit: &VmExit) -> io::Result<()> {
        write_atomically(&self.exit(), &serde_json::to_vec(exit)?)
    }

    /// Creates an empty `exit.json` (read as no exit yet) and keeps it open:
    /// a jailed VM process can open no path when the guest ends.
    pub fn create_exit_record(&self) -> io::Result<ExitRecord> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(self.exit())?;
        Ok(ExitRecord(file))
    }

    pub fn read_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid()).ok()?.trim().parse().ok()
    }

    /// True while a VM process holds the lock: it is alive (a crashed or
    /// killed process drops it with its last file descriptor).
    pub fn is_locked(&self) -> bool {
        let Ok(file) = File::open(self.lock()) else { return false };
        matches!(Flock::lock(file, FlockArg::LockExclusiveNonblock), Err((_, Errno::EWOULDBLOCK)))
    }

    /// Takes the VM process's lock for the life of the returned file, or
    /// fails if another process has it.
    pub fn take_lock(&self) -> io::Result<Flock<File>> {
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(self.lock())?;
        // `is_locked` (an agent looking) holds the lock for an instant: only
        // a lock held for longer means another VM process.
        let deadline = std::time::Instant::now() + LOCK_PROBE_WAIT;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((again, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                    file = again;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(io::Error::new(io::ErrorKind::WouldBlock, "another VM process runs this VMI"))
                }
                Err((_, errno)) => return Err(errno.into()),
            }
        }
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `RUN_DIR/vms`, where every VM's state directory lives.
/// The open, still empty `exit.json` of a running VM process.
pub struct ExitRecord(File);

impl ExitRecord {
    /// Writes the exit in one piece and syncs it, before the process ends
    /// (the agent reads it once the process's lock is released).
    pub fn write(mut self, exit: &VmExit) -> io::Result<()> {
        use std::io::Write;
        let bytes = serde_json::to_vec(exit)?;
        self.0.set_len(0)?;
        self.0.write_all(&bytes)?;
        self.0.sync_all()
    }
}

/// How long a VM process retries a lock someone holds before it concludes
/// that another VM process runs its VMI.
const LOCK_PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

pub fn vms_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("vms")
}

/// Every state directory under `run_dir` (in no particular order).
pub fn list(run_dir: &Path) -> Vec<StateDir> {
    let Ok(entries) = std::fs::read_dir(vms_dir(run_dir)) else { return Vec::new() };
    entries.flatten().filter(|e| e.path().is_dir()).map(|e| StateDir::open(e.path())).collect()
}

/// Writes `path` through a temporary file and a rename, so a reader sees the
/// old contents or the new ones, never half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_must_be_plain_names() {
        let run = Path::new("/run/kvmlet");
        assert_eq!(StateDir::new(run, "4f1c-9a").unwrap().path(), Path::new("/run/kvmlet/vms/4f1c-9a"));
        for bad in ["", "..", "a/b", "../../etc", "a b"] {
            assert!(StateDir::new(run, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let run = tempfile::tempdir().unwrap();
        let dir = StateDir::new(run.path(), "u1").unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        assert!(!dir.is_locked());
        let held = dir.take_lock().unwrap();
        assert!(dir.is_locked());
        assert_eq!(dir.take_lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        assert!(!dir.is_locked());
        assert_eq!(list(run.path()).len(), 1);
    }

    #[test]
    fn an_agent_looking_at_the_lock_does_not_keep_a_vm_process_from_taking_it() {
        let run = tempfile::tempdir().unwrap();
        let dir = StateDir::new(run.path(), "u1").unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let looking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let agent = {
            let (dir, looking) = (dir.clone(), looking.clone());
            std::thread::spawn(move || {
                while looking.load(std::sync::atomic::Ordering::Relaxed) {
                    dir.is_locked();
                }
            })
        };
        // Each take meets the agent's probe sooner or later.
        for _ in 0..20_000 {
            drop(dir.take_lock().expect("a probe is not another VM process"));
        }
        looking.store(false, std::sync::atomic::Ordering::Relaxed);
        agent.join().unwrap();
    }
}
