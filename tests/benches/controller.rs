//! VM controller benchmark: a VirtualMachine created with `running: true` →
//! its VMI `Running`, for one VM at a time and for 100 at once, in standalone
//! mode (API, controller and node loop in one process), and the controller's
//! CPU time per reconcile (its own polls only, from `/metrics`).
//!
//! `cargo bench -p kvmlet-e2e --bench controller [-- SINGLE_RUNS [BATCH]]`
//! prints one table next to KubeVirt's published figure (it cannot run here).

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::bench::{ms, percentile, release_kvmlet, running_after, vmi_events, BenchServer};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance};

fn vm(name: &str) -> VirtualMachine {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"running": true, "template": {"spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "firmware": {"kernelBoot": {"kernelArgs": "probe.action=wait"}},
                "devices": {},
            },
        }}},
    }))
    .unwrap()
}

/// Creates the VMs at once; returns each one's VM created → VMI Running latency.
async fn create_and_wait(client: &Client, names: &[String]) -> Vec<Duration> {
    let vms: Api<VirtualMachine> = Api::default_namespaced(client.clone());
    let events = vmi_events(client);
    let start = Instant::now();
    let creates = names.iter().map(|name| {
        let vms = vms.clone();
        let vm = vm(name);
        async move { vms.create(&PostParams::default(), &vm).await.expect("create VM") }
    });
    futures::future::join_all(creates).await;
    running_after(events, names, start).await
}

async fn delete_all(client: &Client, names: &[String]) {
    let vms: Api<VirtualMachine> = Api::default_namespaced(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    for name in names {
        vms.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for name in names {
        while vms.get_opt(name).await.unwrap().is_some() || vmis.get_opt(name).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "VMs were not deleted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// (reconciles, CPU seconds) of the VM controller so far, from /metrics.
fn controller_counters(health: &str) -> (f64, f64) {
    let out = Command::new("curl").args(["-s", &format!("http://{health}/metrics")]).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |series: &str| {
        text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
    };
    (
        value("kvmlet_reconciles_total{loop=\"vm-controller\"}"),
        value("kvmlet_reconcile_cpu_seconds_total{loop=\"vm-controller\"}"),
    )
}

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let single_runs = numbers.next().unwrap_or(20);
    let batch = numbers.next().unwrap_or(100);
    let kvmlet = release_kvmlet();
    let dir = tempfile::tempdir().unwrap();
    let health =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let server = BenchServer::start(&kvmlet, dir.path(), &["--health-listen", &health]);
    let client = server.client().await;

    let before = controller_counters(&health);
    let mut single = Vec::new();
    for run in 0..single_runs {
        let names = vec![format!("one-{run}")];
        single.extend(create_and_wait(&client, &names).await);
        delete_all(&client, &names).await;
    }
    let names: Vec<String> = (0..batch).map(|i| format!("many-{i:03}")).collect();
    let mut many = create_and_wait(&client, &names).await;
    delete_all(&client, &names).await;
    let after = controller_counters(&health);
    let reconciles = after.0 - before.0;
    let cpu = after.1 - before.1;

    println!();
    println!("VM controller, standalone mode, probe guest (64 MiB, 1 vCPU), this machine");
    println!("| figure | kvmlet | KubeVirt (published) |");
    println!("|---|---|---|");
    let s50 = percentile(&mut single, 0.5);
    let s99 = percentile(&mut single, 0.99);
    println!(
        "| VM created (running: true) → VMI Running, 1 VM, p50 / p99 ({single_runs} runs) | {} / {} | seconds |",
        ms(s50),
        ms(s99)
    );
    let m50 = percentile(&mut many, 0.5);
    let m99 = percentile(&mut many, 0.99);
    println!(
        "| VM created → VMI Running, {batch} VMs at once, p50 / p99 | {} / {} | 100 VMs: p50 15–25 s, p95 27–30 s |",
        ms(m50),
        ms(m99)
    );
    println!(
        "| controller CPU per reconcile (own polls; {reconciles:.0} reconciles, create to delete) | {:.1} µs | — |",
        cpu / reconciles.max(1.0) * 1e6
    );
}
