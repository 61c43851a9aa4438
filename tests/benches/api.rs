//! The embedded API under load, side by side with etcd (the store under every
//! real Kubernetes API server) on loopback, at the same concurrency:
//! durable creates, gets and merge patches through kvmlet's whole API path
//! against etcd's raw durable puts and gets, and watch fan-out to 100 watchers.
//!
//! `cargo bench -p kvmlet-e2e --bench api [-- REQUESTS]` (needs etcd from
//! Debian's etcd-server; scripts/install-deps does not install it).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::bench::percentile;
use e2e::require_tool;
use futures::StreamExt;
use kube::api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use proto::{VirtualMachine, VirtualMachineSpec};

const CONCURRENCY: usize = 16;
const WATCHERS: usize = 100;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `total` operations over CONCURRENCY tasks; `op(i)` performs operation i.
async fn measure<F, Fut>(total: usize, op: F) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|worker| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in (worker..total).step_by(CONCURRENCY) {
                    let t = Instant::now();
                    op(i).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    Figures {
        rate: total as f64 / elapsed.as_secs_f64(),
        p50: percentile(&mut all, 0.5),
        p99: percentile(&mut all, 0.99),
    }
}

fn vm(name: String) -> VirtualMachine {
    let mut vm = VirtualMachine::new(&name, VirtualMachineSpec { running: Some(false), ..Default::default() });
    // Admission checks the template as the node would: it needs memory.
    let memory = k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into());
    vm.spec.template.spec.domain.memory = Some(proto::kubevirt::Memory { guest: Some(memory) });
    vm
}

async fn client_for(server: &str) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\nusers: [{{name: u, user: {{}}}}]\n"
    ))
    .unwrap();
    Client::try_from(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap()).unwrap()
}

fn start_kvmlet(dir: &std::path::Path) -> (Killed, String) {
    let child = Killed(
        Command::new(e2e::bench::release_kvmlet())
            .arg("standalone")
            .arg("--data-dir")
            .arg(dir)
            .arg("--no-node")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let kubeconfig = dir.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&kubeconfig) {
            if let Some(server) = text.lines().find_map(|l| l.trim().strip_prefix("server: ")) {
                return (child, server.to_string());
            }
        }
        assert!(Instant::now() < deadline, "kvmlet standalone did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_etcd(dir: &std::path::Path) -> (Killed, String) {
    let etcd = require_tool("etcd", "etcd-server");
    let url = "http://127.0.0.1:23791";
    let child = Command::new(etcd)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            "http://127.0.0.1:23801",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    (Killed(child), url.to_string())
}

async fn etcd_request(client: &Client, path: &str, body: String) {
    let request = http::Request::post(path).header("content-type", "application/json").body(body.into_bytes()).unwrap();
    client.request_text(request).await.unwrap();
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Watch fan-out: WATCHERS watches on the namespace, then `writes` creates;
/// latency = write acknowledged -> event received, over every watcher.
async fn fan_out(vms: &Api<VirtualMachine>, writes: usize) -> Figures {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut watchers = Vec::new();
    let start_rv = vms.list(&Default::default()).await.unwrap().metadata.resource_version.unwrap();
    for _ in 0..WATCHERS {
        let mut stream = vms.watch(&WatchParams::default().timeout(120), &start_rv).await.unwrap().boxed();
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Added(vm) = event {
                    let _ = tx.send((vm.metadata.name.unwrap(), Instant::now()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut acked = std::collections::HashMap::new();
    let start = Instant::now();
    for i in 0..writes {
        let name = format!("fan-{i}");
        vms.create(&PostParams::default(), &vm(name.clone())).await.unwrap();
        acked.insert(name, Instant::now());
    }
    let mut latencies = Vec::new();
    while latencies.len() < writes * WATCHERS {
        let (name, at) =
            tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("events arrive").unwrap();
        let acked_at = acked.get(&name).copied().unwrap_or(start);
        latencies.push(at.saturating_duration_since(acked_at));
    }
    let elapsed = start.elapsed();
    for watcher in watchers {
        watcher.abort();
    }
    Figures {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let (_kvmlet, _server) = start_kvmlet(&dir.path().join("kvmlet"));
    let (_etcd, etcd_url) = start_etcd(&dir.path().join("etcd"));
    let kubeconfig = Kubeconfig::read_from(dir.path().join("kvmlet/kubeconfig")).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let kvmlet = Client::try_from(config).unwrap();
    let etcd = client_for(&etcd_url).await;
    let vms: Api<VirtualMachine> = Api::namespaced(kvmlet, "default");

    let api = vms.clone();
    let create = measure(requests, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &vm(format!("bench-{i}"))).await.unwrap();
        }
    })
    .await;
    let api = vms.clone();
    let get = measure(requests, move |i| {
        let api = api.clone();
        async move {
            api.get(&format!("bench-{i}")).await.unwrap();
        }
    })
    .await;
    let api = vms.clone();
    let patch = measure(requests, move |i| {
        let api = api.clone();
        async move {
            let body = serde_json::json!({"metadata": {"labels": {"patched": "yes"}}});
            api.patch(&format!("bench-{i}"), &PatchParams::default(), &Patch::Merge(&body)).await.unwrap();
        }
    })
    .await;
    let fan = fan_out(&vms, 50).await;

    let client = etcd.clone();
    let put = measure(requests, move |i| {
        let client = client.clone();
        async move {
            let body =
                format!(r#"{{"key":"{}","value":"{}"}}"#, b64(&format!("/registry/bench-{i}")), b64(&"x".repeat(600)));
            etcd_request(&client, "/v3/kv/put", body).await;
        }
    })
    .await;
    let client = etcd.clone();
    let range = measure(requests, move |i| {
        let client = client.clone();
        async move {
            let body = format!(r#"{{"key":"{}"}}"#, b64(&format!("/registry/bench-{i}")));
            etcd_request(&client, "/v3/kv/range", body).await;
        }
    })
    .await;

    println!("\nembedded API vs etcd 3.4 on loopback ({requests} requests per row, {CONCURRENCY} concurrent clients)");
    println!(
        "{:<40}{:>12}{:>12}{:>12}   {:<22}{:>12}{:>12}{:>12}",
        "kvmlet (whole API path)", "req/s", "p50", "p99", "etcd (raw KV, HTTP)", "req/s", "p50", "p99"
    );
    let row = |name: &str, k: &Figures, e: Option<(&str, &Figures)>| {
        print!("{name:<40}{:>12.0}{:>12}{:>12}", k.rate, ms(k.p50), ms(k.p99));
        if let Some((ename, e)) = e {
            print!("   {ename:<22}{:>12.0}{:>12}{:>12}", e.rate, ms(e.p50), ms(e.p99));
        }
        println!();
    };
    row("create (durable)", &create, Some(("put (durable)", &put)));
    row("get", &get, Some(("range", &range)));
    row("merge-patch (durable)", &patch, None);
    row(&format!("watch fan-out, {WATCHERS} watchers (events/s)"), &fan, None);
}
