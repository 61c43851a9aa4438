//! core/v1 Service bodies (`kubectl create service ...` sends them as
//! protobuf from kubectl 1.32 on), in k8s.io/api's generated.proto field
//! numbers. Go writes every non-pointer field, empty or not: an empty
//! string, zero or false there means "not set", as the JSON omits it.

use serde_json::{json, Map, Value};

use super::{bytes, fields, map_entry, object_meta, string, unsupported, utf8, ProtobufError, Wire};

fn int32(value: Wire<'_>) -> Result<i64, ProtobufError> {
    match value {
        // int32 fields are varints of the value sign-extended to 64 bits.
        Wire::Varint(v) => Ok(i64::from(v as i32)),
        _ => Err(ProtobufError::Malformed("expected a varint")),
    }
}

/// A string field that means something only when not empty.
fn put_text(map: &mut Map<String, Value>, key: &str, value: Wire<'_>) -> Result<(), ProtobufError> {
    let text = string(value)?;
    if !text.is_empty() {
        map.insert(key.into(), json!(text));
    }
    Ok(())
}

fn push_text(map: &mut Map<String, Value>, key: &str, value: Wire<'_>) -> Result<(), ProtobufError> {
    let text = string(value)?;
    let list = map.entry(key).or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        list.push(json!(text));
    }
    Ok(())
}

/// core/v1 Service: metadata = 1, spec = 2, status = 3 (server-owned:
/// ignored, as the JSON path ignores it on create).
pub(super) fn service(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut object = json!({"apiVersion": "v1", "kind": "Service", "metadata": {}});
    fields(raw, |number, field| {
        match number {
            1 => object["metadata"] = object_meta(bytes(field)?)?,
            2 => object["spec"] = spec(bytes(field)?)?,
            3 => {}
            other => unsupported("Service", other, &field)?,
        }
        Ok(())
    })?;
    Ok(object)
}

/// ServiceSpec: ports = 1, selector = 2, clusterIP = 3, type = 4,
/// externalIPs = 5, sessionAffinity = 7, loadBalancerIP = 8,
/// loadBalancerSourceRanges = 9, externalName = 10, externalTrafficPolicy =
/// 11, healthCheckNodePort = 12, publishNotReadyAddresses = 13,
/// sessionAffinityConfig = 14, ipFamilyPolicy = 17, clusterIPs = 18,
/// ipFamilies = 19, allocateLoadBalancerNodePorts = 20, loadBalancerClass =
/// 21, internalTrafficPolicy = 22, trafficDistribution = 23 (17 and 20 on
/// are pointers in Go: written only when set, and then meant as written).
fn spec(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut spec = Map::new();
    let (mut ports, mut selector) = (Vec::new(), Map::new());
    fields(raw, |number, field| {
        match number {
            1 => ports.push(port(bytes(field)?)?),
            2 => {
                let (key, value) = map_entry(bytes(field)?)?;
                selector.insert(key, json!(utf8(value)?));
            }
            3 => put_text(&mut spec, "clusterIP", field)?,
            4 => put_text(&mut spec, "type", field)?,
            5 => push_text(&mut spec, "externalIPs", field)?,
            7 => put_text(&mut spec, "sessionAffinity", field)?,
            8 => put_text(&mut spec, "loadBalancerIP", field)?,
            9 => push_text(&mut spec, "loadBalancerSourceRanges", field)?,
            10 => put_text(&mut spec, "externalName", field)?,
            11 => put_text(&mut spec, "externalTrafficPolicy", field)?,
            12 => {
                let port = int32(field)?;
                if port != 0 {
                    spec.insert("healthCheckNodePort".into(), json!(port));
                }
            }
            13 => {
                if int32(field)? != 0 {
                    spec.insert("publishNotReadyAddresses".into(), json!(true));
                }
            }
            14 => {
                spec.insert("sessionAffinityConfig".into(), session_affinity_config(bytes(field)?)?);
            }
            17 => drop(spec.insert("ipFamilyPolicy".into(), json!(string(field)?))),
            18 => push_text(&mut spec, "clusterIPs", field)?,
            19 => push_text(&mut spec, "ipFamilies", field)?,
            20 => drop(spec.insert("allocateLoadBalancerNodePorts".into(), json!(int32(field)? != 0))),
            21 => drop(spec.insert("loadBalancerClass".into(), json!(string(field)?))),
            22 => drop(spec.insert("internalTrafficPolicy".into(), json!(string(field)?))),
            23 => drop(spec.insert("trafficDistribution".into(), json!(string(field)?))),
            other => unsupported("ServiceSpec", other, &field)?,
        }
        Ok(())
    })?;
    if !ports.is_empty() {
        spec.insert("ports".into(), Value::Array(ports));
    }
    if !selector.is_empty() {
        spec.insert("selector".into(), Value::Object(selector));
    }
    Ok(Value::Object(spec))
}

