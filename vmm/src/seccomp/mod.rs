//! Seccomp filters per thread kind: each VMM thread, right after it starts,
//! narrows the syscalls it may make to what its kind needs.
//!
//! The process picks a [`SeccompMode`] once ([`configure`]); every thread
//! then calls [`enter`] with its [`ThreadKind`]. Filters stack: a thread
//! spawned by another keeps its parent's filter and adds its own, so the
//! controlling thread's list ([`ThreadKind::Control`]) is the widest and the
//! others (vCPU, device workers, the serial flusher) are subsets of it.
//!
//! A refused syscall in [`SeccompMode::Kill`] raises SIGSYS (action `Trap`);
//! the handler installed by [`configure`] writes one line naming the syscall
//! and the thread to standard error (the VM process's log, whose last line
//! the node agent puts in the VMI's failure reason) and ends the whole
//! process with exit status 159 (128 + SIGSYS). `Trap` rather than the
//! kernel's `KillProcess` because only the trap tells the process which
//! syscall it was, without needing access to the audit log.
//! [`SeccompMode::Log`] lets everything through and has the kernel log each
//! syscall outside the lists (`type=1326` audit records in dmesg).

mod rules;
mod syscall_names;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Exit status of a VM process stopped by a refused syscall (128 + SIGSYS).
pub const SECCOMP_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// What happens to a syscall outside the calling thread's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// The process stops, its log naming the syscall.
    Kill,
    /// The syscall runs; the kernel logs it (audit `type=1326`).
    Log,
    /// No filters at all.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SeccompMode, String> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            other => Err(format!("unknown seccomp mode {other:?} (kill, log or off)")),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Kill => "kill",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// The kinds of thread a VM process runs, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The thread that builds VMs and waits for them, and the control socket threads.
    Control,
    /// A vCPU: KVM_RUN and the device emulation it does on exits.
    Vcpu,
    /// The serial console flusher.
    Serial,
    /// A virtio-blk queue worker.
    BlockWorker,
    /// A virtio-net queue worker.
    NetWorker,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 5] =
        [ThreadKind::Control, ThreadKind::Vcpu, ThreadKind::Serial, ThreadKind::BlockWorker, ThreadKind::NetWorker];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Control => "control",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Serial => "serial",
            ThreadKind::BlockWorker => "virtio-blk",
            ThreadKind::NetWorker => "virtio-net",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp mode is already set")]
    AlreadyConfigured,
    #[error("cannot build the {kind} seccomp filter")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the SIGSYS handler")]
    SignalHandler(#[source] std::io::Error),
    #[error("cannot install the {kind} seccomp filter")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// The process's mode and the compiled filter of each thread kind.
struct Filters {
    mode: SeccompMode,
    programs: BTreeMap<ThreadKind, BpfProgram>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

/// Sets this process's seccomp mode and compiles every kind's filter; once
/// per process, before any VMM thread starts. Without it [`enter`] does nothing.
pub fn configure(mode: SeccompMode) -> Result<(), SeccompError> {
    let mut programs = BTreeMap::new();
    if mode != SeccompMode::Off {
        for kind in ThreadKind::ALL {
            programs.insert(kind, compile(kind, mode)?);
        }
    }
    if mode == SeccompMode::Kill {
        install_sigsys_handler()?;
    }
    if mode != SeccompMode::Off && !crate::malloc::never_shrink_thread_heaps() {
        tracing::warn!("glibc refused M_TRIM_THRESHOLD: freeing memory may make a refused open");
    }
    FILTERS.set(Filters { mode, programs }).map_err(|_| SeccompError::AlreadyConfigured)
}

/// The mode [`configure`] set, if any.
pub fn mode() -> Option<SeccompMode> {
    FILTERS.get().map(|f| f.mode)
}

/// Confines the calling thread to `kind`'s allow-list (nothing when the
/// process did not configure seccomp, or chose `off`).
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(program) = FILTERS.get().and_then(|f| f.programs.get(&kind)) else { return Ok(()) };
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { kind: kind.name(), source })
}

