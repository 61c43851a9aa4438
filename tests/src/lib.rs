//! Helpers shared by the end-to-end tests: the kvmlet binary, the probe guest
//! image and the real tools the tests check our output with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;

pub mod bench;
pub mod boot_disk;
pub mod linux;
pub mod node;
pub mod registry;
pub mod standalone;

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// The `kvmlet` binary of this workspace, built once per test process if needed.
///
/// `cargo test --workspace` builds it already (it belongs to kvmlet-agent); running
/// this crate's tests alone builds it here.
pub fn kvmlet_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("KVMLET_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "KVMLET_BIN={} does not exist; build it first", bin.display());
            return bin;
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "kvmlet-agent", "--bin", "kvmlet"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build for kvmlet");
        assert!(status.success(), "cargo build -p kvmlet-agent failed");
        target_dir().join("debug").join("kvmlet")
    })
}

/// `kvmlet run --kernel <the probe's bzImage> ARGS`, its console on a pipe and
/// its log discarded, returned once the console printed a line containing
/// `marker` (panics if kvmlet exits first).
pub fn run_probe_until(args: &[&str], marker: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(kvmlet_bin())
        .arg("run")
        .arg("--kernel")
        .arg(&probe().bzimage)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kvmlet run");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut console = String::new();
    while !console.contains(marker) {
        assert!(stdout.read_line(&mut console).expect("read the console") > 0, "kvmlet exited early: {console}");
    }
    (child, stdout)
}

/// The VM process of a jailed `kvmlet run` with process id `run`: its only
/// child, pid 1 of its own PID namespace (`run` stays outside as its supervisor).
pub fn jailed_vm_process(run: u32) -> u32 {
    let list = std::fs::read_to_string(format!("/proc/{run}/task/{run}/children")).expect("read the children");
    let children: Vec<u32> = list.split_whitespace().map(|p| p.parse().expect("a pid")).collect();
    assert_eq!(children.len(), 1, "kvmlet run {run} supervises one VM process: {children:?}");
    children[0]
}

/// Paths of the probe guest images built by `tests/probe/build`.
pub struct ProbeImages {
    /// Linux boot-protocol image (the build script's last line).
    pub bzimage: PathBuf,
    /// ELF with a PVH note, next to the bzImage.
    pub elf: PathBuf,
}

/// Runs a build script of this repository (relative to the workspace root)
/// and returns the last `n` lines it printed, as paths, in order.
pub fn build_outputs(script: &str, n: usize) -> Vec<PathBuf> {
    let script = workspace_root().join(script);
    let output = Command::new(&script).output().unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= n, "{} printed {} lines, expected at least {n}", script.display(), lines.len());
    let paths: Vec<PathBuf> = lines[lines.len() - n..].iter().map(|l| PathBuf::from(l.trim())).collect();
    for path in &paths {
        assert!(path.is_file(), "{} did not produce {}", script.display(), path.display());
    }
    paths
}

/// Builds the probe guest once per test process and returns its images.
pub fn probe() -> &'static ProbeImages {
    static PROBE: OnceLock<ProbeImages> = OnceLock::new();
    PROBE.get_or_init(|| {
        let mut images = build_outputs("tests/probe/build", 2).into_iter();
        let (elf, bzimage) = (images.next().unwrap(), images.next().unwrap());
        ProbeImages { bzimage, elf }
    })
}

/// Fails the test with an install hint when a tool the test relies on is missing.
/// `.ci/run` installs all of them (scripts/install-deps).
pub fn require_tool(tool: &str, debian_package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!("`{tool}` is not installed: run scripts/install-deps (Debian package `{debian_package}`)")
    })
}

/// `kubectl.1.MINOR`, installed beside the target of the machine's `kubectl`
/// symlink (scripts/install-deps puts 1.27 ... 1.33 there).
pub fn kubectl_of_minor(minor: u32) -> PathBuf {
    let kubectl = require_tool("kubectl", "kubectl");
    let dir = std::fs::canonicalize(&kubectl).expect("kubectl resolves").parent().expect("a directory").to_path_buf();
    let binary = dir.join(format!("kubectl.1.{minor}"));
    assert!(binary.is_file(), "{} is missing: run scripts/install-deps", binary.display());
    binary
}

/// Runs this test binary's ignored test `inner` again inside a new network
/// namespace (`unshare --net`), where private addresses may exist, and
/// fails unless it passed. Networking tests make their addresses there only.
pub fn run_in_private_netns(inner: &str) {
    let output = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().expect("the test binary"))
        .args(["--exact", inner, "--ignored", "--nocapture"])
        .output()
        .expect("run unshare");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("1 passed"), "{text}");
}

/// True when this process can open /dev/kvm read-write.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Lines the probe guest printed, without the `probe: ` prefix.
pub fn probe_lines(console: &str) -> Vec<&str> {
    console.lines().filter_map(|line| line.trim_end_matches('\r').strip_prefix("probe: ")).collect()
}

/// The value of `key=` in the first probe line that starts with `prefix` (e.g. `smbios`).
pub fn probe_value<'a>(console: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    probe_lines(console).into_iter().filter(|line| line.starts_with(prefix)).find_map(|line| {
        let needle = format!("{key}=");
        line.split(' ').find_map(|field| field.strip_prefix(needle.as_str()))
    })
}

/// Runs `cmd` to completion, or kills it after `timeout`; returns (finished,
/// stdout, stderr) so a test can say what a hung program printed.
pub fn output_within(cmd: &mut Command, timeout: std::time::Duration) -> (bool, String, String) {
    let (out, finished) = run_within(cmd, None, timeout);
    (finished, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `cmd` with `stdin` fed to it, killing it after `timeout` (a program
/// waiting on a server that never answers must not hang the test run);
/// returns its output and whether it finished by itself.
pub fn run_within(cmd: &mut Command, stdin: Option<&str>, timeout: std::time::Duration) -> (Output, bool) {
    use std::io::{Read, Write};
    use std::process::Stdio;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    if let Some(input) = stdin {
        // A program that exits without reading its input is not an error here.
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    let deadline = std::time::Instant::now() + timeout;
    let (status, finished) = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break (status, true);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break (child.wait().expect("wait"), false);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let output =
        Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() };
    (output, finished)
}

/// `kubectl --kubeconfig KUBECONFIG ARGS`, killed after two minutes: kubectl
/// waits without end for a deletion it never sees, and that must fail the
/// one test that caused it rather than stall the whole run. A killed kubectl
/// says so at the end of its stderr.
pub fn kubectl(binary: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
    let mut cmd = Command::new(binary);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let (mut out, finished) = run_within(&mut cmd, stdin, LIMIT);
    if !finished {
        out.stderr.extend_from_slice(format!("\n[kubectl {args:?} killed: not finished after {LIMIT:?}]\n").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_values_are_found_by_prefix_and_key() {
        let console = "noise\nprobe: smbios uuid=1234 serial=abc\r\nprobe: cpus=2\n";
        assert_eq!(probe_value(console, "smbios", "serial"), Some("abc"));
        assert_eq!(probe_value(console, "cpus", "cpus"), Some("2"));
        assert_eq!(probe_value(console, "smbios", "missing"), None);
        assert_eq!(probe_lines(console).len(), 2);
    }
}
