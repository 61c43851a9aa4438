//! Node-loop benchmark: VMI created → `Running` as the API reports it, for
//! one VMI at a time and for 50 at once, and the memory the node spends:
//! the agent process (here `kvmlet standalone`: API, controller and node
//! loop in one) and each VM process, with 50 VMs running.
//!
//! `cargo bench -p kvmlet-e2e --bench node [-- SINGLE_RUNS [BATCH]]` prints
//! one table, next to KubeVirt's published figures (KubeVirt cannot run here).
//! The single-VMI figure is measured twice: without a NIC, and on the pod
//! network in a network namespace the bench makes (private addresses stay there).

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::bench::{ms, percentile, release_kvmlet, rss_kib, running_after, vmi_events, BenchServer};
use e2e::node::probe_vmi;
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use proto::kubevirt::VirtualMachineInstance;

const GUEST_MIB: u64 = 64;
/// The batch's one-vCPU VMIs all fit a 2-CPU node only with the node's
/// maximum vCPU overcommit (the default, 10, offers 20 vCPUs).
const OVERCOMMIT: [&str; 2] = ["--cpu-allocation-ratio", "100"];

fn vmi(name: &str) -> VirtualMachineInstance {
    let mut vmi = probe_vmi(name, "probe.action=wait", 0);
    vmi.spec
        .domain
        .resources
        .as_mut()
        .unwrap()
        .requests
        .as_mut()
        .unwrap()
        .insert("memory".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(format!("{GUEST_MIB}Mi")));
    vmi
}

/// Creates `names` at once; returns each one's create → Running latency,
/// observed through a watch (no polling).
async fn create_and_wait(client: &Client, names: &[String]) -> Vec<Duration> {
    let api: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let events = vmi_events(client);
    let start = Instant::now();
    let creates = names.iter().map(|name| {
        let api = api.clone();
        let vmi = vmi(name);
        async move { api.create(&PostParams::default(), &vmi).await.expect("create VMI") }
    });
    futures::future::join_all(creates).await;
    running_after(events, names, start).await
}

async fn delete_all(api: &Api<VirtualMachineInstance>, names: &[String]) {
    for name in names {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in names {
        while api.get_opt(name).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "VMIs were not deleted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn vm_pids(run_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(run_dir.join("vms"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok()?.trim().parse().ok())
        .collect()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Runs the single-VMI measurement again with every VM on the pod network
/// (`--network masquerade`, the built-in CNI network), in a network
/// namespace of its own: this bench re-runs itself under `unshare --net` with
/// `NET_CHILD` set, and that run prints its samples (ms) on one line.
const NET_CHILD: &str = "KVMLET_BENCH_NODE_NET";

async fn single_runs(client: &Client, runs: usize) -> Vec<Duration> {
    let api: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let mut single = Vec::new();
    for run in 0..runs {
        let names = vec![format!("one-{run}")];
        single.extend(create_and_wait(client, &names).await);
        delete_all(&api, &names).await;
    }
    single
}

/// Inside the private namespace: the samples with networking.
async fn networked_child(kvmlet: &Path, runs: usize) {
    let lo = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
    assert!(lo.success(), "ip link set lo up");
    let dir = tempfile::tempdir().unwrap();
    let network = ["--network", "masquerade", "--pod-cidr", "10.88.0.0/16", "--cni-bin-dir", "/usr/lib/cni"];
    let server = BenchServer::start(kvmlet, dir.path(), &[&network[..], &OVERCOMMIT[..]].concat());
    let samples = single_runs(&server.client().await, runs).await;
    let text: Vec<String> = samples.iter().map(|d| format!("{:.3}", d.as_secs_f64() * 1000.0)).collect();
    println!("samples {}", text.join(" "));
}

/// The samples of the networked run, made in a namespace of its own.
fn networked(runs: usize) -> Vec<Duration> {
    let out = std::process::Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .arg(runs.to_string())
        .env(NET_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("samples ")).unwrap_or_else(|| {
        panic!("the networked run printed no samples:\n{stdout}{}", String::from_utf8_lossy(&out.stderr))
    });
    line.split_whitespace().map(|ms| Duration::from_secs_f64(ms.parse::<f64>().unwrap() / 1000.0)).collect()
}

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let single_runs_count = numbers.next().unwrap_or(20);
    let batch = numbers.next().unwrap_or(50);
    let kvmlet = release_kvmlet();
    if std::env::var_os(NET_CHILD).is_some() {
        return networked_child(&kvmlet, single_runs_count).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = BenchServer::start(&kvmlet, dir.path(), &OVERCOMMIT);
    let client = server.client().await;
    let api: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());

    let mut single = single_runs(&client, single_runs_count).await;
    let mut with_network = networked(single_runs_count);
    let names: Vec<String> = (0..batch).map(|i| format!("many-{i:03}")).collect();
    let mut many = create_and_wait(&client, &names).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let agent_rss = rss_kib(server.pid()).unwrap();
    let mut vm_rss: Vec<u64> = vm_pids(&dir.path().join("run")).into_iter().filter_map(rss_kib).collect();
    vm_rss.sort();
    assert_eq!(vm_rss.len(), batch, "one VM process per VMI");
    delete_all(&api, &names).await;

    println!();
    println!("kvmlet node loop, probe guest ({GUEST_MIB} MiB, 1 vCPU), standalone on this machine");
    println!("| figure | kvmlet | KubeVirt (published) |");
    println!("|---|---|---|");
    let s50 = percentile(&mut single, 0.5);
    let s99 = percentile(&mut single, 0.99);
    println!(
        "| VMI created → Running, 1 VMI, p50 / p99 ({single_runs_count} runs) | {} / {} | seconds |",
        ms(s50),
        ms(s99)
    );
    let n50 = percentile(&mut with_network, 0.5);
    let n99 = percentile(&mut with_network, 0.99);
    println!(
        "| the same, on the pod network (namespace, CNI bridge + host-local, masquerade nft) | {} / {} | |",
        ms(n50),
        ms(n99)
    );
    let m50 = percentile(&mut many, 0.5);
    let m99 = percentile(&mut many, 0.99);
    println!(
        "| VMI created → Running, {batch} at once, p50 / p99 | {} / {} | 100 VMIs: p50 15–25 s |",
        ms(m50),
        ms(m99)
    );
    println!(
        "| agent RSS with {batch} VMs (API + controller + node loop) | {} | virt-handler 15–25 MB |",
        mib(agent_rss)
    );
    let total: u64 = vm_rss.iter().sum();
    println!(
        "| VM process RSS, median / max / mean (incl. guest pages touched) | {} / {} / {} | ~240 MiB fixed per VM |",
        mib(vm_rss[vm_rss.len() / 2]),
        mib(*vm_rss.last().unwrap()),
        mib(total / vm_rss.len() as u64)
    );
}