/// [`enter`] for a thread that cannot report an error to anyone: a thread
/// that fails to confine itself stops the process rather than run unconfined.
pub fn enter_or_exit(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "kvmlet: {e}{cause}; the VM process stops");
        std::process::exit(SECCOMP_EXIT_STATUS);
    }
}

/// The x86_64 name of syscall `number`, if it has one.
pub fn syscall_name(number: i64) -> Option<&'static str> {
    let name = *syscall_names::NAMES.get(usize::try_from(number).ok()?)?;
    (!name.is_empty()).then_some(name)
}

fn compile(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind: kind.name(), source };
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter =
        SeccompFilter::new(rules::allowed(kind).map_err(build)?, mismatch, SeccompAction::Allow, TargetArch::x86_64)
            .map_err(build)?;
    filter.try_into().map_err(build)
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
    // handler is an `extern "C"` function with the SA_SIGINFO signature and
    // only makes async-signal-safe calls (write, _exit).
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SeccompError::SignalHandler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Offset of `si_syscall` in x86_64's `siginfo_t` for SIGSYS: three ints, a
/// pad to 8 bytes, then `void *si_call_addr` before `int si_syscall`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler;
    // for SIGSYS with si_code SYS_SECCOMP, si_syscall is an int at this offset.
    let number = unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>().read_unaligned() };
    let mut line = LineBuffer::new();
    line.push(b"kvmlet: seccomp refused syscall ");
    line.push(syscall_name(number.into()).unwrap_or("unknown").as_bytes());
    line.push(b" (");
    line.push_number(number);
    line.push(b") on thread ");
    let mut thread_name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into the buffer.
    if unsafe { libc::prctl(libc::PR_GET_NAME, thread_name.as_mut_ptr()) } == 0 {
        let len = thread_name.iter().position(|&b| b == 0).unwrap_or(thread_name.len());
        line.push(&thread_name[..len]);
    }
    line.push(b"; the VM process stops\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(SECCOMP_EXIT_STATUS);
    }
}

/// A fixed buffer a signal handler can format into without allocating.
struct LineBuffer {
    bytes: [u8; 160],
    len: usize,
}

impl LineBuffer {
    fn new() -> LineBuffer {
        LineBuffer { bytes: [0; 160], len: 0 }
    }

    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text[..take]);
        self.len += take;
    }

    fn push_number(&mut self, number: i32) {
        if number < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 10];
        let mut value = number.unsigned_abs();
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in ThreadKind::ALL {
            assert!(!compile(kind, SeccompMode::Kill).unwrap().is_empty());
            assert!(!compile(kind, SeccompMode::Log).unwrap().is_empty());
        }
    }

    #[test]
    fn syscall_names_follow_the_x86_64_table() {
        assert_eq!(syscall_name(0), Some("read"));
        assert_eq!(syscall_name(41), Some("socket"));
        assert_eq!(syscall_name(42), Some("connect"));
        assert_eq!(syscall_name(-1), None);
        assert_eq!(syscall_name(100_000), None);
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [SeccompMode::Kill, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(mode.to_string().parse::<SeccompMode>().unwrap(), mode);
        }
        assert!("trap".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn line_buffer_formats_numbers_and_truncates() {
        let mut line = LineBuffer::new();
        line.push_number(0);
        line.push(b" ");
        line.push_number(435);
        line.push(b" ");
        line.push_number(-7);
        assert_eq!(&line.bytes[..line.len], b"0 435 -7");
        line.push(&[b'x'; 400]);
        assert_eq!(line.len, 160);
    }

    /// The filter lands on the thread that installs it, not on its siblings.
    #[test]
    fn a_filter_applies_to_its_thread_only() {
        let program = compile(ThreadKind::Control, SeccompMode::Kill).unwrap();
        let confined = std::thread::spawn(move || {
            seccompiler::apply_filter(&program).unwrap();
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        })
        .join()
        .unwrap();
        let filters =
            |status: &str| status.lines().find_map(|l| l.strip_prefix("Seccomp_filters:\t")).map(str::to_owned);
        let free = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(confined.contains("Seccomp:\t2"), "{confined}");
        assert_ne!(filters(&confined), filters(&free));
    }
}
