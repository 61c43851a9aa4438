//! A `kvmlet standalone` process for tests: started on a data directory,
//! restartable on the same directory and address, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kvmlet_bin;

pub struct Standalone {
    child: Child,
    dir: tempfile::TempDir,
    address: SocketAddr,
}

fn spawn(dir: &Path, listen: &str) -> Child {
    Command::new(kvmlet_bin())
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    pub fn start() -> Standalone {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn(dir.path(), "127.0.0.1:0");
        let address = wait_ready(&dir.path().join("kubeconfig"));
        Standalone { child, dir, address }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Kills the server (SIGKILL) and starts it again on the same data and address.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.kubeconfig());
        self.child = spawn(self.dir.path(), &self.address.to_string());
        wait_ready(&self.kubeconfig());
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
