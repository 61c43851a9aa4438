//! A VM process's cgroups: made and limited by the agent, entered by the VM
//! process itself before it runs any guest code.
//!
//! With `--cgroup-parent DIR` (repeatable), each VM gets `DIR/<uid>/` under
//! every parent. Under a DaemonSet that takes VMs out of the agent's
//! container cgroup, so a rolling update does not kill them; under systemd
//! `KillMode=process` already does that. Each VM cgroup gets the limits its
//! hierarchy has controllers for: on cgroup v2 one parent carries memory,
//! pids and cpu; on a v1 host give one parent per hierarchy
//! (`/sys/fs/cgroup/memory/kvmlet`, `/sys/fs/cgroup/pids/kvmlet`, ...).
//!
//! - memory: the guest's RAM plus [`VMM_MEMORY_ALLOWANCE_MIB`] for the VMM;
//!   beyond it the kernel's OOM killer stops the VM process, and the node
//!   reports the VMI as killed by its memory limit
//! - pids: [`PIDS_BASE`] plus one per vCPU
//! - cpu: a quota of one CPU per vCPU, and a weight proportional to vCPUs

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm::VmConfig;

use super::state_dir::StateDir;

/// Memory a VM process may use beyond its guest's RAM: thread stacks, device
/// queues, KVM's own structures (page tables, vCPU state). Measured: a
/// waiting probe VM's cgroup peaks at 1.8 MiB (its guest touches few pages;
/// the process's RSS, with the binary's shared pages, is ~9 MiB). The rest is
/// headroom for large guests' page tables (32 MiB for 16 GiB in 4 KiB pages)
/// and busy control connections.
pub const VMM_MEMORY_ALLOWANCE_MIB: u64 = 64;
/// Tasks a VM process may have besides one per vCPU: control and
/// control-connection threads, the serial flusher, a worker per virtio device.
pub const PIDS_BASE: u64 = 64;
const CPU_PERIOD_US: u64 = 100_000;

/// The limits of one VM's cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmLimits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub vcpus: u64,
}

impl VmLimits {
    pub fn of(config: &VmConfig) -> VmLimits {
        VmLimits::new(config.vcpus.into(), config.memory_mib)
    }

    fn new(vcpus: u64, memory_mib: u64) -> VmLimits {
        VmLimits { memory_bytes: (memory_mib + VMM_MEMORY_ALLOWANCE_MIB) << 20, pids: PIDS_BASE + vcpus, vcpus }
    }

    /// (file, value) for each limit, in both cgroup versions' names; a
    /// hierarchy takes those whose files it has.
    fn files(&self) -> Vec<(&'static str, String)> {
        let quota = self.vcpus * CPU_PERIOD_US;
        vec![
            ("memory.max", self.memory_bytes.to_string()),
            ("memory.limit_in_bytes", self.memory_bytes.to_string()),
            ("pids.max", self.pids.to_string()),
            ("cpu.max", format!("{quota} {CPU_PERIOD_US}")),
            ("cpu.weight", (100 * self.vcpus).clamp(1, 10_000).to_string()),
            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", quota.to_string()),
            ("cpu.shares", (1024 * self.vcpus).to_string()),
        ]
    }
}

