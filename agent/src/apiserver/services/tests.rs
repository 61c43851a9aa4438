//! Services through the router kubectl reaches: kube-apiserver's defaults,
//! its validation messages, the status subresource and kubectl's columns.
//! Allocation has its own tests (`allocation_tests`).

use serde_json::{json, Value};

use crate::apiserver::embedded::EmbeddedApi;
use crate::apiserver::test_requests::{get, merge_patch, post, refused, table};

const SERVICES: &str = "/api/v1/namespaces/default/services";

pub(super) fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

fn open() -> (tempfile::TempDir, EmbeddedApi) {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    (dir, api)
}

async fn created(api: &EmbeddedApi, name: &str, spec: Value) -> Value {
    let (code, object) = post(api, SERVICES, &service(name, spec)).await;
    assert_eq!(code, 201, "{object}");
    object
}

#[tokio::test]
async fn a_service_gets_kube_apiservers_defaults() {
    let (_dir, api) = open();
    let web = created(&api, "web", json!({"selector": {"app": "web"}, "ports": [{"port": 80}]})).await;
    let spec = &web["spec"];
    let ip = spec["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(spec["clusterIPs"], json!([ip]));
    assert_eq!(
        (spec["type"].as_str(), spec["sessionAffinity"].as_str(), spec["internalTrafficPolicy"].as_str()),
        (Some("ClusterIP"), Some("None"), Some("Cluster"))
    );
    assert_eq!(spec["ports"], json!([{"port": 80, "protocol": "TCP", "targetPort": 80}]));
    assert_eq!((spec["ipFamilies"].clone(), spec["ipFamilyPolicy"].clone()), (json!(["IPv4"]), json!("SingleStack")));
    assert!(spec.get("externalTrafficPolicy").is_none() && spec.get("allocateLoadBalancerNodePorts").is_none());
    assert_eq!(web["status"], json!({"loadBalancer": {}}));

    let balancer =
        created(&api, "lb", json!({"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": "https"}]})).await;
    let spec = &balancer["spec"];
    assert_eq!(
        (spec["externalTrafficPolicy"].as_str(), spec["allocateLoadBalancerNodePorts"].as_bool()),
        (Some("Cluster"), Some(true))
    );
    assert_eq!(spec["ports"][0]["targetPort"], "https");
    let node_port = spec["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");

    let affinity = created(&api, "sticky", json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}]})).await;
    assert_eq!(affinity["spec"]["sessionAffinityConfig"], json!({"clientIP": {"timeoutSeconds": 10800}}));

    // Empty values are no values (Go's omitempty), as kubectl's protobuf bodies send them.
    let external =
        created(&api, "db", json!({"type": "ExternalName", "externalName": "db.example.com", "clusterIP": ""})).await;
    let spec = external["spec"].as_object().unwrap();
    for absent in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"] {
        assert!(!spec.contains_key(absent), "{absent} in {external}");
    }

    let headless =
        created(&api, "pods", json!({"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]})).await;
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    assert_eq!(headless["spec"]["ipFamilyPolicy"], "SingleStack");
    // As in Kubernetes: a headless Service without a selector may name both families.
    let selectorless = created(&api, "peers", json!({"clusterIP": "None"})).await;
    assert_eq!(selectorless["spec"]["ipFamilyPolicy"], "RequireDualStack");
    assert_eq!(selectorless["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
}

#[tokio::test]
async fn invalid_services_are_refused_with_kube_apiservers_messages() {
    let (_dir, api) = open();
    let port = |port: Value| json!({"ports": [port]});
    let cases = [
        (json!({"ports": []}), "spec.ports: Required value"),
        (
            port(json!({"port": 0, "targetPort": 8080})),
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        // As kube-apiserver: the target port defaults to the port, and is as wrong.
        (
            port(json!({"port": 70000})),
            "[spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive]",
        ),
        (json!({"ports": [{"name": "a", "port": 80}, {"port": 81}]}), "spec.ports[1].name: Required value"),
        (json!({"ports": [{"name": "x", "port": 80}, {"name": "x", "port": 81}]}), "spec.ports[1].name: Duplicate value: \"x\""),
        (
            port(json!({"port": 80, "protocol": "ICMP"})),
            "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ),
        (
            json!({"type": "Foo", "ports": [{"port": 80}]}),
            "spec.type: Unsupported value: \"Foo\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ),
        (
            port(json!({"port": 80, "nodePort": 30080})),
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        ),
        (json!({"type": "ExternalName"}), "spec.externalName: Required value"),
        (
            json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        ),
        (
            json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
            "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster",
        ),
        (
            port(json!({"port": 80, "targetPort": 70000})),
            "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            port(json!({"port": 80, "targetPort": "8080"})),
            "spec.ports[0].targetPort: Invalid value: \"8080\": must contain at least one letter (a-z)",
        ),
        (
            port(json!({"port": 80, "targetPort": "web-frontend-http"})),
            "spec.ports[0].targetPort: Invalid value: \"web-frontend-http\": must be no more than 15 characters",
        ),
        (
            json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}),
            "spec.clusterIPs[0]: Invalid value: \"10.96.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ),
        (
            json!({"clusterIPs": ["10.96.0.7"], "ports": [{"port": 80}]}),
            "spec.clusterIPs: Invalid value: []string{\"10.96.0.7\"}: must be empty when `clusterIP` is not specified",
        ),
        (
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81, "nodePort": 30080}]}),
            "spec.ports[1].nodePort: Duplicate value: 30080",
        ),
        (
            json!({"type": "ExternalName", "externalName": "db.example.com", "ipFamilies": ["IPv4"]}),
            "spec.ipFamilies: Forbidden: may not be set for ExternalName services",
        ),
        (
            json!({"allocateLoadBalancerNodePorts": true, "ports": [{"port": 80}]}),
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
        ),
        (
            json!({"selector": {"app": "a b"}, "ports": [{"port": 80}]}),
            "spec.selector: Invalid value: \"a b\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        ),
    ];
    for (spec, expected) in cases {
        let message = refused(post(&api, SERVICES, &service("s", spec.clone())).await, 422);
        assert_eq!(message, format!("Service \"s\" is invalid: {expected}"), "{spec}");
    }
    // Two ports without names: both are named in the error, in brackets.
    let message =
        refused(post(&api, SERVICES, &service("s", json!({"ports": [{"port": 80}, {"port": 81}]}))).await, 422);
    assert_eq!(
        message,
        "Service \"s\" is invalid: [spec.ports[0].name: Required value, spec.ports[1].name: Required value]"
    );
    // Fields of the wrong type are a 400, as a body kube-apiserver cannot decode.
    for spec in [json!({"ports": [{"port": "eighty"}]}), json!("ClusterIP")] {
        let message = refused(post(&api, SERVICES, &service("s", spec)).await, 400);
        assert!(message.starts_with("Service in version \"v1\" cannot be handled as a Service: "), "{message}");
    }
    // Nothing refused was stored, and what was asked for is free.
    let (_, list) = get(&api, SERVICES).await;
    assert_eq!(list["items"], json!([]));
    created(&api, "s", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]})).await;
}

