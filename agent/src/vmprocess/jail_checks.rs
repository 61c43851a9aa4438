//! Test hooks: things a jailed VM process must not be able to do, tried from
//! inside it (`testJail` on the control socket, `kvmlet run --test-jail-check`).
//! Only tests enable them; each returns what happened, for the test to judge.

use proto::debug::JailCheck;

/// How much VMM memory `Allocate` takes at most: past any test VM's limit.
const ALLOCATE_MIB: usize = 1024;

/// Tries `check` and says how it went, e.g. `open /etc/passwd: No such file
/// or directory (os error 2)`. `ForbiddenSyscall` does not return when
/// seccomp kills the process.
pub fn attempt(check: JailCheck) -> String {
    let outcome = |what: &str, result: std::io::Result<()>| match result {
        Ok(()) => format!("{what}: allowed"),
        Err(e) => format!("{what}: {e}"),
    };
    match check {
        JailCheck::Open => [
            outcome("open /etc/passwd", std::fs::File::open("/etc/passwd").map(drop)),
            outcome("list /", std::fs::read_dir("/").map(drop)),
        ]
        .join("; "),
        JailCheck::Connect => {
            outcome("connect 127.0.0.1:22", std::net::TcpStream::connect(("127.0.0.1", 22)).map(drop))
        }
        JailCheck::ForbiddenSyscall => {
            tracing::warn!("test hook: calling getpgrp, outside the control thread's seccomp list");
            format!("getpgrp: allowed, returned {}", nix::unistd::getpgrp())
        }
        JailCheck::Allocate => {
            const MIB: usize = 1 << 20;
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..ALLOCATE_MIB {
                let mut chunk = vec![0u8; MIB];
                // Touch every page, so that each is charged to the cgroup.
                chunk.iter_mut().step_by(4096).for_each(|byte| *byte = 1);
                held.push(std::hint::black_box(chunk));
            }
            format!("allocate {ALLOCATE_MIB} MiB: allowed")
        }
    }
}
