//! Test hooks: things a jailed VM process must not be able to do, tried from
//! inside it (`testJail` on the control socket, `kvmlet run --test-jail-check`).
//! Only tests enable them; each returns what happened, for the test to judge.

use proto::debug::JailCheck;

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
    }
}