/// ServicePort: name = 1, protocol = 2, port = 3, targetPort = 4
/// (IntOrString {type = 1, intVal = 2, strVal = 3}), nodePort = 5,
/// appProtocol = 6 (a pointer).
fn port(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut port = Map::new();
    fields(raw, |number, field| {
        match number {
            1 => put_text(&mut port, "name", field)?,
            2 => put_text(&mut port, "protocol", field)?,
            3 => drop(port.insert("port".into(), json!(int32(field)?))),
            4 => {
                if let Some(target) = int_or_string(bytes(field)?)? {
                    port.insert("targetPort".into(), target);
                }
            }
            5 => {
                let node_port = int32(field)?;
                if node_port != 0 {
                    port.insert("nodePort".into(), json!(node_port));
                }
            }
            6 => drop(port.insert("appProtocol".into(), json!(string(field)?))),
            other => unsupported("ServicePort", other, &field)?,
        }
        Ok(())
    })?;
    Ok(Value::Object(port))
}

/// An IntOrString; `None` when it holds the zero value (unset).
fn int_or_string(raw: &[u8]) -> Result<Option<Value>, ProtobufError> {
    let (mut is_string, mut int, mut text) = (false, 0, String::new());
    fields(raw, |number, field| {
        match number {
            1 => is_string = int32(field)? == 1,
            2 => int = int32(field)?,
            3 => text = string(field)?,
            other => unsupported("IntOrString", other, &field)?,
        }
        Ok(())
    })?;
    Ok(match is_string {
        true => Some(json!(text)).filter(|_| !text.is_empty()),
        false => Some(json!(int)).filter(|_| int != 0),
    })
}

