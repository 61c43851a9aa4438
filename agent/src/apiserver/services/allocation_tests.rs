//! Cluster IPs and node ports through the router: taken on request or at
//! random, never twice (across namespaces, under concurrent creates), kept
//! by updates, freed by deletes and type changes.

use axum::http::Method;
use serde_json::{json, Value};

use super::tests::service;
use crate::apiserver::embedded::EmbeddedApi;
use crate::apiserver::state::ApiConfig;
use crate::apiserver::store::ObjectKey;
use crate::apiserver::test_requests::{call, get, merge_patch, post, refused};

const SERVICES: &str = "/api/v1/namespaces/default/services";

fn open() -> (tempfile::TempDir, EmbeddedApi) {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    (dir, api)
}

async fn create(api: &EmbeddedApi, name: &str, spec: Value) -> Value {
    let (code, object) = post(api, SERVICES, &service(name, spec)).await;
    assert_eq!(code, 201, "{object}");
    object
}

async fn delete(api: &EmbeddedApi, path: &str) {
    let (code, answer) = call(api, Method::DELETE, path, &Value::Null).await;
    assert!(code.is_success(), "{answer}");
}

#[tokio::test]
async fn explicit_cluster_ips_must_be_in_range_and_free_in_every_namespace() {
    let (_dir, api) = open();
    let a = create(&api, "a", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]})).await;
    assert_eq!(a["spec"]["clusterIPs"], json!(["10.96.0.10"]));

    assert_eq!(post(&api, "/api/v1/namespaces", &json!({"metadata": {"name": "other"}})).await.0, 201);
    let elsewhere = "/api/v1/namespaces/other/services";
    let taken = post(&api, elsewhere, &service("b", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}))).await;
    assert_eq!(
        refused(taken, 422),
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.10\"}: failed to allocate IP 10.96.0.10: provided IP is already allocated"
    );
    let outside = post(&api, elsewhere, &service("b", json!({"clusterIP": "1.2.3.4", "ports": [{"port": 53}]}))).await;
    assert_eq!(
        refused(outside, 422),
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"1.2.3.4\"}: failed to allocate IP 1.2.3.4: the provided IP (1.2.3.4) is not in the valid range. The range of valid IPs is 10.96.0.0/16"
    );
    for reserved in ["10.96.0.0", "10.96.255.255"] {
        let network =
            post(&api, elsewhere, &service("b", json!({"clusterIP": reserved, "ports": [{"port": 53}]}))).await;
        assert!(refused(network, 422).contains("is not in the valid range"), "{reserved}");
    }

    // Deleting the holder frees the address.
    delete(&api, &format!("{SERVICES}/a")).await;
    let (code, b) =
        post(&api, elsewhere, &service("b", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}))).await;
    assert_eq!((code.as_u16(), b["spec"]["clusterIP"].as_str()), (201, Some("10.96.0.10")), "{b}");
}

#[tokio::test]
async fn a_service_being_deleted_still_holds_its_address() {
    let (_dir, api) = open();
    let mut held = service("held", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    assert_eq!(post(&api, SERVICES, &held).await.0, 201);
    delete(&api, &format!("{SERVICES}/held")).await;
    let again = json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]});
    let message = refused(post(&api, SERVICES, &service("next", again.clone())).await, 422);
    assert!(message.ends_with("provided IP is already allocated"), "{message}");
    let (code, _) = merge_patch(&api, &format!("{SERVICES}/held"), &json!({"metadata": {"finalizers": null}})).await;
    assert_eq!(code, 200);
    assert_eq!(post(&api, SERVICES, &service("next", again)).await.0, 201);
}

#[tokio::test]
async fn updates_keep_what_they_leave_out_and_may_not_change_the_cluster_ip() {
    let (_dir, api) = open();
    let web =
        create(&api, "web", json!({"type": "NodePort", "ports": [{"port": 80}, ], "selector": {"app": "web"}})).await;
    let ip = web["spec"]["clusterIP"].clone();
    let node_port = web["spec"]["ports"][0]["nodePort"].clone();

    // kubectl replace of a manifest without the allocated values.
    let mut replaced =
        service("web", json!({"type": "NodePort", "ports": [{"port": 80}], "selector": {"app": "other"}}));
    replaced["metadata"]["resourceVersion"] = web["metadata"]["resourceVersion"].clone();
    let (code, kept) = call(&api, Method::PUT, &format!("{SERVICES}/web"), &replaced).await;
    assert_eq!(code, 200, "{kept}");
    assert_eq!((&kept["spec"]["clusterIP"], &kept["spec"]["clusterIPs"]), (&ip, &json!([ip])));
    assert_eq!(kept["spec"]["ports"][0]["nodePort"], node_port);
    let patched =
        merge_patch(&api, &format!("{SERVICES}/web"), &json!({"spec": {"clusterIP": null, "clusterIPs": null}})).await;
    assert_eq!(patched.1["spec"]["clusterIP"], ip, "{}", patched.1);

    let changed =
        merge_patch(&api, &format!("{SERVICES}/web"), &json!({"spec": {"clusterIP": "10.96.0.6", "clusterIPs": null}}))
            .await;
    assert_eq!(
        refused(changed, 422),
        "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.6\"}: may not change once set"
    );

    // A new port gets a node port of its own; the kept one stays.
    let ports = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}});
    let (code, two) = merge_patch(&api, &format!("{SERVICES}/web"), &ports).await;
    assert_eq!(code, 200, "{two}");
    assert_eq!(two["spec"]["ports"][0]["nodePort"], node_port);
    assert_ne!(two["spec"]["ports"][1]["nodePort"], node_port);
    assert!(two["spec"]["ports"][1]["nodePort"].as_i64().is_some());
}

