//! A `kvmlet standalone` process for tests: started on a data directory,
//! restartable on the same directory and address, killed on drop together
//! with the VM processes its node loop started.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{kvmlet_bin, probe};

/// The node name standalone tests run their node loop as.
pub const NODE_NAME: &str = "test-node";

pub struct Standalone {
    child: Child,
    dir: tempfile::TempDir,
    address: SocketAddr,
    args: Vec<OsString>,
    watchdog: Watchdog,
}

/// How long one test may keep a server: tests take seconds, so this only
/// fires when a test is stuck waiting for something that will not happen.
const STUCK_AFTER: Duration = Duration::from_secs(600);

/// Ends the test binary, with the tail of the server's log, if its test is
/// stuck: one stuck test then fails its binary instead of stalling the whole
/// run (`cargo test --no-fail-fast` goes on with the next binary). A separate
/// process, so nothing inside the stuck test can hold it up.
struct Watchdog(Child);

impl Watchdog {
    fn start(dir: &Path, server: u32) -> Watchdog {
        let script = r#"sleep "$1"
echo "a test kept its kvmlet standalone for $1 s: it is stuck; ending the test binary. Server log (tail):" >&2
tail -n 100 "$2/kvmlet.log" >&2
for pid in "$2"/run/vms/*/pid; do [ -f "$pid" ] && kill -9 "$(cat "$pid")"; done
kill -9 "$3" "$4""#;
        let child = Command::new("sh")
            .args(["-c", script, "watchdog"])
            .arg(STUCK_AFTER.as_secs().to_string())
            .arg(dir)
            .arg(server.to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the test watchdog");
        Watchdog(child)
    }

    /// The server was restarted: the watchdog must know the new pid.
    fn restart(&mut self, dir: &Path, server: u32) {
        *self = Watchdog::start(dir, server);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // The whole group: the shell and its sleep.
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, listen: &str, args: &[OsString]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("kvmlet.log")).expect("log file");
    Command::new(kvmlet_bin())
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen])
        .args(args)
        // No pod network unless a test asks for one (`--network masquerade`,
        // inside its own namespace), even on a machine with a CNI configuration.
        .env("KVMLET_NETWORK", "none")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start kvmlet standalone")
}

/// Waits until the kubeconfig names a server and that server answers.
fn wait_ready(kubeconfig: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let server = std::fs::read_to_string(kubeconfig)
            .ok()
            .and_then(|c| c.lines().find_map(|l| l.trim().strip_prefix("server: https://").map(str::to_string)));
        if let Some(address) = server.and_then(|s| s.parse::<SocketAddr>().ok()) {
            if std::net::TcpStream::connect(address).is_ok() {
                return address;
            }
        }
        assert!(Instant::now() < deadline, "kvmlet standalone did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Standalone {
    /// Runs `binary` (a kubectl of any version) against this server.
    pub fn kubectl_with(&self, binary: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        crate::kubectl(binary, &self.kubeconfig(), args, stdin)
    }

    /// `kubectl_with` that must succeed: its standard output.
    pub fn kubectl_ok(&self, binary: &Path, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(binary, args, stdin);
        assert!(out.status.success(), "{} {args:?} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl_with` that must fail: its standard error.
    pub fn kubectl_fails(&self, binary: &Path, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(binary, args, stdin);
        assert!(!out.status.success(), "{} {args:?} should have failed", binary.display());
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The API alone (no node loop): nothing runs the VMIs created in it.
    pub fn start() -> Standalone {
        Standalone::start_with(vec!["--no-node".into()])
    }

    /// The API and the node loop, as a user runs it: node `test-node`, run
    /// directory `DIR/run`, images under `DIR/images`, the probe guest as
    /// the node's default kernel. `extra` flags come last.
    pub fn with_node(extra: &[&str]) -> Standalone {
        let mut args: Vec<OsString> = vec![
            "--node-name".into(),
            NODE_NAME.into(),
            "--default-kernel".into(),
            probe().bzimage.clone().into(),
            "--heartbeat-interval".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        Standalone::start_with(args)
    }

    /// `kvmlet standalone --data-dir DIR --listen 127.0.0.1:0 ARGS`, with
    /// `--run-dir DIR/run` and `--image-dir DIR/images` unless ARGS has them.
    pub fn start_with(args: Vec<OsString>) -> Standalone {
        Standalone::start_in(tempfile::tempdir().unwrap(), args)
    }

    /// As [`Standalone::start_with`], on a data directory the test prepared.
    pub fn start_in(dir: tempfile::TempDir, mut args: Vec<OsString>) -> Standalone {
        if !args.iter().any(|a| a == "--no-node") {
            for (flag, sub) in [("--run-dir", "run"), ("--image-dir", "images")] {
                if !args.iter().any(|a| a == flag) {
                    args.extend([flag.into(), dir.path().join(sub).into()]);
                }
            }
        }
        let child = spawn(dir.path(), "127.0.0.1:0", &args);
        let address = wait_ready(&dir.path().join("kubeconfig"));
        let watchdog = Watchdog::start(dir.path(), child.id());
        Standalone { child, dir, address, args, watchdog }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node loop's run directory (VM state directories, kvmlet.sock).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The node's container image directory.
    pub fn image_dir(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    /// What the server logged so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kvmlet.log")).unwrap_or_default()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A kube client for this server, from its kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// `kvmlet ARGS` with this server's kubeconfig and run directory in its environment.
    pub fn kvmlet(&self, args: &[&str]) -> Command {
        let mut command = Command::new(kvmlet_bin());
        command.args(args).env("KUBECONFIG", self.kubeconfig()).env("KVMLET_RUN_DIR", self.run_dir());
        command
    }

    /// Kills the server (SIGKILL) and starts it again on the same data and address.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.kubeconfig());
        self.child = spawn(self.dir.path(), &self.address.to_string(), &self.args);
        self.watchdog.restart(self.dir.path(), self.child.id());
        wait_ready(&self.kubeconfig());
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_vm_processes(&self.run_dir());
    }
}

/// SIGKILLs every VM process with a state directory under `run_dir`, and
/// frees the network namespace (`/run/netns/kvmlet-<uid>`, shared by the
/// whole machine) a node on the pod network made for it.
pub fn kill_vm_processes(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir.join("vms")) else { return };
    for entry in entries.flatten() {
        let pid = std::fs::read_to_string(entry.path().join("pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let netns = format!("kvmlet-{}", entry.file_name().to_string_lossy());
        if Path::new("/run/netns").join(&netns).exists() {
            let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        }
    }
}

/// Kills the VM processes under a run directory when dropped, so a failing
/// test leaves none behind.
pub struct VmReaper(pub PathBuf);

impl Drop for VmReaper {
    fn drop(&mut self) {
        kill_vm_processes(&self.0);
    }
}