fn vm_cgroup(parent: &Path, dir: &StateDir) -> PathBuf {
    parent.join(dir.path().file_name().unwrap_or_default())
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Creates `parent/<uid>/` under each parent with `limits` written, and
/// returns them, for the VM process to enter.
pub fn prepare(parents: &[PathBuf], dir: &StateDir, limits: &VmLimits) -> io::Result<Vec<PathBuf>> {
    let mut cgroups = Vec::new();
    for parent in parents {
        std::fs::create_dir_all(parent).map_err(|e| context(e, format!("create cgroup {}", parent.display())))?;
        delegate_controllers(parent);
        let cgroup = vm_cgroup(parent, dir);
        std::fs::create_dir_all(&cgroup).map_err(|e| context(e, format!("create cgroup {}", cgroup.display())))?;
        for (file, value) in limits.files() {
            let path = cgroup.join(file);
            if path.exists() {
                std::fs::write(&path, &value)
                    .map_err(|e| context(e, format!("write {value} to {}", path.display())))?;
            }
        }
        cgroups.push(cgroup);
    }
    Ok(cgroups)
}

/// On cgroup v2 a child has the controllers its parent delegates; each is
/// asked for on its own, as a host may lack one.
fn delegate_controllers(parent: &Path) {
    let subtree = parent.join("cgroup.subtree_control");
    if !subtree.exists() {
        return;
    }
    for controller in ["+memory", "+pids", "+cpu"] {
        if let Err(e) = std::fs::write(&subtree, controller) {
            tracing::debug!(cgroup = %parent.display(), controller, error = %e, "controller not delegated");
        }
    }
}

/// Moves the calling process into each of `cgroups` (the VM process does
/// this first, before it allocates guest memory).
pub fn enter(cgroups: &[PathBuf]) -> io::Result<()> {
    let pid = std::process::id();
    for cgroup in cgroups {
        std::fs::write(cgroup.join("cgroup.procs"), format!("{pid}\n"))
            .map_err(|e| context(e, format!("enter cgroup {}", cgroup.display())))?;
    }
    Ok(())
}

/// The memory limit of the first of `cgroups` whose OOM killer has killed a
/// process, in bytes.
pub fn oom_killed(cgroups: &[PathBuf]) -> Option<u64> {
    cgroups.iter().find_map(|cgroup| {
        // v2: memory.events; v1: memory.oom_control. Both say `oom_kill N`.
        let events = ["memory.events", "memory.oom_control"]
            .iter()
            .find_map(|file| std::fs::read_to_string(cgroup.join(file)).ok())?;
        let kills: u64 = events.lines().find_map(|l| l.strip_prefix("oom_kill "))?.trim().parse().ok()?;
        if kills == 0 {
            return None;
        }
        ["memory.max", "memory.limit_in_bytes"]
            .iter()
            .find_map(|file| std::fs::read_to_string(cgroup.join(file)).ok()?.trim().parse().ok())
    })
}

/// How long a VM process seen gone may take to leave its cgroups.
const REMOVE_RETRY_FOR: Duration = Duration::from_secs(10);

/// Removes the VM's cgroups once its process is gone (an empty cgroup is
/// removed with rmdir; its control files go with it). A process is seen gone
/// when its files close, a moment before the kernel takes it out of its
/// cgroups: a cgroup still busy then is removed by a thread that retries.
pub fn remove(parents: &[PathBuf], dir: &StateDir) {
    let busy: Vec<PathBuf> =
        parents.iter().map(|parent| vm_cgroup(parent, dir)).filter(|cgroup| !try_remove(cgroup, false)).collect();
    if busy.is_empty() {
        return;
    }
    let retry = move || {
        let deadline = Instant::now() + REMOVE_RETRY_FOR;
        let mut left = busy;
        while !left.is_empty() {
            let last = Instant::now() > deadline;
            left.retain(|cgroup| !try_remove(cgroup, last));
            if last {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    if let Err(e) = std::thread::Builder::new().name("cgroup-remove".into()).spawn(retry) {
        tracing::warn!(error = %e, "cannot wait for the VM's cgroups to empty");
    }
}

/// Whether `cgroup` is gone now; a failure other than "still busy" (or any,
/// when `last`) is logged and not retried.
fn try_remove(cgroup: &Path, last: bool) -> bool {
    match std::fs::remove_dir(cgroup) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !last => false,
        Err(e) => {
            tracing::warn!(cgroup = %cgroup.display(), error = %e, "cannot remove the VM's cgroup");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> VmLimits {
        VmLimits { memory_bytes: 96 << 20, pids: 66, vcpus: 2 }
    }

    #[test]
    fn limits_follow_the_guest() {
        assert_eq!(
            VmLimits::new(2, 32),
            VmLimits { memory_bytes: (32 + VMM_MEMORY_ALLOWANCE_MIB) << 20, pids: 66, vcpus: 2 }
        );
    }

    #[test]
    fn each_hierarchy_gets_the_limits_it_has_files_for() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        let dir = StateDir::new(&run, "uid-1").unwrap();
        // A v1 memory hierarchy and a v1 cpu one, imitated by their files
        // (the kernel creates them in a real cgroup's new directory).
        let (memory, cpu) = (root.path().join("memory"), root.path().join("cpu"));
        for (parent, files) in [
            (&memory, &["memory.limit_in_bytes"][..]),
            (&cpu, &["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"][..]),
        ] {
            std::fs::create_dir_all(parent.join("uid-1")).unwrap();
            for file in files {
                std::fs::write(parent.join("uid-1").join(file), "").unwrap();
            }
        }
        let cgroups = prepare(&[memory.clone(), cpu.clone()], &dir, &limits()).unwrap();
        assert_eq!(cgroups, [memory.join("uid-1"), cpu.join("uid-1")]);
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap();
        assert_eq!(read(memory.join("uid-1/memory.limit_in_bytes")), (96u64 << 20).to_string());
        assert!(!memory.join("uid-1/pids.max").exists(), "no file is made up");
        assert_eq!(read(cpu.join("uid-1/cpu.cfs_quota_us")), "200000");
        assert_eq!(read(cpu.join("uid-1/cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("uid-1/cpu.shares")), "2048");
    }

    #[test]
    fn an_oom_kill_is_read_from_either_version() {
        let root = tempfile::tempdir().unwrap();
        let (v1, v2) = (root.path().join("v1"), root.path().join("v2"));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "100663296\n").unwrap();
        std::fs::write(v2.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        std::fs::write(v2.join("memory.max"), "100663296\n").unwrap();
        assert_eq!(oom_killed(std::slice::from_ref(&v1)), None, "no kill yet");
        assert_eq!(oom_killed(&[v1.clone(), v2.clone()]), Some(96 << 20));
        std::fs::write(v1.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_killed(&[v1]), Some(96 << 20));
    }
}
