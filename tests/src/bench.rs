//! What the benchmarks share: the release build of kvmlet and percentiles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::{watcher, WatchStreamExt};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase};

use crate::{probe, workspace_root};

/// Builds kvmlet with the release profile and returns its path.
pub fn release_kvmlet() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "kvmlet-agent", "--bin", "kvmlet"])
        .current_dir(workspace_root())
        .status()
        .expect("cargo build --release");
    assert!(status.success(), "cargo build --release -p kvmlet-agent failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(workspace_root().join("target"));
    target.join("release/kvmlet")
}

/// The `p` quantile (0.0..=1.0) of `samples`, nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A process's resident set (VmRSS) in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A benchmark's `kvmlet standalone` with its node loop (node `bench`, run
/// directory DIR/run, the probe guest as default kernel); killed on drop,
/// together with the VM processes it started.
pub struct BenchServer {
    child: Child,
    dir: PathBuf,
}

impl BenchServer {
    pub fn start(kvmlet: &Path, dir: &Path, extra: &[&str]) -> BenchServer {
        let child = Command::new(kvmlet)
            .arg("standalone")
            .arg("--data-dir")
            .arg(dir)
            .args(["--node-name", "bench", "--run-dir"])
            .arg(dir.join("run"))
            .arg("--default-kernel")
            .arg(&probe().bzimage)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kvmlet standalone");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("kubeconfig").exists() {
            assert!(Instant::now() < deadline, "kvmlet standalone did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        BenchServer { child, dir: dir.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.dir.join("kubeconfig")).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::standalone::kill_vm_processes(&self.dir.join("run"));
    }
}

/// VMI changes in the default namespace, from a watch opened now (open it
/// before creating what you time).
pub fn vmi_events(client: &kube::Client) -> BoxStream<'static, Result<VirtualMachineInstance, watcher::Error>> {
    let api: kube::Api<VirtualMachineInstance> = kube::Api::default_namespaced(client.clone());
    watcher(api, watcher::Config::default()).applied_objects().boxed()
}

/// Time from `start` until each VMI in `names` was first seen `Running`.
pub async fn running_after(
    mut events: BoxStream<'static, Result<VirtualMachineInstance, watcher::Error>>,
    names: &[String],
    start: Instant,
) -> Vec<Duration> {
    let mut done: HashMap<String, Duration> = HashMap::new();
    while done.len() < names.len() {
        let vmi = tokio::time::timeout(Duration::from_secs(300), events.try_next())
            .await
            .expect("VMIs did not reach Running within 5 minutes")
            .expect("watch")
            .expect("watch ended");
        let phase = vmi.status.as_ref().and_then(|s| s.phase);
        assert_ne!(phase, Some(VirtualMachineInstancePhase::Failed), "a VMI failed: {:?}", vmi.status);
        let name = vmi.metadata.name.clone().unwrap_or_default();
        if phase == Some(VirtualMachineInstancePhase::Running) && names.contains(&name) {
            done.entry(name).or_insert_with(|| start.elapsed());
        }
    }
    done.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&mut samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&mut samples, 0.0), Duration::from_millis(1));
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
