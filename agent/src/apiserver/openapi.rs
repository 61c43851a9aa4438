//! OpenAPI v3, as much as clients need: kubectl reads it to learn that the
//! server validates fields itself (the `fieldValidation` parameter), then
//! sends `fieldValidation=Strict`, and the server rejects unknown fields by
//! walking the object against the same schemas the CRDs are generated from.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::resources::{Resource, RESOURCES};

/// The schema of a resource's objects: the CRD schema for kubevirt.io
/// kinds, Kubernetes' own for the kinds kvmlet acts on (Services,
/// EndpointSlices: an unknown field there would be silently dropped),
/// anything goes for the other core kinds kvmlet stores for clients.
pub fn schema(resource: &Resource) -> Value {
    static SERVICE: OnceLock<Value> = OnceLock::new();
    static ENDPOINT_SLICE: OnceLock<Value> = OnceLock::new();
    match (resource.group, resource.kind) {
        (proto::API_GROUP, kind) => proto::object_schema(kind).unwrap_or_else(anything),
        ("", "Service") => SERVICE.get_or_init(typed_schema::<k8s_openapi::api::core::v1::Service>).clone(),
        ("discovery.k8s.io", "EndpointSlice") => {
            ENDPOINT_SLICE.get_or_init(typed_schema::<k8s_openapi::api::discovery::v1::EndpointSlice>).clone()
        }
        _ => anything(),
    }
}

fn anything() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// A k8s-openapi type's schema with every subschema inlined (no `$ref`s,
/// which `unknown_fields` does not follow).
fn typed_schema<T: schemars::JsonSchema>() -> Value {
    let generator =
        schemars::generate::SchemaSettings::openapi3().with(|s| s.inline_subschemas = true).into_generator();
    serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or_else(|_| anything())
}

fn gvk(resource: &Resource) -> Value {
    json!([{"group": resource.group, "version": resource.version, "kind": resource.kind}])
}

fn path_prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub async fn root() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    let mut seen = Vec::new();
    for r in RESOURCES {
        let prefix = path_prefix(r.group, r.version);
        if !seen.contains(&prefix) {
            paths.insert(prefix.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{prefix}")}));
            seen.push(prefix);
        }
    }
    Json(json!({"paths": paths}))
}

fn document(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if resources.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let field_validation =
        json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for r in resources {
        let schema_name =
            format!("{}.{}.{}", if r.group.is_empty() { "io.k8s.api.core" } else { r.group }, r.version, r.kind);
        let mut schema = schema(r);
        schema["x-kubernetes-group-version-kind"] = gvk(r);
        schemas.insert(schema_name.clone(), schema);
        let scope = if r.namespaced { "namespaces/{namespace}/" } else { "" };
        let reference = json!({"$ref": format!("#/components/schemas/{schema_name}")});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk(r)[0],
                "parameters": [field_validation],
                "requestBody": {"content": {"application/json": {"schema": reference}}},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}}
            })
        };
        let base = format!("/{}/{scope}{}", path_prefix(r.group, r.version), r.plural);
        paths.insert(base.clone(), json!({"post": operation("post")}));
        paths.insert(format!("{base}/{{name}}"), json!({"put": operation("put"), "patch": operation("patch")}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "kvmlet", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
}

pub async fn core_document() -> Json<Value> {
    Json(document("", "v1").expect("the core group has resources"))
}

pub async fn group_document(Path((group, version)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    document(&group, &version)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("group version", &format!("{group}/{version}")))
}

/// Fields of `value` that `schema` does not define, as dotted paths.
pub fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                // Every object has these; CRD schemas leave them to the server.
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(child_schema), _) => unknown_fields(child_schema, child, &child_path, out),
                    (None, Some(Value::Object(additional))) => {
                        unknown_fields(&Value::Object(additional.clone()), child, &child_path, out)
                    }
                    (None, Some(Value::Bool(true))) => {}
                    // An object schema without properties (metadata) is not checked here.
                    (None, _) if properties.is_none() => {}
                    (None, _) => out.push(child_path),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_endpoint_slices_know_their_fields() {
        let service = Resource::find("", "v1", "services").unwrap();
        let object = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"selector": {"a": "b"}, "ports": [{"port": 80, "targetPort": "http", "portName": "x"}],
                     "clusterIp": "10.96.0.1"}});
        let mut unknown = Vec::new();
        unknown_fields(&schema(service), &object, "", &mut unknown);
        assert_eq!(unknown, ["spec.clusterIp", "spec.ports[0].portName"]);
        let slices = Resource::find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        let object = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "ready": true}]});
        let mut unknown = Vec::new();
        unknown_fields(&schema(slices), &object, "", &mut unknown);
        assert_eq!(unknown, ["endpoints[0].ready"]);
    }

    #[test]
    fn unknown_fields_are_found_with_their_path() {
        let vm = Resource::find("kubevirt.io", "v1", "virtualmachines").unwrap();
        let object = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "anything": 1},
            "spec": {"running": false, "bogus": 1, "template": {"spec": {"domain": {"devices": {"disks": [{"name": "d", "typo": true}]}}}}}
        });
        let mut out = Vec::new();
        unknown_fields(&schema(vm), &object, "", &mut out);
        assert_eq!(out, ["spec.bogus", "spec.template.spec.domain.devices.disks[0].typo"]);
        let manifest = vm_cirros();
        let mut out = Vec::new();
        unknown_fields(&schema(vm), &manifest, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    /// examples/vm-cirros.yaml as JSON (the agent has no YAML parser).
    fn vm_cirros() -> Value {
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"labels": {"kubevirt.io/vm": "vm-cirros"}, "name": "vm-cirros"},
            "spec": {"running": false, "template": {"metadata": {"labels": {"kubevirt.io/vm": "vm-cirros"}}, "spec": {
                "domain": {"devices": {"disks": [{"disk": {"bus": "virtio"}, "name": "containerdisk"}]},
                           "machine": {"type": ""}, "resources": {"requests": {"memory": "64M"}}},
                "terminationGracePeriodSeconds": 0,
                "volumes": [{"containerDisk": {"image": "kubevirt/cirros-container-disk-demo:latest"}, "name": "containerdisk"},
                            {"cloudInitNoCloud": {"userDataBase64": "IyEv"}, "name": "cloudinitdisk"}]}}}
        })
    }
}
