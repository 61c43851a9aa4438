//! `kvmlet expose` and Services that reach VMs, standalone: kvmlet writes
//! the EndpointSlices (no pods) and is the service proxy (nftables).
//!
//! Everything runs in a network namespace this test makes: the test re-runs
//! itself under `unshare --net`, where a veth `node0` (192.168.100.1) is
//! the node's address, `kvmlet standalone --network masquerade` puts VMs on
//! the pod network 10.88.0.0/16, and ClusterIPs come from 10.96.0.0/16.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::node::{create, wait_for, wait_for_phase};
use e2e::standalone::Standalone;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::{json, Value};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// Each probe serves this many connections, then waits for its power button.
const PROBE_ARGS: &str = "probe.action=wait probe.net_tcp=22 probe.net_tcp_count=32";

#[test]
fn services_reach_vms_through_kvmlets_endpoint_slices_and_proxy() {
    e2e::run_in_private_netns("inside_a_private_namespace");
    let host = Command::new("nft").args(["list", "table", "ip", "kvmlet-services"]).output().unwrap();
    assert!(!host.status.success(), "the service rules must not reach the host's namespace");
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

fn vm_spec(name: &str, labels: Value, ports: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"running": false, "template": {"metadata": {"labels": labels}, "spec": {
            "terminationGracePeriodSeconds": 0,
            "networks": [{"name": "default", "pod": {}}],
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "firmware": {"kernelBoot": {"kernelArgs": PROBE_ARGS}},
                "devices": {"interfaces": [{"name": "default", "masquerade": {}, "ports": ports}]},
            },
        }}},
    })
}

/// The banner of the probe behind `address`, or the connection's error.
fn banner(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// Polls `check` until it gives a value (at most `limit`).
async fn eventually<T>(what: &str, server: &Standalone, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "never: {what}\n--- server log ---\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The endpoints (address, ready) in the Service's kvmlet slices, or `None` while it has none.
async fn slice_endpoints(slices: &Api<EndpointSlice>, service: &str) -> Option<Vec<(String, bool)>> {
    let selector = format!("kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by=kvmlet.io");
    let list = slices.list(&ListParams::default().labels(&selector)).await.unwrap();
    if list.items.is_empty() {
        return None;
    }
    let mut endpoints: Vec<(String, bool)> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().and_then(|c| c.ready) == Some(true)))
        .collect();
    endpoints.sort();
    Some(endpoints)
}

