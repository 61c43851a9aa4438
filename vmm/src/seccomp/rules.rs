//! The allow-list of each thread kind, after Firecracker's
//! `x86_64-unknown-linux-musl.json` and Cloud Hypervisor's
//! `seccomp_filters.rs`, narrowed to what kvmlet's threads call (measured
//! with `--seccomp log` and the kernel's `type=1326` records).

use std::collections::BTreeMap;

use kvm_bindings::{kvm_coalesced_mmio_zone, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events};
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

use super::ThreadKind;

const KVMIO: u32 = 0xae;

/// `_IOC(dir, KVMIO, nr, size_of::<T>())`, as the kernel's headers define them.
const fn kvm_ioctl<T>(dir: u32, nr: u32) -> u64 {
    ioctl_expr(dir, KVMIO, nr, std::mem::size_of::<T>() as u32) as u64
}

const KVM_RUN: u64 = kvm_ioctl::<()>(_IOC_NONE, 0x80);
const KVM_GET_REGS: u64 = kvm_ioctl::<kvm_regs>(_IOC_READ, 0x81);
const KVM_GET_SREGS: u64 = kvm_ioctl::<kvm_sregs>(_IOC_READ, 0x83);
const KVM_GET_VCPU_EVENTS: u64 = kvm_ioctl::<kvm_vcpu_events>(_IOC_READ, 0x9f);
const KVM_TRANSLATE: u64 = kvm_ioctl::<kvm_translation>(_IOC_READ | _IOC_WRITE, 0x85);
const KVM_REGISTER_COALESCED_MMIO: u64 = kvm_ioctl::<kvm_coalesced_mmio_zone>(_IOC_WRITE, 0x67);
const KVM_UNREGISTER_COALESCED_MMIO: u64 = kvm_ioctl::<kvm_coalesced_mmio_zone>(_IOC_WRITE, 0x68);

/// What every thread does: memory, locks, signals, its own end, plain I/O on
/// descriptors it already holds, logging, and (on device activation, which
/// runs on a vCPU) starting a worker thread.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    // A thread started by another installs its own filter on top.
    libc::SYS_seccomp,
];

/// The controlling thread builds VMs (again on each reboot): it opens files
/// and /dev/kvm, sets up every KVM object, serves the control socket and
/// writes the state directory. Its list is inherited by every thread it
/// starts, so it is the union of all the others too.
const CONTROL: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_chmod,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    // imago reads a writable qcow2 file's block size when a boot opens it.
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_memfd_create,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_kill,
    libc::SYS_sched_setaffinity,
    libc::SYS_sysinfo,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getppid,
];

/// A block worker reads and writes its disk by offset and flushes it; it
/// punches holes and zeroes ranges (DISCARD, WRITE_ZEROES), and on a qcow2
/// image imago grows the file to zero a range past its end.
const BLOCK_WORKER: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
];

/// A net worker moves frames between the queues and its tap (or socket).
const NET_WORKER: &[i64] = &[libc::SYS_sendto, libc::SYS_recvfrom, libc::SYS_sendmsg, libc::SYS_recvmsg];

/// A vCPU emulates devices on its exits: block and net activation (tap
/// offloads), flushes, and the serial port's coalescing zone. The block and
/// net workers are started by the vCPU that activates their device and keep
/// its filter under their own, so the vCPU is also allowed what they make
/// (`allowed` adds their lists).
const VCPU: &[i64] = &[libc::SYS_eventfd2, libc::SYS_fcntl, libc::SYS_fsync, libc::SYS_fdatasync];

/// The ioctl requests a thread kind may make, on any descriptor.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    match kind {
        ThreadKind::Control => vec![],
        // The registers and events are read to describe a triple fault, and
        // RIP is translated to name the bytes of an emulation failure.
        ThreadKind::Vcpu => vec![
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_GET_VCPU_EVENTS,
            KVM_TRANSLATE,
            KVM_REGISTER_COALESCED_MMIO,
            KVM_UNREGISTER_COALESCED_MMIO,
            libc::TUNSETOFFLOAD,
            libc::TUNSETVNETHDRSZ,
        ],
        ThreadKind::Serial => vec![KVM_REGISTER_COALESCED_MMIO, KVM_UNREGISTER_COALESCED_MMIO],
        ThreadKind::BlockWorker | ThreadKind::NetWorker => vec![],
    }
}

/// Syscall number → the rules under which it is allowed (empty: always).
pub(super) fn allowed(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let extra: &[&[i64]] = match kind {
        ThreadKind::Control => &[CONTROL],
        ThreadKind::Vcpu => &[VCPU, BLOCK_WORKER, NET_WORKER],
        ThreadKind::Serial => &[],
        ThreadKind::BlockWorker => &[BLOCK_WORKER],
        ThreadKind::NetWorker => &[NET_WORKER],
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().chain(extra.iter().copied().flatten()).map(|&nr| (nr, vec![])).collect();
    let requests = ioctls(kind);
    if !requests.is_empty() {
        let by_request = requests
            .into_iter()
            .map(|request| {
                SeccompRule::new(vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)?])
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, by_request);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_REGISTER_COALESCED_MMIO, 0x4010_ae67);
        assert_eq!(KVM_UNREGISTER_COALESCED_MMIO, 0x4010_ae68);
    }

    #[test]
    fn the_control_list_holds_every_other_kind() {
        let control = allowed(ThreadKind::Control).unwrap();
        for kind in ThreadKind::ALL {
            for nr in allowed(kind).unwrap().keys() {
                assert!(control.contains_key(nr), "{kind:?} allows syscall {nr}, which control does not");
            }
        }
    }

    /// Filters stack: a block or net worker, started on a vCPU, can make
    /// only the syscalls both lists allow.
    #[test]
    fn the_vcpu_list_holds_the_workers_it_starts() {
        let vcpu = allowed(ThreadKind::Vcpu).unwrap();
        for kind in [ThreadKind::BlockWorker, ThreadKind::NetWorker] {
            for nr in allowed(kind).unwrap().keys() {
                assert!(vcpu.contains_key(nr), "{kind:?} allows syscall {nr}, which its vCPU does not");
            }
        }
    }

    #[test]
    fn ioctls_are_limited_to_named_requests_off_the_control_thread() {
        assert!(allowed(ThreadKind::Control).unwrap()[&libc::SYS_ioctl].is_empty());
        assert_eq!(allowed(ThreadKind::Vcpu).unwrap()[&libc::SYS_ioctl].len(), 9);
        assert!(!allowed(ThreadKind::BlockWorker).unwrap().contains_key(&libc::SYS_ioctl));
        assert!(!allowed(ThreadKind::Vcpu).unwrap().contains_key(&libc::SYS_openat));
        assert!(!allowed(ThreadKind::NetWorker).unwrap().contains_key(&libc::SYS_socket));
    }
}
