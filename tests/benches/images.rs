//! Image benchmark, against Debian's docker-registry on loopback:
//!
//! - pull of a 256 MiB image (one random-content raw disk, so gzip cannot
//!   shrink it) by a fresh kvmlet node (VMI created → Running, which is the
//!   pull, the unpack and the boot; and the `Pulled` event's own time) vs
//!   `skopeo copy` of the same image to an OCI layout, in the same run;
//! - VMI created → Running from a present 1 GiB qcow2 image (every cluster
//!   allocated) vs a 16 MiB one: with a per-VM overlay nothing is copied, so
//!   the goal is the same within 10 ms;
//! - virtio-blk throughput on qcow2 vs raw: the rows of
//!   `cargo bench -p kvmlet-vmm --bench block_throughput`, run from here
//!   (goal: qcow2 at least 80% of raw).
//!
//! `cargo bench -p kvmlet-e2e --bench images [-- RUNS]` (RUNS: per figure, default 3 pulls and 10 starts).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::bench::{ms, percentile, release_kvmlet, running_after, vmi_events, BenchServer};
use e2e::boot_disk::run;
use e2e::node::probe_vmi;
use e2e::registry::{disk_layer, noise, Registry};
use e2e::{require_tool, workspace_root};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use proto::kubevirt::VirtualMachineInstance;
use serde_json::json;

const PULL_MIB: usize = 256;

/// A probe VMI (the node's default kernel, waiting) whose one disk is `image`.
fn image_vmi(name: &str, image: &str) -> VirtualMachineInstance {
    let mut vmi = serde_json::to_value(probe_vmi(name, "probe.action=wait", 0)).unwrap();
    vmi["spec"]["domain"]["devices"]["disks"] = json!([{"name": "root", "disk": {"bus": "virtio"}}]);
    vmi["spec"]["volumes"] = json!([{"name": "root", "containerDisk": {"image": image}}]);
    serde_json::from_value(vmi).unwrap()
}

/// Creates the VMI and returns its create → Running time.
async fn start(client: &Client, name: &str, image: &str) -> Duration {
    let api: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let events = vmi_events(client);
    let started = Instant::now();
    api.create(&PostParams::default(), &image_vmi(name, image)).await.expect("create VMI");
    running_after(events, &[name.to_string()], started).await[0]
}

