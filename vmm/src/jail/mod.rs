//! The VM process's jail, after Firecracker's `jailer` but without a second
//! binary: the process that runs the VM confines itself once it holds every
//! file it needs (`HostFiles`, its control socket, its logs) and before any
//! guest code runs.
//!
//! First, while the process is still single-threaded, its own PID namespace
//! (`pid_namespace`: a fork, the VM running as pid 1). Then, once it holds
//! its files: new mount, IPC and UTS namespaces (and a new, empty network
//! namespace unless the node gave the VM one), with `pivot_root` into an empty
//! read-only tmpfs, so no host path is left to open; an unprivileged uid/gid
//! with no supplementary groups, no capabilities (the bounding set emptied)
//! and no-new-privs; then Landlock, as far as the kernel's ABI goes: every
//! filesystem access, TCP bind/connect, abstract UNIX sockets and signals
//! outside the jail refused. Seccomp comes last, per thread (`seccomp`).
//!
//! The cgroup limits are the agent's (`agent/src/vmprocess/cgroup.rs`): the
//! process enters its cgroups before any of this.

pub mod pid_namespace;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
use serde::{Deserialize, Serialize};

/// The newest Landlock ABI kvmlet asks for; older kernels enforce what they know.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Who a jailed VM process runs as: numeric ids, no account needs to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmUser {
    pub uid: u32,
    pub gid: u32,
}

impl VmUser {
    /// KubeVirt's `qemu` user, 107:107.
    pub const DEFAULT: VmUser = VmUser { uid: 107, gid: 107 };
}

impl std::fmt::Display for VmUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl FromStr for VmUser {
    type Err = String;

    fn from_str(text: &str) -> Result<VmUser, String> {
        let (uid, gid) = text.split_once(':').ok_or_else(|| format!("`{text}` is not UID:GID"))?;
        let id = |part: &str, what: &str| {
            part.parse::<u32>().map_err(|_| format!("`{text}`: {what} `{part}` is not a number"))
        };
        let user = VmUser { uid: id(uid, "uid")?, gid: id(gid, "gid")? };
        if user.uid == 0 || user.gid == 0 {
            return Err(format!("`{text}`: a VM must not run as root (uid or gid 0)"));
        }
        // (uid_t)-1 means "unchanged" to setresuid.
        if user.uid == u32::MAX || user.gid == u32::MAX {
            return Err(format!("`{text}`: 4294967295 is not a usable id"));
        }
        Ok(user)
    }
}

/// What the jail is made of for one VM process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// An existing directory the new root (an empty tmpfs) is mounted on,
    /// inside the process's own mount namespace only.
    pub root: PathBuf,
    pub user: VmUser,
    /// Unshare a new, empty network namespace (when the node gave the VM
    /// none of its own: a VM without a NIC needs no network at all).
    pub new_network: bool,
}

/// How much of the jail the kernel enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockLevel {
    Full,
    Partial,
    /// The kernel has no Landlock (or it is disabled at boot).
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {step}")]
    Step {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("jail: the new root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: Landlock")]
    Landlock(#[source] landlock::RulesetError),
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |source| JailError::Step { step, source }
}

/// Confines the calling process. Must run while it has a single thread
/// (a multi-threaded process cannot enter a new mount namespace), as root.
pub fn enter(config: &JailConfig) -> Result<LandlockLevel, JailError> {
    enter_namespaces(config)?;
    drop_identity(config.user)?;
    // Changing the uid cleared the parent-death signal: armed again.
    pid_namespace::die_with_supervisor()?;
    restrict_with_landlock()
}

fn enter_namespaces(config: &JailConfig) -> Result<(), JailError> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if config.new_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(step("unshare namespaces"))?;
    // Nothing mounted from here on may propagate back to the host.
    let none: Option<&str> = None;
    // EINVAL here means / is no mount's root: a plain chroot, which
    // pivot_root cannot leave either.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(step(
        "make / private (it must be a mount point: in a chroot, bind-mount the new root onto itself first)",
    ))?;
    let root = config.root.as_path();
    if !root.is_dir() {
        let source = std::io::Error::from(std::io::ErrorKind::NotFound);
        return Err(JailError::Root { path: root.to_path_buf(), source });
    }
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), root, Some("tmpfs"), tmpfs_flags, Some("size=4k,nr_inodes=2,mode=0555"))
        .map_err(step("mount the new root"))?;
    pivot_into(root)?;
    let read_only = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs_flags;
    mount(none, "/", none, read_only, none).map_err(step("remount the new root read-only"))?;
    Ok(())
}

/// `pivot_root(".", ".")`, as runc does: the old root ends up stacked on the
/// new one and is detached at once, leaving no path to the host's files.
fn pivot_into(root: &Path) -> Result<(), JailError> {
    chdir(root).map_err(step("enter the new root"))?;
    pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    chdir("/").map_err(step("enter /"))
}

fn drop_identity(user: VmUser) -> Result<(), JailError> {
    // Emptying the bounding set needs CAP_SETPCAP, so it comes before setuid.
    drop_bounding_set()?;
    setgroups(&[]).map_err(step("setgroups"))?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    let uid = Uid::from_raw(user.uid);
    // Leaving uid 0 clears the permitted, effective and ambient sets.
    setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    set_no_new_privs()
}

fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0.. {
        // SAFETY: PR_CAPBSET_DROP takes the capability number by value; no
        // memory is passed. EINVAL marks the first number past the last one.
        let result = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if result != 0 {
            let errno = nix::Error::last();
            if errno == nix::Error::EINVAL && cap > 0 {
                return Ok(());
            }
            return Err(JailError::Step { step: "drop the capability bounding set", source: errno });
        }
    }
    Ok(())
}

fn set_no_new_privs() -> Result<(), JailError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::Step { step: "no_new_privs", source: nix::Error::last() });
    }
    Ok(())
}

/// No filesystem access at all (the process holds what it needs open),
/// no TCP bind or connect, no abstract UNIX sockets or signals beyond the jail.
fn restrict_with_landlock() -> Result<LandlockLevel, JailError> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(LANDLOCK_ABI)))
        .and_then(|r| r.scope(Scope::from_all(LANDLOCK_ABI)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(JailError::Landlock)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockLevel::Full,
        RulesetStatus::PartiallyEnforced => LandlockLevel::Partial,
        RulesetStatus::NotEnforced => LandlockLevel::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_users_are_numeric_and_never_root() {
        assert_eq!("107:107".parse::<VmUser>().unwrap(), VmUser::DEFAULT);
        assert_eq!("1000:2000".parse::<VmUser>().unwrap(), VmUser { uid: 1000, gid: 2000 });
        for (bad, says) in [
            ("107", "is not UID:GID"),
            ("qemu:qemu", "uid `qemu` is not a number"),
            ("107:", "gid `` is not a number"),
            ("0:107", "must not run as root"),
            ("107:0", "must not run as root"),
            ("4294967295:1", "not a usable id"),
            ("-1:1", "uid `-1` is not a number"),
        ] {
            let error = bad.parse::<VmUser>().unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