#[tokio::test]
async fn node_ports_are_taken_once_and_freed_by_a_type_change() {
    let (_dir, api) = open();
    let spec = |node_port: i64| json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": node_port}]});
    let edge = create(&api, "edge", spec(30080)).await;
    assert_eq!(edge["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(edge["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(
        refused(post(&api, SERVICES, &service("other", spec(30080))).await, 422),
        "Service \"other\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
    );
    assert_eq!(
        refused(post(&api, SERVICES, &service("other", spec(80))).await, 422),
        "Service \"other\" is invalid: spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"
    );

    // Back to ClusterIP: the node ports go (kube's dropTypeDependentFields), and are free again.
    let (code, plain) = merge_patch(&api, &format!("{SERVICES}/edge"), &json!({"spec": {"type": "ClusterIP"}})).await;
    assert_eq!(code, 200, "{plain}");
    assert!(plain["spec"]["ports"][0].get("nodePort").is_none(), "{plain}");
    assert!(plain["spec"].get("externalTrafficPolicy").is_none(), "{plain}");
    assert_eq!(plain["spec"]["clusterIP"], edge["spec"]["clusterIP"]);
    create(&api, "other", spec(30080)).await;

    // A load balancer without node ports gets none; 53/TCP and 53/UDP share one.
    let bare = create(
        &api,
        "bare",
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
    )
    .await;
    assert!(bare["spec"]["ports"][0].get("nodePort").is_none(), "{bare}");
    let dns = create(&api, "dns", json!({"type": "NodePort", "ports": [{"name": "tcp", "port": 53}, {"name": "udp", "port": 53, "protocol": "UDP"}]})).await;
    assert_eq!(dns["spec"]["ports"][0]["nodePort"], dns["spec"]["ports"][1]["nodePort"]);
    // A load balancer keeping client addresses gets a health check port.
    let local = create(
        &api,
        "local",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    )
    .await;
    let health = local["spec"]["healthCheckNodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&health) && local["spec"]["ports"][0]["nodePort"] != health);
}

#[tokio::test]
async fn switching_to_and_from_external_name_frees_and_allocates_the_cluster_ip() {
    let (_dir, api) = open();
    let web = create(&api, "web", json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80}]})).await;
    let to_name = json!({"spec": {"type": "ExternalName", "externalName": "web.example.com"}});
    let (code, named) = merge_patch(&api, &format!("{SERVICES}/web"), &to_name).await;
    assert_eq!(code, 200, "{named}");
    for absent in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        assert!(named["spec"].get(absent).is_none(), "{absent} in {named}");
    }
    create(&api, "taker", json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80}]})).await;
    let back = json!({"spec": {"type": "ClusterIP", "externalName": null}});
    let (code, back) = merge_patch(&api, &format!("{SERVICES}/web"), &back).await;
    assert_eq!(code, 200, "{back}");
    assert_ne!(back["spec"]["clusterIP"], web["spec"]["clusterIP"]);
    assert!(back["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."));
}

/// Concurrent creates in a /28 (14 addresses): each address goes to one
/// Service, and the rest are refused as kube-apiserver refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_share_an_address_and_a_full_range_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = ApiConfig { service_cidr: "10.0.0.16/28".parse().unwrap() };
    let api = std::sync::Arc::new(EmbeddedApi::open_with(dir.path(), &config).unwrap());
    let creators = (0..2).map(|creator| {
        let api = api.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..50 {
                answers.push(
                    post(&api, SERVICES, &service(&format!("s{creator}-{i}"), json!({"ports": [{"port": 80}]}))).await,
                );
            }
            answers
        })
    });
    let mut addresses = Vec::new();
    let mut full = 0;
    for creator in creators.collect::<Vec<_>>() {
        for (code, answer) in creator.await.unwrap() {
            match code.as_u16() {
                201 => addresses.push(answer["spec"]["clusterIP"].as_str().unwrap().to_string()),
                500 => {
                    assert_eq!(
                        answer["message"],
                        "Internal error occurred: failed to allocate a serviceIP: range is full"
                    );
                    full += 1;
                }
                other => panic!("{other}: {answer}"),
            }
        }
    }
    addresses.sort();
    let expected: Vec<String> = (17..=30).map(|i| format!("10.0.0.{i}")).collect();
    assert_eq!(addresses, expected, "each address once, network and broadcast never");
    assert_eq!(full, 86);
    let (_, list) = get(&api, SERVICES).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 14);
}

#[tokio::test]
async fn full_node_ports_are_refused_as_kube_apiserver_refuses_them() {
    let (_dir, api) = open();
    // One stored Service holding every node port.
    let ports: Vec<Value> =
        (30000..=32767).map(|n| json!({"name": format!("p{n}"), "port": n, "nodePort": n})).collect();
    let hog = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hog", "namespace": "default"},
        "spec": {"type": "NodePort", "ports": ports}});
    api.store().create(&ObjectKey::new("core/services", Some("default"), "hog"), hog).unwrap();
    let answer = post(&api, SERVICES, &service("late", json!({"type": "NodePort", "ports": [{"port": 80}]}))).await;
    assert_eq!(refused(answer, 500), "Internal error occurred: failed to allocate a nodePort: range is full");
    // A ClusterIP Service needs none.
    create(&api, "plain", json!({"ports": [{"port": 80}]})).await;
}
