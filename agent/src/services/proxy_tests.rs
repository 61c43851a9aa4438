use std::process::Command;

use serde_json::{json, Value};

use super::*;

fn service(name: &str, spec: Value) -> Arc<Service> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})).unwrap())
}

fn slice(service: &str, port: Value, endpoints: Value) -> Arc<EndpointSlice> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [port], "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

fn ready(ip: &str, ready: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready}})
}

fn example() -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let services = vec![
        service(
            "db",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 27017, "targetPort": 22, "protocol": "TCP", "nodePort": 30017}]}),
        ),
        service(
            "web",
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.11", "externalIPs": ["192.168.5.5"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
        ),
        service(
            "empty",
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.12", "ports": [{"port": 53, "protocol": "UDP"}]}),
        ),
        service("headless", json!({"clusterIP": "None", "ports": [{"port": 1}]})),
        service("dns-name", json!({"type": "ExternalName", "externalName": "example.org"})),
    ];
    let slices = vec![
        slice("db", json!({"name": "", "port": 22, "protocol": "TCP"}), json!([ready("10.88.0.2", true)])),
        slice(
            "web",
            json!({"name": "http", "port": 8080, "protocol": "TCP"}),
            json!([ready("10.88.0.3", true), ready("10.88.0.4", true), ready("10.88.0.5", false)]),
        ),
        slice("empty", json!({"name": "", "port": 53, "protocol": "UDP"}), json!([ready("10.88.0.6", false)])),
    ];
    (services, slices)
}

#[test]
fn services_dnat_to_ready_endpoints_and_reject_without_them() {
    let (services, slices) = example();
    let text = ruleset(&services, &slices, &NodePortAddresses::default());
    // ClusterIP, external IP and NodePort each lead to the Service's chain.
    assert!(text.contains("ip daddr 10.96.0.10 tcp dport 27017 jump svc-"), "{text}");
    assert!(text.contains("fib daddr type local tcp dport 30017 jump nodeport-"), "{text}");
    assert!(text.contains("ip daddr 192.168.5.5 tcp dport 80 jump svc-"), "{text}");
    assert!(text.contains("dnat to 10.88.0.2:22"), "{text}");
    // Two ready endpoints: a random pick between them; the unready one is not there.
    assert!(text.contains("numgen random mod 2 vmap"), "{text}");
    assert!(text.contains("dnat to 10.88.0.3:8080") && text.contains("dnat to 10.88.0.4:8080"), "{text}");
    assert!(!text.contains("10.88.0.5"), "{text}");
    // No ready endpoint: rejected.
    assert!(text.contains("ip daddr 10.96.0.12 udp dport 53 reject comment"), "{text}");
    assert!(!text.contains("example.org") && !text.contains("None"), "{text}");
}

#[test]
fn nodeport_addresses_narrow_where_nodeports_answer() {
    let (services, slices) = example();
    let only: NodePortAddresses = NodePortAddresses(vec!["192.168.7.1".parse().unwrap()]);
    let text = ruleset(&services, &slices, &only);
    assert!(text.contains("ip daddr { 192.168.7.1/32 } tcp dport 30017 jump nodeport-"), "{text}");
    assert!(!only.include_loopback());
    assert!(NodePortAddresses(vec!["127.0.0.0/8".parse().unwrap()]).include_loopback());
    assert!(NodePortAddresses::default().include_loopback());
    assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
    assert!("host".parse::<Ipv4Cidr>().is_err());
}

/// nft itself accepts the text (`nft -c` checks without applying; needs
/// root and nftables, both there in CI: scripts/install-deps).
#[test]
fn nft_accepts_the_ruleset() {
    let (services, slices) = example();
    for nodeports in [NodePortAddresses::default(), NodePortAddresses(vec!["192.168.7.0/24".parse().unwrap()])] {
        let text = ruleset(&services, &slices, &nodeports);
        // The leading `delete table` needs the table to exist; check the table itself.
        let table = text.split_once(&format!("delete table ip {TABLE}\n")).unwrap().1;
        let mut child = Command::new("unshare")
            .args(["--net", "--", "nft", "-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(table.as_bytes()).unwrap();
        let result = child.wait_with_output().unwrap();
        assert!(result.status.success(), "{}\n{table}", String::from_utf8_lossy(&result.stderr));
    }
}
