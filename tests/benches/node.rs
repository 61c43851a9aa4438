//! Node-loop benchmark: VMI created → `Running` as the API reports it, for
//! one VMI at a time and for 50 at once, and the memory the node spends:
//! the agent process (here `kvmlet standalone`: API, controller and node
//! loop in one) and each VM process, with 50 VMs running.
//!
//! `cargo bench -p kvmlet-e2e --bench node [-- SINGLE_RUNS [BATCH]]` prints
//! one table, next to KubeVirt's published figures (KubeVirt cannot run here).

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::bench::{ms, percentile, release_kvmlet, rss_kib, running_after, vmi_events, BenchServer};
use e2e::node::probe_vmi;
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use proto::kubevirt::VirtualMachineInstance;

const GUEST_MIB: u64 = 64;

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

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let single_runs = numbers.next().unwrap_or(20);
    let batch = numbers.next().unwrap_or(50);
    let kvmlet = release_kvmlet();
    let dir = tempfile::tempdir().unwrap();
    let server = BenchServer::start(&kvmlet, dir.path(), &[]);
    let client = server.client().await;
    let api: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());

    let mut single = Vec::new();
    for run in 0..single_runs {
        let names = vec![format!("one-{run}")];
        single.extend(create_and_wait(&client, &names).await);
        delete_all(&api, &names).await;
    }
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
    println!("| VMI created → Running, 1 VMI, p50 / p99 ({single_runs} runs) | {} / {} | seconds |", ms(s50), ms(s99));
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