#[tokio::test]
async fn status_is_written_through_the_status_subresource_only() {
    let (_dir, api) = open();
    let mut asked = service("lb", json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
    asked["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
    let (code, lb) = post(&api, SERVICES, &asked).await;
    assert_eq!((code.as_u16(), lb["status"].clone()), (201, json!({"loadBalancer": {}})));

    let ingress = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
    let (code, written) = merge_patch(&api, &format!("{SERVICES}/lb/status"), &ingress).await;
    assert_eq!(code, 200, "{written}");
    assert_eq!(written["status"], ingress["status"]);
    assert_eq!(written["spec"], lb["spec"], "a status write leaves the spec (and its allocations) alone");

    let (code, relabelled) =
        merge_patch(&api, &format!("{SERVICES}/lb"), &json!({"metadata": {"labels": {"a": "b"}}, "status": null}))
            .await;
    assert_eq!(code, 200, "{relabelled}");
    assert_eq!(relabelled["status"], ingress["status"], "the object's own writes leave status alone");
    let table = table(&api, SERVICES).await;
    assert_eq!(table["rows"][0]["cells"][3], "192.0.2.1");

    // Once not a load balancer, it has no load balancer status.
    let (code, plain) = merge_patch(&api, &format!("{SERVICES}/lb"), &json!({"spec": {"type": "ClusterIP"}})).await;
    assert_eq!(code, 200, "{plain}");
    assert_eq!(plain["status"], json!({"loadBalancer": {}}));
}

#[tokio::test]
async fn kubectl_gets_kube_apiservers_service_columns() {
    let (_dir, api) = open();
    created(
        &api,
        "web",
        json!({"clusterIP": "10.96.0.10", "selector": {"tier": "web", "app": "a"},
        "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    )
    .await;
    created(&api, "db", json!({"type": "ExternalName", "externalName": "db.example.com"})).await;
    created(&api, "edge", json!({"type": "NodePort", "ports": [{"port": 27017, "nodePort": 31234}]})).await;
    let table = table(&api, SERVICES).await;
    let columns: Vec<(&str, i64)> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        columns,
        [("Name", 0), ("Type", 0), ("Cluster-IP", 0), ("External-IP", 0), ("Port(s)", 0), ("Age", 0), ("Selector", 1)]
    );
    let rows: Vec<&Value> = table["rows"].as_array().unwrap().iter().map(|r| &r["cells"]).collect();
    assert_eq!(rows[0], &json!(["db", "ExternalName", "<none>", "db.example.com", "<none>", "0s", "<none>"]));
    assert_eq!(rows[1], &json!(["edge", "NodePort", rows[1][2], "<none>", "27017:31234/TCP", "0s", "<none>"]));
    assert_eq!(rows[2], &json!(["web", "ClusterIP", "10.96.0.10", "<none>", "80/TCP,53/UDP", "0s", "app=a,tier=web"]));
}
