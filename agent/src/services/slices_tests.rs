use serde_json::{json, Value};

use super::*;

fn service(selector: Value, ports: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "svc", "namespace": "ns", "uid": "svc-uid"},
        "spec": {"selector": selector, "ports": ports, "type": "ClusterIP"},
    }))
    .unwrap()
}

fn vmi(name: &str, ip: Option<&str>, ready: bool, labels: Value) -> VirtualMachineInstance {
    let interfaces = match ip {
        Some(ip) => json!([{"name": "default", "podInterfaceName": "eth0", "ipAddress": ip, "ipAddresses": [ip]}]),
        None => json!([]),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"), "labels": labels},
        "spec": {
            "networks": [{"name": "default", "pod": {}}],
            "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {},
                "ports": [{"name": "ssh", "port": 22}, {"port": 8080}]}]}},
        },
        "status": {"phase": if ip.is_some() { "Running" } else { "Scheduled" }, "nodeName": "node-a",
                   "interfaces": interfaces,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    }))
    .unwrap()
}

fn vm(name: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "uid": "vm-uid"},
        "spec": {"running": false, "template": {"metadata": {"labels": {"tier": "db"}},
                 "spec": {"domain": {"devices": {}}}}},
    }))
    .unwrap()
}

fn json_of(slices: &[EndpointSlice]) -> Value {
    serde_json::to_value(slices).unwrap()
}

#[test]
fn a_running_vmi_is_an_endpoint_with_its_pod_ip_node_and_readiness() {
    let service = service(json!({"vmi.kubevirt.io/id": "db"}), json!([{"port": 27017, "targetPort": 22}]));
    let slices = wanted_slices(&service, &[vmi("db", Some("10.88.0.5"), true, json!({}))], &[]).unwrap();
    assert_eq!(slices.len(), 1);
    let slice = json_of(&slices)[0].clone();
    assert!(slice["metadata"]["name"].as_str().unwrap().starts_with("svc-kvmlet-"));
    assert_eq!(
        slice["metadata"]["labels"],
        json!({"kubernetes.io/service-name": "svc", "endpointslice.kubernetes.io/managed-by": "kvmlet.io"})
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"], json!([{"name": "", "port": 22, "protocol": "TCP"}]));
    assert_eq!(
        slice["endpoints"],
        json!([{"addresses": ["10.88.0.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-a", "targetRef": {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "namespace": "ns", "name": "db", "uid": "db-uid"}}])
    );
}

#[test]
fn a_stopped_vms_service_keeps_one_empty_slice_and_foreign_services_get_none() {
    let service = service(json!({"vmi.kubevirt.io/id": "db"}), json!([{"port": 80}]));
    let slices = wanted_slices(&service, &[], &[vm("db")]).unwrap();
    assert_eq!(
        json_of(&slices),
        json!([{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": slices[0].metadata.clone(),
                "addressType": "IPv4", "endpoints": [], "ports": []}])
    );
    // A VMI that has not got its IP yet is not an endpoint either.
    let scheduled = vmi("db", None, false, json!({}));
    assert_eq!(wanted_slices(&service, &[scheduled], &[]).unwrap()[0].endpoints, []);
    // Pods' Services, Services without selector, and ExternalName ones are Kubernetes' own.
    assert!(wanted_slices(&service, &[], &[vm("other")]).is_none());
    let foreign = self::service(json!({"app": "nginx"}), json!([{"port": 80}]));
    assert!(wanted_slices(&foreign, &[vmi("db", Some("10.88.0.5"), true, json!({}))], &[vm("db")]).is_none());
    let mut external = service.clone();
    external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    assert!(wanted_slices(&external, &[], &[vm("db")]).is_none());
    // A VM's template labels count for a stopped VM.
    let by_tier = self::service(json!({"tier": "db"}), json!([{"port": 80}]));
    assert!(wanted_slices(&by_tier, &[], &[vm("db")]).is_some());
}

#[test]
fn vmis_sharing_a_label_are_all_endpoints_and_readiness_follows_the_ready_condition() {
    let service = service(json!({"app": "web"}), json!([{"name": "http", "port": 80, "targetPort": 8080}]));
    let mut leaving = vmi("c", Some("10.88.0.4"), true, json!({"app": "web"}));
    leaving.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-12-05T00:00:00Z".parse().unwrap()));
    let vmis = [
        vmi("a", Some("10.88.0.2"), true, json!({"app": "web"})),
        vmi("b", Some("10.88.0.3"), false, json!({"app": "web"})),
        leaving,
        vmi("d", Some("10.88.0.9"), true, json!({"app": "other"})),
    ];
    let slices = wanted_slices(&service, &vmis, &[]).unwrap();
    assert_eq!(slices.len(), 1);
    let conditions: Vec<(String, bool, bool)> = slices[0]
        .endpoints
        .iter()
        .map(|e| {
            let c = e.conditions.clone().unwrap();
            (e.addresses[0].clone(), c.ready.unwrap(), c.terminating.unwrap())
        })
        .collect();
    assert_eq!(
        conditions,
        [("10.88.0.2".into(), true, false), ("10.88.0.3".into(), false, false), ("10.88.0.4".into(), false, true)]
    );
    assert_eq!(json_of(&slices)[0]["ports"], json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
}

#[test]
fn named_target_ports_resolve_on_each_vmis_interface() {
    let service = service(json!({"app": "web"}), json!([{"port": 2222, "targetPort": "ssh"}]));
    let with_name = vmi("a", Some("10.88.0.2"), true, json!({"app": "web"}));
    let mut without: VirtualMachineInstance = vmi("b", Some("10.88.0.3"), true, json!({"app": "web"}));
    without.spec.domain.devices.interfaces = vec![json!({"name": "default", "masquerade": {}})];
    let slices = wanted_slices(&service, &[with_name, without], &[]).unwrap();
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].endpoints.len(), 1, "b has no port named ssh: not an endpoint");
    assert_eq!(json_of(&slices)[0]["ports"], json!([{"name": "", "port": 22, "protocol": "TCP"}]));
}
