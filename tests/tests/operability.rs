//! What operators use: /healthz, /readyz and /metrics (read by Prometheus's
//! own text-format parser, prometheus-client from PyPI), JSON logs with the
//! VMI on every VM line, and the CLI's help, version and completions.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::node::*;
use e2e::standalone::Standalone;
use kube::api::Api;
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};

/// Parses Prometheus text with prometheus_client.parser; returns
/// "name{k=v,...}" (labels sorted) → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics ({}; scripts/install-deps installs it):\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn get(address: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://{address}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn find(metrics: &BTreeMap<String, f64>, prefix: &str) -> Vec<(String, f64)> {
    metrics.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), *v)).collect()
}

async fn scrape_until(
    address: &str,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) = get(address, "/metrics");
        assert_eq!(code, 200);
        let metrics = parse_metrics(&text);
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "/metrics never showed {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn health_and_metrics_follow_the_vms() {
    let address = format!("127.0.0.1:{}", free_port());
    let server = Standalone::with_node(&["--health-listen", &address, "--log-format", "json"]);
    assert_eq!(get(&address, "/healthz"), (200, "ok".to_string()));
    assert_eq!(get(&address, "/readyz").0, 200, "ready once the API serves");

    let metrics = parse_metrics(&get(&address, "/metrics").1);
    assert_eq!(metrics.get("kvmlet_vmi_start_seconds_count{}"), Some(&0.0));
    assert!(find(&metrics, "kubevirt_vmi_phase_count").is_empty(), "no VMs yet: {metrics:?}");

    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let mut vmi = probe_vmi("observed", "probe.action=wait", 30);
    vmi.spec.domain.cpu = Some(proto::kubevirt::Cpu { cores: Some(2), ..Default::default() });
    create(&vmis, &vmi).await;
    wait_for_phase(&vmis, &server, "observed", Phase::Running).await;

    let running = "kubevirt_vmi_phase_count{node=test-node,phase=Running}";
    let metrics = scrape_until(&address, "a running VM with vCPU time", |m| {
        m.get(running) == Some(&1.0)
            && find(m, "kubevirt_vmi_vcpu_seconds_total{id=0,name=observed,namespace=default,node=test-node}")
                .first()
                .is_some_and(|(_, v)| *v > 0.0)
    })
    .await;
    assert_eq!(metrics.get("kvmlet_vmi_start_seconds_count{}"), Some(&1.0));
    assert!(metrics["kvmlet_vmi_start_seconds_sum{}"] > 0.0);
    let memory = "kubevirt_vmi_memory_resident_bytes{name=observed,namespace=default,node=test-node}";
    assert!(metrics[memory] > 1e6, "resident memory in bytes: {}", metrics[memory]);
    for series in ["kubevirt_vmi_storage_read_traffic_bytes_total", "kubevirt_vmi_storage_write_traffic_bytes_total"] {
        assert_eq!(find(&metrics, series).len(), 1, "{series}: {metrics:?}");
    }
    // The probe runs on the boot vCPU; the other waits for a start-up IPI that never comes.
    assert_eq!(find(&metrics, "kubevirt_vmi_vcpu_seconds_total").len(), 2, "one series per vCPU");

    // The guest powers off: the phase moves, the per-VM series go.
    let pressed = Command::new("curl")
        .args(["-s", "-f", "-X", "POST", "--unix-socket"])
        .arg(server.run_dir().join("kvmlet.sock"))
        .arg("http://localhost/v1/namespaces/default/vms/observed/power-button")
        .output()
        .unwrap();
    assert!(pressed.status.success());
    wait_for_phase(&vmis, &server, "observed", Phase::Succeeded).await;
    let metrics = scrape_until(&address, "the VM Succeeded", |m| {
        m.get("kubevirt_vmi_phase_count{node=test-node,phase=Succeeded}") == Some(&1.0) && !m.contains_key(running)
    })
    .await;
    assert!(find(&metrics, "kubevirt_vmi_vcpu_seconds_total").is_empty(), "no VM process, no vCPU series");

    // JSON logs: every line parses, and lines about the VM name it.
    let log = server.log();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "VM process started")
        .unwrap_or_else(|| panic!("no 'VM process started' line:\n{log}"));
    let text = started.to_string();
    assert!(text.contains("\"namespace\":\"default\"") && text.contains("\"vmi\":\"observed\""), "{text}");
    assert!(text.contains("\"uid\":\""), "{text}");
}

#[test]
fn help_version_and_completions() {
    let kvmlet = e2e::kvmlet_bin();
    let help = Command::new(kvmlet).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let commands = [
        "run",
        "firmware-dump",
        "nocloud",
        "standalone",
        "agent",
        "controller",
        "ps",
        "inspect",
        "console",
        "start",
        "stop",
        "restart",
        "version",
        "completions",
    ];
    for command in commands {
        assert!(help.lines().any(|l| l.trim_start().starts_with(&format!("{command} "))), "{command} missing:\n{help}");
        let out = Command::new(kvmlet).args([command, "--help"]).output().unwrap();
        assert!(out.status.success(), "kvmlet {command} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: kvmlet"), "kvmlet {command} --help:\n{text}");
    }
    assert!(!help.contains("vm-process"), "the VM process subcommand is internal");
    for ratio in ["0", "1001", "x"] {
        let out = Command::new(kvmlet).args(["agent", "--cpu-allocation-ratio", ratio]).output().unwrap();
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && why.contains("--cpu-allocation-ratio"), "ratio {ratio}: {why}");
    }

    let version = Command::new(kvmlet).arg("version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("kvmlet {}", env!("CARGO_PKG_VERSION")));

    let script = Command::new(kvmlet).args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kvmlet.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(check.success(), "bash -n accepts the completion script");
    assert!(String::from_utf8_lossy(&script.stdout).contains("standalone"));
    let bad = Command::new(kvmlet).args(["completions", "cmd.exe"]).output().unwrap();
    assert!(!bad.status.success());
}

/// What `Type=notify` units rely on: the process sends READY=1 once it
/// serves, and WATCHDOG=1 at least every WATCHDOG_USEC/2.
#[test]
fn standalone_and_agent_notify_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let data = dir.path().join("data");
    let mut standalone = Command::new(e2e::kvmlet_bin())
        .args(["standalone", "--no-node", "--data-dir"])
        .arg(&data)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let mut buffer = [0u8; 256];
    while messages.iter().filter(|m| *m == "WATCHDOG=1").count() < 2 {
        let n = socket.recv(&mut buffer).expect("sd_notify messages within 30 s");
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert_eq!(messages[0], "READY=1", "{messages:?}");
    assert!(data.join("kubeconfig").exists(), "ready only once the kubeconfig is written");

    let mut agent = Command::new(e2e::kvmlet_bin())
        .args(["agent", "--node-name", "notify-node", "--kubeconfig"])
        .arg(data.join("kubeconfig"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let n = socket.recv(&mut buffer).expect("the agent's READY=1 within 30 s");
        if &buffer[..n] == b"READY=1" {
            break;
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = standalone.kill();
    let _ = standalone.wait();
}
