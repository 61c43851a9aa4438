//! Discovery: what kubectl and kube-rs ask first (`/version`, `/api`, `/apis`,
//! per group-version resource lists with verbs, short names and categories).

use axum::extract::Path;
use axum::Json;
use serde_json::{json, Value};

use super::resources::{Resource, RESOURCES, VERBS};
use super::status::ApiError;

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0-kvmlet-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64"
    }))
}

pub async fn core_versions() -> Json<Value> {
    Json(
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
    )
}

fn group_entry(group: &str) -> Value {
    let version = RESOURCES.iter().find(|r| r.group == group).map(|r| r.version).unwrap_or("v1");
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv], "preferredVersion": gv})
}

pub async fn groups() -> Json<Value> {
    let groups: Vec<Value> = Resource::groups().into_iter().map(group_entry).collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

pub async fn group(Path(group): Path<String>) -> Result<Json<Value>, ApiError> {
    if !Resource::groups().contains(&group.as_str()) {
        return Err(ApiError::not_found("group", &group));
    }
    let mut entry = group_entry(&group);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Ok(Json(entry))
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.status_subresource {
            resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

pub async fn core_resources() -> Json<Value> {
    Json(resource_list("", "v1").expect("the core group has resources"))
}

pub async fn group_resources(Path((group, version)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    resource_list(&group, &version)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("group version", &format!("{group}/{version}")))
}