async fn delete(client: &Client, name: &str) {
    let api: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    api.delete(name, &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "{name} was not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The seconds in the `Pulled` event ("Successfully pulled image … in 1.2s. …").
async fn pulled_seconds(client: &Client, name: &str) -> Option<f64> {
    let events = e2e::node::event_reasons(client, name).await;
    let message = events.into_iter().find(|(r, _)| r == "Pulled")?.1;
    message.split(" in ").nth(1)?.split("s.").next()?.parse().ok()
}

fn server(kvmlet: &Path, dir: &Path, registry: &Registry) -> BenchServer {
    let image_dir = dir.join("images");
    let mut extra = vec!["--image-dir".to_string(), image_dir.to_str().unwrap().to_string()];
    extra.extend(registry.mirror_flags());
    BenchServer::start(kvmlet, dir, &extra.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A qcow2 image of `mib` MiB with every cluster allocated (qemu-img, full preallocation).
fn allocated_qcow2(dir: &Path, mib: u64) -> Vec<u8> {
    let path = dir.join(format!("{mib}.qcow2"));
    let mut create = Command::new(require_tool("qemu-img", "qemu-utils"));
    run(create.args(["create", "-q", "-f", "qcow2", "-o", "preallocation=full"]).arg(&path).arg(format!("{mib}M")));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(bytes.len() as u64 >= mib << 20, "qemu-img allocated {} bytes", bytes.len());
    bytes
}

/// `cargo bench -p kvmlet-vmm --bench block_throughput`: its rows as
/// (workload, raw MiB/s, qcow2 MiB/s).
fn block_throughput() -> Vec<(String, f64, f64)> {
    let out = Command::new(env!("CARGO"))
        .args(["bench", "--quiet", "-p", "kvmlet-vmm", "--bench", "block_throughput"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "block_throughput: {text}{}", String::from_utf8_lossy(&out.stderr));
    let rows = text.lines().skip_while(|l| !l.starts_with("workload")).skip(1);
    rows.filter(|l| l.len() > 24)
        .map(|line| {
            let (name, rest) = line.split_at(24);
            let cells: Vec<f64> = rest.split_whitespace().map(|c| c.trim_end_matches('%').parse().unwrap()).collect();
            (name.trim().to_string(), cells[0], cells[1])
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(0);
    let (pull_runs, start_runs) = if runs > 0 { (runs, runs) } else { (3, 10) };
    let kvmlet = release_kvmlet();
    let skopeo = require_tool("skopeo", "skopeo");
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();

    // (a) 256 MiB of noise, pulled by fresh nodes and by skopeo.
    let disk = noise(PULL_MIB << 20, 7);
    registry.push("bench/pull:v1", &[disk_layer("disk.img", &disk)]);
    drop(disk);
    let mut skopeo_times = Vec::new();
    let mut kvmlet_times = Vec::new();
    let mut event_times = Vec::new();
    for run in 0..pull_runs {
        let layout = work.path().join(format!("skopeo-{run}"));
        let started = Instant::now();
        let out = Command::new(&skopeo)
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{}/bench/pull:v1", registry.host()))
            .arg(format!("oci:{}:v1", layout.display()))
            .output()
            .unwrap();
        skopeo_times.push(started.elapsed());
        assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_dir_all(&layout).unwrap();

        let dir = work.path().join(format!("pull-{run}"));
        std::fs::create_dir(&dir).unwrap();
        let node = server(&kvmlet, &dir, &registry);
        let client = node.client().await;
        kvmlet_times.push(start(&client, "pull", "bench/pull:v1").await);
        event_times.push(Duration::from_secs_f64(pulled_seconds(&client, "pull").await.expect("a Pulled event")));
        drop(node);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // (b) VMIs of present images: 1 GiB and 16 MiB of allocated qcow2.
    registry.push("bench/big:v1", &[disk_layer("big.qcow2", &allocated_qcow2(work.path(), 1024))]);
    registry.push("bench/small:v1", &[disk_layer("small.qcow2", &allocated_qcow2(work.path(), 16))]);
    let dir = work.path().join("present");
    std::fs::create_dir(&dir).unwrap();
    let node = server(&kvmlet, &dir, &registry);
    let client = node.client().await;
    for image in ["bench/big:v1", "bench/small:v1"] {
        start(&client, "warm", image).await; // pulls it (IfNotPresent from now on)
        delete(&client, "warm").await;
    }
    let (mut big, mut small) = (Vec::new(), Vec::new());
    for run in 0..start_runs {
        for (image, times) in [("bench/big:v1", &mut big), ("bench/small:v1", &mut small)] {
            let name = format!("start-{run}");
            times.push(start(&client, &name, image).await);
            delete(&client, &name).await;
        }
    }
    drop(node);

    // (c) The device model on qcow2 and raw.
    let block = block_throughput();

    println!("\nimage benchmark (this machine; registry on loopback, release kvmlet)");
    println!("{:<58}{:>14}{:>14}", "", "p50", "max");
    let row = |label: &str, samples: &mut Vec<Duration>| {
        let max = samples.iter().max().copied().unwrap_or_default();
        println!("{label:<58}{:>14}{:>14}", ms(percentile(samples, 0.5)), ms(max));
    };
    row(&format!("pull {PULL_MIB} MiB: skopeo copy to an OCI layout ({pull_runs} runs)"), &mut skopeo_times);
    row("pull: kvmlet, VMI created -> Running (pull, unpack, boot)", &mut kvmlet_times);
    row("pull: kvmlet, its Pulled event's time (0.1 s resolution)", &mut event_times);
    row(&format!("VMI -> Running, present 16 MiB qcow2 ({start_runs} runs)"), &mut small);
    row("VMI -> Running, present 1 GiB qcow2", &mut big);
    let gap = percentile(&mut big, 0.5).as_secs_f64() - percentile(&mut small, 0.5).as_secs_f64();
    println!("{:<58}{:>14}", "  1 GiB - 16 MiB at p50 (goal: within 10 ms)", format!("{:.1} ms", gap * 1000.0));
    println!("\nvirtio-blk device model, qcow2 vs raw (MiB/s, from the block_throughput bench; goal >= 80%)");
    println!("{:<28}{:>10}{:>10}{:>12}", "workload", "raw", "qcow2", "qcow2/raw");
    for (name, raw, qcow2) in block {
        println!("{name:<28}{raw:>10.0}{qcow2:>10.0}{:>11.0}%", 100.0 * qcow2 / raw);
    }
}