/// SessionAffinityConfig {clientIP = 1 {timeoutSeconds = 1 (a pointer)}}.
fn session_affinity_config(raw: &[u8]) -> Result<Value, ProtobufError> {
    let mut config = json!({});
    fields(raw, |number, field| {
        match number {
            1 => {
                let mut client_ip = json!({});
                fields(bytes(field)?, |n, f| {
                    match n {
                        1 => client_ip["timeoutSeconds"] = json!(int32(f)?),
                        other => unsupported("ClientIPConfig", other, &f)?,
                    }
                    Ok(())
                })?;
                config["clientIP"] = client_ip;
            }
            other => unsupported("SessionAffinityConfig", other, &field)?,
        }
        Ok(())
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::*;

    /// What kubectl 1.32 sent for `kubectl create service clusterip my-svc --tcp=80:8080`.
    const KUBECTL_CLUSTER_IP: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0d, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x07, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63,
        0x65, 0x12, 0x72, 0x0a, 0x25, 0x0a, 0x06, 0x6d, 0x79, 0x2d, 0x73, 0x76, 0x63, 0x12, 0x00, 0x1a, 0x00, 0x22,
        0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x5a, 0x0d, 0x0a, 0x03, 0x61, 0x70, 0x70, 0x12, 0x06,
        0x6d, 0x79, 0x2d, 0x73, 0x76, 0x63, 0x12, 0x45, 0x0a, 0x1b, 0x0a, 0x07, 0x38, 0x30, 0x2d, 0x38, 0x30, 0x38,
        0x30, 0x12, 0x03, 0x54, 0x43, 0x50, 0x18, 0x50, 0x22, 0x07, 0x08, 0x00, 0x10, 0x90, 0x3f, 0x1a, 0x00, 0x28,
        0x00, 0x12, 0x0d, 0x0a, 0x03, 0x61, 0x70, 0x70, 0x12, 0x06, 0x6d, 0x79, 0x2d, 0x73, 0x76, 0x63, 0x1a, 0x00,
        0x22, 0x09, 0x43, 0x6c, 0x75, 0x73, 0x74, 0x65, 0x72, 0x49, 0x50, 0x3a, 0x00, 0x42, 0x00, 0x52, 0x00, 0x5a,
        0x00, 0x60, 0x00, 0x68, 0x00, 0x1a, 0x02, 0x0a, 0x00, 0x1a, 0x00, 0x22, 0x00,
    ];

    /// `kubectl create service nodeport np --tcp=5678:8080 --node-port=30080`.
    const KUBECTL_NODE_PORT: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0d, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x07, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63,
        0x65, 0x12, 0x6a, 0x0a, 0x1d, 0x0a, 0x02, 0x6e, 0x70, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32,
        0x00, 0x38, 0x00, 0x42, 0x00, 0x5a, 0x09, 0x0a, 0x03, 0x61, 0x70, 0x70, 0x12, 0x02, 0x6e, 0x70, 0x12, 0x45,
        0x0a, 0x20, 0x0a, 0x09, 0x35, 0x36, 0x37, 0x38, 0x2d, 0x38, 0x30, 0x38, 0x30, 0x12, 0x03, 0x54, 0x43, 0x50,
        0x18, 0xae, 0x2c, 0x22, 0x07, 0x08, 0x00, 0x10, 0x90, 0x3f, 0x1a, 0x00, 0x28, 0x80, 0xeb, 0x01, 0x12, 0x09,
        0x0a, 0x03, 0x61, 0x70, 0x70, 0x12, 0x02, 0x6e, 0x70, 0x1a, 0x00, 0x22, 0x08, 0x4e, 0x6f, 0x64, 0x65, 0x50,
        0x6f, 0x72, 0x74, 0x3a, 0x00, 0x42, 0x00, 0x52, 0x00, 0x5a, 0x00, 0x60, 0x00, 0x68, 0x00, 0x1a, 0x02, 0x0a,
        0x00, 0x1a, 0x00, 0x22, 0x00,
    ];

    /// `kubectl create service loadbalancer lb --tcp=443:https` (a named target port).
    const KUBECTL_LOAD_BALANCER: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0d, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x07, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63,
        0x65, 0x12, 0x70, 0x0a, 0x1d, 0x0a, 0x02, 0x6c, 0x62, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32,
        0x00, 0x38, 0x00, 0x42, 0x00, 0x5a, 0x09, 0x0a, 0x03, 0x61, 0x70, 0x70, 0x12, 0x02, 0x6c, 0x62, 0x12, 0x4b,
        0x0a, 0x22, 0x0a, 0x09, 0x34, 0x34, 0x33, 0x2d, 0x68, 0x74, 0x74, 0x70, 0x73, 0x12, 0x03, 0x54, 0x43, 0x50,
        0x18, 0xbb, 0x03, 0x22, 0x0b, 0x08, 0x01, 0x10, 0x00, 0x1a, 0x05, 0x68, 0x74, 0x74, 0x70, 0x73, 0x28, 0x00,
        0x12, 0x09, 0x0a, 0x03, 0x61, 0x70, 0x70, 0x12, 0x02, 0x6c, 0x62, 0x1a, 0x00, 0x22, 0x0c, 0x4c, 0x6f, 0x61,
        0x64, 0x42, 0x61, 0x6c, 0x61, 0x6e, 0x63, 0x65, 0x72, 0x3a, 0x00, 0x42, 0x00, 0x52, 0x00, 0x5a, 0x00, 0x60,
        0x00, 0x68, 0x00, 0x1a, 0x02, 0x0a, 0x00, 0x1a, 0x00, 0x22, 0x00,
    ];

    #[test]
    fn kubectls_services_decode() {
        assert_eq!(
            decode(KUBECTL_CLUSTER_IP).unwrap(),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "my-svc", "labels": {"app": "my-svc"}},
                   "spec": {"type": "ClusterIP", "selector": {"app": "my-svc"},
                            "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}]}})
        );
        let node_port = decode(KUBECTL_NODE_PORT).unwrap();
        assert_eq!(
            node_port["spec"]["ports"],
            json!([{"name": "5678-8080", "protocol": "TCP", "port": 5678, "targetPort": 8080, "nodePort": 30080}])
        );
        let balancer = decode(KUBECTL_LOAD_BALANCER).unwrap();
        assert_eq!(balancer["spec"]["ports"][0]["targetPort"], "https");
        assert_eq!(balancer["spec"]["type"], "LoadBalancer");
    }

    #[test]
    fn pointer_fields_mean_what_they_hold() {
        // spec {allocateLoadBalancerNodePorts = false, ipFamilyPolicy = "SingleStack", healthCheckNodePort = 0}
        // (keys of fields over 15 take two bytes: field 20 varint is 0xa0 0x01)
        let mut spec_bytes = vec![0xa0, 0x01, 0, 0x8a, 0x01, 11];
        spec_bytes.extend_from_slice(b"SingleStack");
        spec_bytes.extend([12 << 3, 0]);
        let spec = spec(&spec_bytes).unwrap();
        assert_eq!(spec, json!({"allocateLoadBalancerNodePorts": false, "ipFamilyPolicy": "SingleStack"}));
        assert!(matches!(spec_unknown(), Err(ProtobufError::UnsupportedField { message: "ServiceSpec", field: 15 })));
    }

    /// As kubectl sends it: the Service is created with the server's defaults.
    #[tokio::test]
    async fn kubectl_create_service_clusterip_is_served() {
        use http_body_util::BodyExt;
        let dir = tempfile::tempdir().unwrap();
        let api = crate::apiserver::embedded::EmbeddedApi::open(dir.path()).unwrap();
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/api/v1/namespaces/default/services?fieldManager=kubectl-create&fieldValidation=Ignore")
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(kube::client::Body::from(KUBECTL_CLUSTER_IP.to_vec()))
            .unwrap();
        let response = api.client().send(request).await.unwrap();
        let code = response.status();
        let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(code, 201, "{body}");
        assert!(body["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."), "{body}");
        assert_eq!(
            body["spec"]["ports"][0],
            json!({"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080})
        );
    }

    fn spec_unknown() -> Result<Value, ProtobufError> {
        spec(&[15 << 3 | 2, 1, b'x'])
    }
}
