//! The node's pod network (`--network masquerade`): each VM in a namespace
//! of its own behind KubeVirt's masquerade binding, its pod IP from CNI
//! (Debian's plugins, the built-in bridge kvmlet0 + host-local).
//!
//! Private addresses exist only in a network namespace this test makes: the
//! test re-runs itself under `unshare --net` and `kvmlet standalone`, the
//! bridge kvmlet0 and the traffic all stay inside it.

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use e2e::node::{create, wait_for, wait_for_phase, wait_gone};
use e2e::standalone::Standalone;
use kube::api::{Api, DeleteParams};
use proto::kubevirt::{VirtualMachineInstance, VirtualMachineInstancePhase as Phase};
use serde_json::json;

const UDP_PORT: u16 = 9999;
const POD_CIDR: &str = "10.88.0.0/16";
const GATEWAY: &str = "10.88.0.1";

#[test]
fn vms_get_pod_ips_through_cni_behind_kubevirts_masquerade() {
    e2e::run_in_private_netns("inside_a_private_namespace");
    let host_bridge = Command::new("ip").args(["link", "show", "kvmlet0"]).output().unwrap();
    assert!(!host_bridge.status.success(), "kvmlet0 must not exist in the host's namespace");
}

fn vmi(name: &str, ports: &[u16], kernel_args: &str) -> VirtualMachineInstance {
    let ports: Vec<_> = ports.iter().map(|p| json!({"port": p})).collect();
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "networks": [{"name": "default", "pod": {}}],
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "firmware": {"kernelBoot": {"kernelArgs": kernel_args}},
                "devices": {"interfaces": [{"name": "default", "masquerade": {}, "ports": ports}]},
            },
        },
    }))
    .unwrap()
}

fn pod_ip(vmi: &VirtualMachineInstance) -> Ipv4Addr {
    let interfaces = &vmi.status.as_ref().unwrap().interfaces;
    interfaces[0]["ipAddress"].as_str().unwrap().parse().unwrap()
}

