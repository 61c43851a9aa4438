//! Scale benchmark: N idle probe VMIs (16 MiB, 1 vCPU) on one standalone
//! node. Creates them through the API concurrently (bounded), then reports
//! create → Running (p50 / p99 per VMI, and total), the idle host's CPU
//! use over a window (from /proc/stat), context switches per VM per second
//! (every task of every VM process), the VM processes' private memory and
//! the agent's RSS, and finally how long deleting them all takes.
//!
//! `cargo bench -p kvmlet-e2e --bench scale -- N [IDLE_SECONDS]` (default
//! 100 VMIs, 30 s). KVMLET_BIN picks a kvmlet binary instead of building
//! the release one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::bench::{ms, percentile, release_kvmlet, rss_kib, running_after, vmi_events, BenchServer};
use e2e::node::probe_vmi;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use proto::kubevirt::VirtualMachineInstance;

const GUEST_MIB: usize = 16;
/// API requests in flight at once, as a client library would bound them.
const CONCURRENCY: usize = 32;

fn vmi(name: &str) -> VirtualMachineInstance {
    let mut vmi = probe_vmi(name, "probe.action=wait", 0);
    let requests = vmi.spec.domain.resources.as_mut().unwrap().requests.as_mut().unwrap();
    requests.insert("memory".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(format!("{GUEST_MIB}Mi")));
    vmi
}

fn vm_pids(run_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(run_dir.join("vms"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok()?.trim().parse().ok())
        .collect()
}

/// Each VM process's supervisor (its parent, outside its PID namespace):
/// its memory and wake-ups are the VM's too.
fn supervisors(pids: &[u32]) -> Vec<u32> {
    let parent = |pid: &u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse().ok()
    };
    pids.iter().filter_map(parent).collect()
}

/// (busy, total) jiffies of all CPUs, from /proc/stat's first line.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Voluntary plus involuntary context switches of every task of `pids`.
fn context_switches(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
            total += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:").or(l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

/// Private memory (clean + dirty) of a process in KiB, from smaps_rollup.
fn private_kib(pid: u32) -> u64 {
    let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { return 0 };
    rollup
        .lines()
        .filter_map(|l| l.strip_prefix("Private_Clean:").or(l.strip_prefix("Private_Dirty:")))
        .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .sum()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let n = numbers.next().unwrap_or(100);
    let idle_window = Duration::from_secs(numbers.next().unwrap_or(30) as u64);
    let kvmlet: PathBuf = std::env::var_os("KVMLET_BIN").map(PathBuf::from).unwrap_or_else(release_kvmlet);
    let dir = tempfile::tempdir().unwrap();
    let capacity = format!("{}Mi", n * GUEST_MIB + 1024);
    let max_vms = (n + 16).to_string();
    // Idle guests halt: vCPUs overcommit by the most the node allows (2 host
    // CPUs x 1000 = 2000 one-vCPU VMIs).
    let server = BenchServer::start(
        &kvmlet,
        dir.path(),
        &["--memory-capacity", &capacity, "--max-vms", &max_vms, "--cpu-allocation-ratio", "1000"],
    );
    let client = server.client().await;
    let api: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());

    let names: Vec<String> = (0..n).map(|i| format!("scale-{i:04}")).collect();
    let events = vmi_events(&client);
    let start = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let (api, vmi) = (api.clone(), vmi(name));
        async move { api.create(&PostParams::default(), &vmi).await.expect("create VMI") }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    let mut running = running_after(events, &names, start).await;
    let all_running = start.elapsed();

    // Idle: let boot output and the last status writes settle first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids = vm_pids(&dir.path().join("run"));
    assert_eq!(pids.len(), n, "one VM process per VMI");
    let pids = [supervisors(&pids), pids].concat();
    let (busy0, total0) = cpu_jiffies();
    let switches0 = context_switches(&pids);
    tokio::time::sleep(idle_window).await;
    let (busy1, total1) = cpu_jiffies();
    let switches1 = context_switches(&pids);
    let cpu_percent = 100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
    let switches_per_vm_s = (switches1 - switches0) as f64 / n as f64 / idle_window.as_secs_f64();
    let private: u64 = pids.iter().map(|pid| private_kib(*pid)).sum();
    let agent_rss = rss_kib(server.pid()).unwrap_or(0);

    let delete_start = Instant::now();
    futures::stream::iter(names.iter().map(|name| {
        let api = api.clone();
        async move { api.delete(name, &DeleteParams::default()).await.expect("delete VMI") }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while !api.list(&ListParams::default()).await.unwrap().items.is_empty() {
        assert!(Instant::now() < deadline, "VMIs were not deleted within 10 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_gone = delete_start.elapsed();

    println!();
    println!("kvmlet scale, {n} idle probe VMIs ({GUEST_MIB} MiB, 1 vCPU), standalone, {}", kvmlet.display());
    println!("| figure | value |");
    println!("|---|---|");
    let (p50, p99) = (percentile(&mut running, 0.5), percentile(&mut running, 0.99));
    println!("| created → Running per VMI, p50 / p99 | {} / {} |", ms(p50), ms(p99));
    println!("| all {n} Running after | {} |", ms(all_running));
    println!("| idle host CPU over {} s | {cpu_percent:.1} % |", idle_window.as_secs());
    println!("| context switches per VM per second (idle) | {switches_per_vm_s:.2} |");
    println!(
        "| VM processes' private memory (with their supervisors), sum / per VM | {} / {} |",
        mib(private),
        mib(private / n as u64)
    );
    println!("| agent RSS (API + controller + node loop) | {} |", mib(agent_rss));
    println!("| delete all {n} → all gone | {} |", ms(all_gone));
}
