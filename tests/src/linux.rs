//! The Linux guest tests' prerequisites: the stock kernel + busybox initramfs
//! built by `tests/linux/build`, the minimal kernel of the Linux kernel check
//! built by `tests/linux/build-kernel`, and an honest check of whether this
//! host's KVM can run a stock kernel at all.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use crate::{build_outputs, kvmlet_bin};

/// The Linux guest: Debian's cloud kernel and the test initramfs.
pub struct LinuxGuest {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds (once per process) the Linux guest from Debian packages.
pub fn linux_guest() -> &'static LinuxGuest {
    static GUEST: OnceLock<LinuxGuest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let mut outputs = build_outputs("tests/linux/build", 2).into_iter();
        LinuxGuest { kernel: outputs.next().unwrap(), initramfs: outputs.next().unwrap() }
    })
}

/// Builds (once per process) the kernel of the Linux kernel check: Debian's
/// 6.12 source, tinyconfig plus tests/linux/kernel.config and kernel.patch,
/// as an uncompressed `vmlinux` booted through its PVH entry point.
pub fn linux_kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| build_outputs("tests/linux/build-kernel", 1).remove(0))
}

/// How a run watched by [`run_until_console`] ended.
pub struct WatchedRun {
    /// Everything the program printed on standard output (the guest console).
    pub console: String,
    pub stderr: String,
    /// The exit status when the program ended by itself; None when it was
    /// killed (a stop pattern was printed, or the time bound ran out).
    pub status: Option<ExitStatus>,
    /// The first console line that contained one of the stop patterns.
    pub stopped_at: Option<String>,
}

/// Runs `cmd`, echoing its standard output line by line to standard error as
/// it comes (visible with `--nocapture`), and kills it as soon as a line
/// contains one of `stop`, or once `bound` has passed (a hung guest must not
/// hang the test run).
pub fn run_until_console(cmd: &mut Command, stop: &[&str], bound: Duration) -> WatchedRun {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let (lines_tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.split(b'\n') {
            let Ok(line) = line else { break };
            if lines_tx.send(String::from_utf8_lossy(&line).trim_end_matches('\r').to_string()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + bound;
    let mut console = String::new();
    let mut stopped_at = None;
    let mut kill = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                eprintln!("{line}");
                console.push_str(&line);
                console.push('\n');
                if stop.iter().any(|pattern| line.contains(pattern)) {
                    stopped_at = Some(line);
                    kill = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("(killed after {bound:?} without a stop pattern)");
                kill = true;
                break;
            }
        }
    }
    let status = if kill {
        let _ = child.kill();
        let _ = child.wait();
        None
    } else {
        Some(child.wait().expect("wait"))
    };
    WatchedRun { console, stderr: stderr.join().unwrap_or_default(), status, stopped_at }
}

/// A minimal bzImage whose 64-bit entry (load address + 0x200) runs `code`.
pub fn tiny_bzimage(code: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let mut image = vec![0u8; (SETUP_SECTS as usize + 1) * 512];
    image[0x1f1] = SETUP_SECTS;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // boot protocol 2.15
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x236..0x238].copy_from_slice(&0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    let protected_mode_start = image.len();
    image.resize(protected_mode_start + 0x200, 0);
    image.extend_from_slice(code);
    image
}

/// Ring-0 code that enables SSE, executes `xorps` and powers off through the
/// ACPI sleep-control port: exactly what the nested KVM here cannot emulate.
const RING0_SSE_THEN_POWEROFF: &[u8] = &[
    0x0f, 0x20, 0xe0, // mov rax, cr4
    0x0d, 0x00, 0x06, 0x00, 0x00, // or eax, 0x600 (OSFXSR | OSXMMEXCPT)
    0x0f, 0x22, 0xe0, // mov cr4, rax
    0x0f, 0x57, 0xc0, // xorps xmm0, xmm0
    0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
    0xb0, 0x34, // mov al, (5 << 2) | (1 << 5): SLP_TYP=S5, SLP_EN
    0xee, // out dx, al
    0x0f, 0x0b, // ud2: not reached when the power-off works
];

/// A bzImage whose ring-0 code enables SSE, runs `xorps xmm0, xmm0`
/// (0f 57 c0) and powers off.
pub fn ring0_sse_image() -> Vec<u8> {
    tiny_bzimage(RING0_SSE_THEN_POWEROFF)
}

/// Ok if this host's KVM runs guest kernel code the way stock Linux needs it
/// (here: SSE in ring 0); Err(why) otherwise. Decided by running a guest.
pub fn host_runs_stock_kernels() -> Result<(), String> {
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    VERDICT
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let kernel = dir.path().join("sse-check.bzImage");
            std::fs::write(&kernel, ring0_sse_image()).map_err(|e| e.to_string())?;
            let output = Command::new(kvmlet_bin())
                .arg("run")
                .arg("--kernel")
                .arg(&kernel)
                .output()
                .map_err(|e| format!("run kvmlet: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "this host's KVM cannot run ring-0 SSE code (a stock kernel needs it): a guest doing \
                     `xorps` in ring 0 ended with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bzimage_has_a_valid_setup_header() {
        let image = tiny_bzimage(&[0xf4]);
        assert_eq!(&image[0x202..0x206], b"HdrS");
        assert_eq!(image[0x1f1], 1);
        // Entry byte sits at the protected-mode start (after 2 sectors) + 0x200.
        assert_eq!(image[1024 + 0x200], 0xf4);
    }
}
