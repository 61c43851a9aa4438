//! The VM process's own PID namespace. A process cannot move itself into a
//! new one (`unshare(CLONE_NEWPID)` only places its future children there),
//! so it forks: the child is pid 1 of the new namespace and goes on to run
//! the VM; the parent stays behind as a small supervisor outside the jail,
//! as Firecracker's jailer does with `--new-pid-ns`, except that it waits
//! rather than exiting, so the process the caller started lives exactly as
//! long as the VM and ends with the VM's exit status.
//!
//! From its namespace the VM sees no other process: it cannot signal, trace
//! or even name one, and `/proc` of the host is gone with the old root.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};

use super::{step, JailError};

/// The read end of a pipe whose only writer is the supervisor: it reads as
/// hung up once the supervisor is gone, whatever the namespaces say.
static SUPERVISOR: OnceLock<OwnedFd> = OnceLock::new();

/// Forks into a new PID namespace and returns, in the child only, the
/// child's pid as the host sees it (inside, it is 1; the parent tells it).
/// The parent never returns: it forwards the signals of `forward` that a process sent it
/// (not those the terminal sent its whole process group, which reach the
/// child too) and exits as the child did (its status, or 128 + the signal
/// that killed it). The child dies with SIGKILL if the parent does
/// (`die_with_supervisor`, again after every change of identity).
///
/// Must run while the process has a single thread, as root.
pub fn enter(forward: SigSet) -> Result<u32, JailError> {
    // Checked where /proc shows it (a chroot may have none).
    let threads = std::fs::read_dir("/proc/self/task").map(|tasks| tasks.count()).unwrap_or(1);
    if threads != 1 {
        let step = "enter a PID namespace (the process must be single-threaded)";
        return Err(JailError::Step { step, source: nix::Error::EBUSY });
    }
    // Blocked before the fork, so that the child's exit is never lost
    // between the parent's check and its wait; the child restores the mask.
    let mut waited = forward;
    waited.add(Signal::SIGCHLD);
    let previous = waited.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK).map_err(step("block signals"))?;
    let (link_read, link_write) = pipe2(OFlag::O_CLOEXEC).map_err(step("make the supervisor link"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(step("unshare the PID namespace"))?;
    // SAFETY: the process is single-threaded (checked above), so the child
    // holds no lock another thread could have taken and may run any code.
    match unsafe { fork() }.map_err(step("fork into the PID namespace"))? {
        ForkResult::Parent { child } => {
            drop(link_read);
            // The child's pid as the host sees it (inside, it is 1), then the
            // link stays open, never written again, until the supervisor exits.
            let _ = nix::unistd::write(&link_write, &child.as_raw().to_ne_bytes());
            std::mem::forget(link_write);
            supervise(child, waited)
        }
        ForkResult::Child => {
            drop(link_write);
            previous.thread_set_mask().map_err(step("restore the signal mask"))?;
            let mut pid = [0u8; 4];
            let read = nix::unistd::read(&link_read, &mut pid).map_err(step("read the host pid"))?;
            if read != pid.len() {
                return Err(supervisor_gone());
            }
            let _ = SUPERVISOR.set(link_read);
            die_with_supervisor()?;
            Ok(i32::from_ne_bytes(pid) as u32)
        }
    }
}

/// Arms SIGKILL for this process's parent's death, and fails if the
/// supervisor is already gone. The kernel clears the setting when the
/// process changes its uid or gid, so the jail calls this again afterwards.
/// Without a supervisor (no PID namespace) there is nothing to do.
pub fn die_with_supervisor() -> Result<(), JailError> {
    let Some(link) = SUPERVISOR.get() else { return Ok(()) };
    // SAFETY: PR_SET_PDEATHSIG takes the signal number by value; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(JailError::Step { step: "set the parent-death signal", source: nix::Error::last() });
    }
    // Armed; had the supervisor died before, its end of the link is closed.
    let mut fds = [PollFd::new(link.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).map_err(step("check the supervisor"))?;
    if fds[0].revents().is_some_and(|r| !r.is_empty()) {
        return Err(supervisor_gone());
    }
    Ok(())
}

fn supervisor_gone() -> JailError {
    JailError::Step { step: "the supervising parent exited", source: nix::Error::ESRCH }
}

fn supervise(child: Pid, waited: SigSet) -> ! {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => std::process::exit(128 + signal as i32),
            Ok(_) => {}
            Err(errno) => {
                eprintln!("kvmlet: cannot wait for the VM process {child}: {errno}");
                std::process::exit(1);
            }
        }
        let Some((signal, from_terminal)) = next_signal(&waited) else { continue };
        if signal != libc::SIGCHLD && !from_terminal {
            if let Ok(signal) = Signal::try_from(signal) {
                let _ = kill(child, signal);
            }
        }
    }
}

/// The next signal of `set` (all blocked) and whether the kernel sent it
/// (a terminal's Ctrl-C), rather than a process.
fn next_signal(set: &SigSet) -> Option<(libc::c_int, bool)> {
    // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; the set outlives it.
    let signal = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
    (signal > 0).then_some((signal, info.si_code == libc::SI_KERNEL))
}
