//! EndpointSlices through the router: discovery, defaults, validation
//! messages, label selectors, kubectl's columns and garbage collection with
//! their Service.

use axum::http::Method;
use serde_json::{json, Value};

use crate::apiserver::embedded::EmbeddedApi;
use crate::apiserver::test_requests::{call, get, post, refused, table};

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

fn slice(name: &str, service: &str, body: Value) -> Value {
    let mut object = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}}});
    if let (Some(object), Some(body)) = (object.as_object_mut(), body.as_object()) {
        object.extend(body.clone());
    }
    object
}

fn open() -> (tempfile::TempDir, EmbeddedApi) {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    (dir, api)
}

#[tokio::test]
async fn endpoint_slices_are_served_defaulted_and_selected_by_service() {
    let (_dir, api) = open();
    let (code, group) = get(&api, "/apis/discovery.k8s.io/v1").await;
    assert_eq!(code, 200);
    let resource = &group["resources"][0];
    assert_eq!((resource["name"].as_str(), resource["kind"].as_str()), (Some("endpointslices"), Some("EndpointSlice")));
    assert_eq!(resource["namespaced"], true);

    let web = slice(
        "web-abc",
        "web",
        json!({"addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"port": 8080}]}),
    );
    let (code, created) = post(&api, SLICES, &web).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["ports"], json!([{"name": "", "port": 8080, "protocol": "TCP"}]));
    let db = slice("db-xyz", "db", json!({"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com."]}]}));
    assert_eq!(post(&api, SLICES, &db).await.0, 201);

    let (code, selected) = get(&api, &format!("{SLICES}?labelSelector=kubernetes.io%2Fservice-name%3Dweb")).await;
    assert_eq!(code, 200);
    let names: Vec<&str> =
        selected["items"].as_array().unwrap().iter().map(|s| s["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web-abc"]);

    let table = table(&api, SLICES).await;
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "AddressType", "Ports", "Endpoints", "Age"]);
    assert_eq!(table["rows"][0]["cells"], json!(["db-xyz", "FQDN", "<unset>", "db.example.com.", "0s"]));
    assert_eq!(table["rows"][1]["cells"], json!(["web-abc", "IPv4", "8080", "10.0.0.1", "0s"]));
}

#[tokio::test]
async fn invalid_endpoint_slices_are_refused_with_kube_apiservers_messages() {
    let (_dir, api) = open();
    let endpoints = |addresses: Value| json!([{"addresses": addresses}]);
    let cases = [
        (json!({"endpoints": []}), "addressType: Required value"),
        (
            json!({"addressType": "IP", "endpoints": []}),
            "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
        ),
        (
            json!({"addressType": "IPv4", "endpoints": endpoints(json!([]))}),
            "endpoints[0].addresses: Required value: must contain at least 1 address",
        ),
        (
            json!({"addressType": "IPv4", "endpoints": endpoints(json!(["fd00::1"]))}),
            "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
        ),
        (
            json!({"addressType": "IPv6", "endpoints": endpoints(json!(["10.0.0.1"]))}),
            "endpoints[0].addresses[0]: Invalid value: \"10.0.0.1\": must be a valid IPv6 address",
        ),
        (
            json!({"addressType": "IPv4", "endpoints": endpoints(json!(["127.0.0.1"]))}),
            "endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ),
        (
            json!({"addressType": "FQDN", "endpoints": endpoints(json!(["localhost"]))}),
            "endpoints[0].addresses[0]: Invalid value: \"localhost\": should be a domain with at least two segments separated by dots",
        ),
        (
            json!({"addressType": "IPv4", "endpoints": endpoints(json!((0..101).map(|i| format!("10.0.{}.{}", i / 200, i % 200 + 1)).collect::<Vec<_>>()))}),
            "endpoints[0].addresses: Too many: 101: must have at most 100 items",
        ),
        (
            json!({"addressType": "IPv4", "endpoints": [], "ports": [{"port": 0}]}),
            "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            json!({"addressType": "IPv4", "endpoints": [], "ports": [{"port": 80, "protocol": "ICMP"}]}),
            "ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ),
        (
            json!({"addressType": "IPv4", "endpoints": [], "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
            "ports[1].name: Duplicate value: \"a\"",
        ),
    ];
    for (body, expected) in cases {
        let message = refused(post(&api, SLICES, &slice("s", "web", body.clone())).await, 422);
        assert_eq!(message, format!("EndpointSlice.discovery.k8s.io \"s\" is invalid: {expected}"), "{body}");
    }
    let malformed = slice("s", "web", json!({"addressType": "IPv4", "endpoints": [{"addresses": "10.0.0.1"}]}));
    let message = refused(post(&api, SLICES, &malformed).await, 400);
    assert!(message.starts_with("EndpointSlice in version \"v1\" cannot be handled as a EndpointSlice: "), "{message}");

    // The address type is fixed once set.
    let web = slice("web", "web", json!({"addressType": "IPv4", "endpoints": []}));
    let (code, created) = post(&api, SLICES, &web).await;
    assert_eq!(code, 201, "{created}");
    let mut changed = created.clone();
    changed["addressType"] = json!("IPv6");
    let message = refused(call(&api, Method::PUT, &format!("{SLICES}/web"), &changed).await, 422);
    assert_eq!(
        message,
        "EndpointSlice.discovery.k8s.io \"web\" is invalid: addressType: Invalid value: \"IPv6\": field is immutable"
    );
}

#[tokio::test]
async fn slices_owned_by_a_service_go_with_it() {
    let (_dir, api) = open();
    let service =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
    let (code, service) = post(&api, "/api/v1/namespaces/default/services", &service).await;
    assert_eq!(code, 201, "{service}");
    let mut owned = slice("web-1", "web", json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]}));
    owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Service", "name": "web",
        "uid": service["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
    assert_eq!(post(&api, SLICES, &owned).await.0, 201);
    let (code, _) = call(&api, Method::DELETE, "/api/v1/namespaces/default/services/web", &Value::Null).await;
    assert!(code.is_success());
    for _ in 0..100 {
        if get(&api, &format!("{SLICES}/web-1")).await.0 == 404 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the slice outlived its Service");
}
