//! The C allocator's arenas. glibc gives threads arenas of their own (up to
//! 8 per CPU), and the agent's threads — tokio workers and blocking-pool
//! threads that come and go under bursts of API writes — each leave pages
//! behind in theirs: with 300 VMs the agent's RSS was 107 MiB with the
//! default and 74 MiB with two arenas.

/// Limits glibc's malloc to `max` arenas, unless the operator chose with
/// `MALLOC_ARENA_MAX` (glibc read it at start). Call before threads start.
/// Returns whether the limit was set.
pub fn limit_arenas(max: i32) -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    // SAFETY: mallopt only changes allocator tuning; called before other
    // threads exist, it races with no allocation.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, max) == 1 }
}

/// Keeps glibc from ever shrinking a thread arena's heap in place. The first
/// time it does, glibc opens `/proc/sys/vm/overcommit_memory` to choose how
/// (`check_may_shrink_heap`), and in a VM process under seccomp that open is
/// a refused syscall: a boot freeing large caches (a qcow2 disk's, at a
/// reboot) stopped the VM. With a trim threshold above a thread heap's
/// largest size (64 MiB) no heap is shrunk; freed memory stays for the
/// arena's next allocations, and allocations of 128 KiB and more are still
/// mapped and unmapped on their own (the mmap threshold stays fixed).
/// Returns whether glibc took the setting.
pub fn never_shrink_thread_heaps() -> bool {
    // SAFETY: mallopt only changes allocator tuning, under the arenas' locks.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn heaps_are_never_shrunk() {
        assert!(super::never_shrink_thread_heaps());
    }

    #[test]
    fn the_limit_is_taken() {
        // The test harness may have set the variable; then the call leaves it alone.
        let expected = std::env::var_os("MALLOC_ARENA_MAX").is_none();
        assert_eq!(super::limit_arenas(2), expected);
    }
}