fn banner(ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

fn netns_list() -> String {
    String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by vms_get_pod_ips_through_cni_behind_kubevirts_masquerade inside `unshare --net`"]
async fn inside_a_private_namespace() {
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
    let udp = UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut server =
        Standalone::with_node(&["--network", "masquerade", "--pod-cidr", POD_CIDR, "--cni-bin-dir", "/usr/lib/cni"]);
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client);
    // `web` forwards 8080 and serves it; `closed` forwards only 9000, so its 8080 is not reachable.
    let udp_arg = format!("probe.net_udp={GATEWAY}:{UDP_PORT}");
    create(&vmis, &vmi("web", &[8080], &format!("probe.action=wait {udp_arg} probe.net_tcp=8080"))).await;
    create(&vmis, &vmi("closed", &[9000], "probe.action=wait probe.net_tcp=8080")).await;
    let with_ip = |vmi: Option<&VirtualMachineInstance>| {
        vmi.and_then(|v| v.status.as_ref())
            .is_some_and(|s| s.interfaces.first().is_some_and(|i| i.get("ipAddress").is_some()))
    };
    wait_for_phase(&vmis, &server, "web", Phase::Running).await;
    wait_for_phase(&vmis, &server, "closed", Phase::Running).await;
    let timeout = Duration::from_secs(30);
    let web = wait_for(&vmis, &server, "web", "reported with an IP", timeout, with_ip).await.unwrap();
    let closed = wait_for(&vmis, &server, "closed", "reported with an IP", timeout, with_ip).await.unwrap();
    let (web_ip, closed_ip) = (pod_ip(&web), pod_ip(&closed));
    assert_ne!(web_ip, closed_ip, "each VM has its own pod IP");
    for ip in [web_ip, closed_ip] {
        assert_eq!(ip.octets()[..2], [10, 88], "{ip} is in {POD_CIDR}");
    }
    let status = &web.status.as_ref().unwrap().interfaces[0];
    assert_eq!(status["name"], "default");
    assert_eq!(status["infoSource"], "domain");
    assert_eq!(status["podInterfaceName"], "eth0");
    assert_eq!(status["ipAddresses"], json!([web_ip.to_string()]));
    let mac = status["mac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("02:"), "a locally administered MAC: {mac}");

    // Egress leaves with the pod IP.
    let mut buffer = [0u8; 512];
    let (len, from) = udp.recv_from(&mut buffer).unwrap();
    assert_eq!(from.ip(), web_ip, "the datagram comes from the pod IP");
    assert_eq!(&buffer[..len], b"probe-udp web\n");
    // The agent is SIGKILLed and restarted: the VMs keep their network.
    server.restart();
    let client = server.client().await;
    let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client);
    // A listed port reaches the guest; an unlisted one does not.
    assert_eq!(banner(web_ip, 8080).unwrap(), "probe-banner web\n");
    assert!(banner(closed_ip, 8080).is_err(), "8080 is not in closed's ports");
    assert!(server.log().contains("pod network checked"), "CNI CHECK on re-attach\n{}", server.log());

    // The guest's side: KubeVirt's lease, in each VM's own namespace.
    let mut uids = Vec::new();
    for name in ["web", "closed"] {
        let uid = vmis.get(name).await.unwrap().metadata.uid.unwrap();
        let serial_log = server.run_dir().join("vms").join(&uid).join("serial.log");
        let lease = "probe: net lease ip=10.0.2.2/24 router=10.0.2.1";
        let mut serial = String::new();
        for _ in 0..600 {
            serial = std::fs::read_to_string(&serial_log).unwrap_or_default();
            if serial.contains(lease) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(serial.contains(lease), "{name}: {serial}");
        assert!(netns_list().contains(&format!("kvmlet-{uid}")));
        uids.push(uid);
    }

    // kubectl shows the IP in its IP column.
    let kubectl = Command::new("kubectl")
        .args(["--kubeconfig", server.kubeconfig().to_str().unwrap(), "get", "vmi", "web", "--no-headers"])
        .output()
        .unwrap();
    let row = String::from_utf8_lossy(&kubectl.stdout).to_string();
    assert!(row.split_whitespace().any(|w| w == web_ip.to_string()), "{row}");

    // Deleting frees the namespaces and the IPAM leases.
    for name in ["web", "closed"] {
        vmis.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["web", "closed"] {
        wait_gone(&vmis, &server, name).await;
    }
    for uid in &uids {
        assert!(!netns_list().contains(&format!("kvmlet-{uid}")), "{}\n{}", netns_list(), server.log());
    }
    let leases: Vec<String> = std::fs::read_dir(server.run_dir().join("cni").join("kvmlet"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.parse::<Ipv4Addr>().is_ok())
        .collect();
    assert!(leases.is_empty(), "no IPAM lease is left: {leases:?}");

    // A VM keeps its MAC across a restart (its VMI is made anew): the guest
    // sees the MAC status.interfaces reports, both times.
    let vms: Api<proto::kubevirt::VirtualMachine> = Api::default_namespaced(server.client().await);
    let template = serde_json::to_value(vmi("steady", &[], "probe.action=wait")).unwrap();
    let vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "steady"},
        "spec": {"runStrategy": "Always", "template": {"spec": template["spec"]}},
    });
    vms.create(&Default::default(), &serde_json::from_value(vm).unwrap()).await.unwrap();
    let first = wait_for(&vmis, &server, "steady", "running with an IP", timeout, |v| {
        v.is_some_and(|v| v.status.as_ref().is_some_and(|s| s.phase == Some(Phase::Running))) && with_ip(v)
    })
    .await
    .unwrap();
    let first_uid = first.metadata.uid.clone().unwrap();
    let first_mac = first.status.as_ref().unwrap().interfaces[0]["mac"].as_str().unwrap().to_string();
    // What the probe printed for its NIC (`probe: net mac=…`), once it has.
    let guest_mac = |uid: String| {
        let serial_log = server.run_dir().join("vms").join(uid).join("serial.log");
        async move {
            for _ in 0..300 {
                let serial = std::fs::read_to_string(&serial_log).unwrap_or_default();
                if let Some(mac) = serial.lines().find_map(|l| l.strip_prefix("probe: net mac=")) {
                    return mac.get(..17).map(str::to_owned);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    };
    assert_eq!(
        guest_mac(first_uid.clone()).await.as_deref(),
        Some(first_mac.as_str()),
        "the guest's NIC has the reported MAC"
    );
    let restart = server.kvmlet(&["restart", "steady"]).output().unwrap();
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    let second = wait_for(&vmis, &server, "steady", "running again, with an IP", timeout, |v| {
        v.is_some_and(|v| {
            v.metadata.uid.as_deref() != Some(first_uid.as_str())
                && v.status.as_ref().is_some_and(|s| s.phase == Some(Phase::Running))
        }) && with_ip(v)
    })
    .await
    .unwrap();
    let second_uid = second.metadata.uid.clone().unwrap();
    let second_mac = second.status.as_ref().unwrap().interfaces[0]["mac"].as_str().unwrap().to_string();
    assert_eq!(second_mac, first_mac, "the restarted VM's MAC");
    assert_eq!(
        guest_mac(second_uid).await.as_deref(),
        Some(first_mac.as_str()),
        "the guest sees the same MAC after the restart"
    );
    vms.delete("steady", &DeleteParams::default()).await.unwrap();
    wait_gone(&vmis, &server, "steady").await;
}