async fn wait_slice(slices: &Api<EndpointSlice>, server: &Standalone, service: &str, want: &[(String, bool)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = slice_endpoints(slices, service).await;
        if seen.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{service}'s slice: {seen:?}, wanted {want:?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kvmlet(server: &Standalone, args: &[&str]) -> Output {
    let (output, finished) = e2e::run_within(&mut server.kvmlet(args), None, Duration::from_secs(60));
    assert!(finished, "kvmlet {args:?} hung");
    output
}

fn kvmlet_ok(server: &Standalone, args: &[&str]) -> String {
    let output = kvmlet(server, args);
    assert!(output.status.success(), "kvmlet {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn running_ip(vmis: &Api<VirtualMachineInstance>, server: &Standalone, name: &str) -> Ipv4Addr {
    let vmi = wait_for(vmis, server, name, "running with an IP", Duration::from_secs(60), |v| {
        v.and_then(|v| v.status.as_ref()).is_some_and(|s| {
            s.phase == Some(Phase::Running) && s.interfaces.first().is_some_and(|i| i.get("ipAddress").is_some())
        })
    })
    .await
    .unwrap();
    vmi.status.unwrap().interfaces[0]["ipAddress"].as_str().unwrap().parse().unwrap()
}

fn cluster_ip(service: &Service) -> Ipv4Addr {
    service.spec.as_ref().unwrap().cluster_ip.as_deref().unwrap().parse().unwrap()
}

fn node_port(service: &Service) -> u16 {
    service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port.unwrap() as u16
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by services_reach_vms_through_kvmlets_endpoint_slices_and_proxy inside `unshare --net`"]
async fn inside_a_private_namespace() {
    ip(&["link", "set", "lo", "up"]);
    // The node's own interface (a veth pair: this kernel has no dummy driver).
    ip(&["link", "add", "node0", "type", "veth", "peer", "name", "node0-peer"]);
    ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "node0"]);
    ip(&["link", "set", "node0-peer", "up"]);
    ip(&["link", "set", "node0", "up"]);
    // The node's route to everything (ClusterIPs included) — inside this namespace only.
    ip(&["route", "add", "default", "dev", "node0"]);
    let server = Standalone::with_node(&[
        "--network",
        "masquerade",
        "--pod-cidr",
        "10.88.0.0/16",
        "--cni-bin-dir",
        "/usr/lib/cni",
        "--service-cidr",
        "10.96.0.0/16",
    ]);
    let client = server.client().await;
    let vms: Api<VirtualMachine> = Api::default_namespaced(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client.clone());
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());

    // The seed's order: the Service is made while the VM is stopped.
    let vm = vm_spec("vmi-ephemeral", json!({}), json!([]));
    vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap()).await.unwrap();
    let said = kvmlet_ok(
        &server,
        &[
            "expose",
            "virtualmachine",
            "vmi-ephemeral",
            "--name",
            "vmiservice",
            "--port",
            "27017",
            "--target-port",
            "22",
        ],
    );
    assert_eq!(said.trim(), "Service vmiservice successfully exposed for virtualmachine vmi-ephemeral");
    kvmlet_ok(
        &server,
        &[
            "expose",
            "vm",
            "vmi-ephemeral",
            "--name",
            "vmi-nodeport",
            "--type",
            "NodePort",
            "--port",
            "27018",
            "--target-port",
            "22",
            "--port-name",
            "ssh",
        ],
    );
    let service = services.get("vmiservice").await.unwrap();
    let spec = service.spec.clone().unwrap();
    assert_eq!(spec.selector.unwrap()["vmi.kubevirt.io/id"], "vmi-ephemeral");
    let owner = &service.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller, owner.block_owner_deletion),
        ("VirtualMachine", Some(true), Some(false))
    );
    let cluster = cluster_ip(&service);
    assert_eq!(cluster.octets()[..2], [10, 96], "{cluster} is in the service CIDR");
    let nodeport_service = services.get("vmi-nodeport").await.unwrap();
    let node_port = node_port(&nodeport_service);
    assert!((30000..=32767).contains(&node_port));
    assert_eq!(nodeport_service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].name.as_deref(), Some("ssh"));
    let service_uid = service.metadata.uid.clone().unwrap();

    // Stopped: the slice is there and empty; connections are refused.
    wait_slice(&slices, &server, "vmiservice", &[]).await;
    let refused = eventually("the stopped VM's Service refuses", &server, Duration::from_secs(20), || {
        banner((cluster, 27017).into()).err().filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    drop(refused);

    // Started: the slice gets the VM's pod IP, and the ClusterIP and the
    // NodePort (on the node's address and on loopback) reach its port 22.
    kvmlet_ok(&server, &["start", "vmi-ephemeral"]);
    let pod_ip = running_ip(&vmis, &server, "vmi-ephemeral").await;
    wait_slice(&slices, &server, "vmiservice", &[(pod_ip.to_string(), true)]).await;
    let expected = "probe-banner vmi-ephemeral\n";
    for address in [
        SocketAddr::from((cluster, 27017)),
        SocketAddr::from((NODE_IP, node_port)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, node_port)),
    ] {
        let got =
            eventually(&format!("{address} answers"), &server, Duration::from_secs(20), || banner(address).ok()).await;
        assert_eq!(got, expected, "{address}");
    }

    // Stopped again: the slice empties and connections are refused.
    kvmlet_ok(&server, &["stop", "vmi-ephemeral"]);
    e2e::node::wait_gone(&vmis, &server, "vmi-ephemeral").await;
    wait_slice(&slices, &server, "vmiservice", &[]).await;
    eventually("refused after stop", &server, Duration::from_secs(20), || {
        banner((cluster, 27017).into()).err().filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    // And started: back, with the Service untouched.
    kvmlet_ok(&server, &["start", "vmi-ephemeral"]);
    let pod_ip = running_ip(&vmis, &server, "vmi-ephemeral").await;
    wait_slice(&slices, &server, "vmiservice", &[(pod_ip.to_string(), true)]).await;
    let got =
        eventually("answers after restart", &server, Duration::from_secs(20), || banner((cluster, 27017).into()).ok())
            .await;
    assert_eq!(got, expected);
    let again = services.get("vmiservice").await.unwrap();
    assert_eq!(again.metadata.uid.as_deref(), Some(service_uid.as_str()));
    assert_eq!(again.metadata.resource_version, service.metadata.resource_version, "the Service was not written");

    // Two VMs behind one Service (a shared label): both answer.
    for name in ["pair-a", "pair-b"] {
        let mut vm = vm_spec(name, json!({"app": "pair"}), json!([{"port": 22}]));
        vm["spec"]["running"] = json!(true);
        vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap()).await.unwrap();
    }
    let pair: Service = serde_json::from_value(json!({
        "metadata": {"name": "pair"},
        "spec": {"selector": {"app": "pair"}, "ports": [{"port": 2222, "targetPort": 22}]},
    }))
    .unwrap();
    let pair = services.create(&PostParams::default(), &pair).await.unwrap();
    let mut want = vec![
        (running_ip(&vmis, &server, "pair-a").await.to_string(), true),
        (running_ip(&vmis, &server, "pair-b").await.to_string(), true),
    ];
    want.sort();
    wait_slice(&slices, &server, "pair", &want).await;
    // Connections until both have answered (the proxy applies the slice a
    // moment after it is written; each try is a new random pick).
    let mut answered = std::collections::BTreeSet::new();
    eventually("both VMs behind the Service answer", &server, Duration::from_secs(30), || {
        answered.extend(banner((cluster_ip(&pair), 2222).into()).ok());
        (answered.len() == 2).then_some(())
    })
    .await;
    let both: std::collections::BTreeSet<String> =
        ["probe-banner pair-a\n".to_string(), "probe-banner pair-b\n".to_string()].into();
    assert_eq!(answered, both, "random choice between the two endpoints");

    // The Service edited: its slice follows; deleted: its slices go with it.
    let edit = json!({"spec": {"ports": [{"port": 2222, "targetPort": 2200}]}});
    services.patch("pair", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let selector = "kubernetes.io/service-name=pair,endpointslice.kubernetes.io/managed-by=kvmlet.io";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = slices.list(&ListParams::default().labels(selector)).await.unwrap();
        let ports: Vec<Option<i32>> =
            list.items.iter().flat_map(|s| s.ports.iter().flatten()).map(|p| p.port).collect();
        if ports == [Some(2200)] {
            break;
        }
        assert!(Instant::now() < deadline, "the slice keeps {ports:?} after the edit\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    services.delete("pair", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while slice_endpoints(&slices, "pair").await.is_some() {
        assert!(Instant::now() < deadline, "the deleted Service's slices stay\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No --port: the ports listed on the pod-network interface, named port-1, port-2, ...
    let listed = vm_spec("listed", json!({}), json!([{"port": 22}, {"name": "dns", "port": 53, "protocol": "UDP"}]));
    vms.create(&PostParams::default(), &serde_json::from_value(listed).unwrap()).await.unwrap();
    kvmlet_ok(&server, &["expose", "vm", "listed", "--name", "listed"]);
    let ports = serde_json::to_value(services.get("listed").await.unwrap().spec.unwrap().ports).unwrap();
    assert_eq!(
        ports,
        json!([{"name": "port-1", "port": 22, "protocol": "TCP", "targetPort": 22},
               {"name": "port-2", "port": 53, "protocol": "UDP", "targetPort": 53}])
    );

    // ExternalName is refused, naming it; so is an unknown kind or a missing VM.
    let refused = kvmlet(&server, &["expose", "vm", "listed", "--name", "ext", "--type", "ExternalName"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("type: ExternalName not supported"));
    let missing = kvmlet(&server, &["expose", "vm", "ghost", "--name", "ghost", "--port", "1"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("error fetching VirtualMachine default/ghost"));

    // A VMI of 70 characters: selected by its hashed id.
    let long_name = format!("long-{}", "n".repeat(65));
    let mut long = e2e::node::probe_vmi(&long_name, PROBE_ARGS, 0);
    long.spec.networks = vec![json!({"name": "default", "pod": {}})];
    long.spec.domain.devices.interfaces = vec![json!({"name": "default", "masquerade": {}})];
    create(&vmis, &long).await;
    kvmlet_ok(&server, &["expose", "vmi", &long_name, "--name", "long", "--port", "80", "--target-port", "22"]);
    let long_service = services.get("long").await.unwrap();
    let id = &long_service.spec.as_ref().unwrap().selector.as_ref().unwrap()["vmi.kubevirt.io/id"];
    assert_eq!(id.len(), 63);
    assert!(id.starts_with(&long_name[..54]) && id != &long_name);
    let long_ip = running_ip(&vmis, &server, &long_name).await;
    wait_slice(&slices, &server, "long", &[(long_ip.to_string(), true)]).await;
    let got = eventually("the long VMI answers", &server, Duration::from_secs(20), || {
        banner((cluster_ip(&long_service), 80).into()).ok()
    })
    .await;
    assert!(got.starts_with("probe-banner "), "{got}");

    // kubectl 1.27 and 1.33 list Services and EndpointSlices with their columns.
    for minor in [27, 33] {
        let kubectl = e2e::kubectl_of_minor(minor);
        let listed = server.kubectl_ok(&kubectl, &["get", "svc,endpointslices"], None);
        assert!(listed.contains("CLUSTER-IP") && listed.contains("PORT(S)"), "kubectl 1.{minor}:\n{listed}");
        assert!(listed.contains(&format!("{cluster}")) && listed.contains("27017/TCP"), "kubectl 1.{minor}:\n{listed}");
        assert!(listed.contains(&format!("27018:{node_port}/TCP")), "kubectl 1.{minor}:\n{listed}");
        assert!(listed.contains("ADDRESSTYPE") && listed.contains(&pod_ip.to_string()), "kubectl 1.{minor}:\n{listed}");
        // A misspelt field is an error, not silently dropped.
        let typo = "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"typo\"},\
                    \"spec\": {\"ports\": [{\"port\": 80}], \"clusterIp\": \"None\"}}";
        let error = server.kubectl_fails(&kubectl, &["create", "-f", "-"], Some(typo));
        assert!(error.contains("unknown field \"spec.clusterIp\""), "kubectl 1.{minor}: {error}");
    }

    // Deleting the VM deletes its Services (owner reference) and frees the
    // ClusterIP and the NodePort: both can be asked for again.
    vms.delete("vmi-ephemeral", &DeleteParams::default()).await.unwrap();
    for name in ["vmiservice", "vmi-nodeport"] {
        eventually(&format!("{name} deleted with its VM"), &server, Duration::from_secs(60), || {
            let gone = futures::executor::block_on(services.get_opt(name)).unwrap().is_none();
            gone.then_some(())
        })
        .await;
    }
    let reuse: Service = serde_json::from_value(json!({
        "metadata": {"name": "reuse"},
        "spec": {"type": "NodePort", "clusterIP": cluster.to_string(), "selector": {"app": "none"},
                 "ports": [{"port": 1, "nodePort": node_port}]},
    }))
    .unwrap();
    let reused = services.create(&PostParams::default(), &reuse).await.unwrap();
    assert_eq!((cluster_ip(&reused), self::node_port(&reused)), (cluster, node_port));
    // With a Service on it, the same ClusterIP cannot be had twice.
    let mut twice = reuse.clone();
    twice.metadata.name = Some("twice".into());
    twice.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = None;
    let error = services.create(&PostParams::default(), &twice).await.unwrap_err().to_string();
    assert!(error.contains("provided IP is already allocated"), "{error}");
    wait_for_phase(&vmis, &server, "pair-a", Phase::Running).await;
}
