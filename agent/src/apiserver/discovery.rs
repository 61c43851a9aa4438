//! Discovery: what kubectl and kube-rs ask first (`/version`, `/api`, `/apis`,
//! per group-version resource lists with verbs, short names and categories).

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::resources::{Resource, RESOURCES, VERBS};

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

pub async fn core_versions(headers: HeaderMap) -> Response {
    if let Some(version) = aggregated::wanted(&headers) {
        return aggregated::response(version, true);
    }
    Json(
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
    )
    .into_response()
}

fn group_entry(group: &str) -> Value {
    let version = RESOURCES.iter().find(|r| r.group == group).map(|r| r.version).unwrap_or("v1");
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv], "preferredVersion": gv})
}

pub async fn groups(headers: HeaderMap) -> Response {
    if let Some(version) = aggregated::wanted(&headers) {
        return aggregated::response(version, false);
    }
    let groups: Vec<Value> = Resource::groups().into_iter().map(group_entry).collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})).into_response()
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

/// Aggregated discovery (`apidiscovery.k8s.io`), which kubectl 1.30+ asks for
/// first (v2; 1.27-1.29 ask for v2beta1, same shape): every group, version and
/// resource in one response, instead of a request per group version.
mod aggregated {
    use axum::http::{header, HeaderMap};
    use axum::response::{IntoResponse, Response};
    use serde_json::{json, Value};

    use super::super::resources::{Resource, RESOURCES, VERBS};

    /// The discovery version the client accepts, newest first.
    pub fn wanted(headers: &HeaderMap) -> Option<&'static str> {
        let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
        let offers = |version: &str| {
            accept.split(',').any(|media| {
                let params: Vec<&str> = media.split(';').map(str::trim).collect();
                params.contains(&"g=apidiscovery.k8s.io")
                    && params.contains(&format!("v={version}").as_str())
                    && params.contains(&"as=APIGroupDiscoveryList")
            })
        };
        ["v2", "v2beta1"].into_iter().find(|v| offers(v))
    }

    fn resource_entry(r: &Resource) -> Value {
        let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let mut entry = json!({
            "resource": r.plural,
            "responseKind": kind,
            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": r.singular,
            "verbs": VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        });
        if r.status_subresource {
            entry["subresources"] =
                json!([{"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}]);
        }
        entry
    }

    fn group_entry(group: &str) -> Value {
        let resources: Vec<Value> = RESOURCES.iter().filter(|r| r.group == group).map(resource_entry).collect();
        let version = RESOURCES.iter().find(|r| r.group == group).map(|r| r.version).unwrap_or("v1");
        let metadata = if group.is_empty() { json!({"creationTimestamp": null}) } else { json!({"name": group}) };
        json!({"metadata": metadata, "versions": [{"version": version, "resources": resources, "freshness": "Current"}]})
    }

    /// The document for `/api` (`core == true`) or `/apis`.
    pub fn response(version: &str, core: bool) -> Response {
        let items: Vec<Value> =
            if core { vec![group_entry("")] } else { Resource::groups().into_iter().map(group_entry).collect() };
        let body = json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": format!("apidiscovery.k8s.io/{version}"),
            "metadata": {},
            "items": items,
        });
        let content_type = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
        ([(header::CONTENT_TYPE, content_type), (header::VARY, "Accept".to_string())], body.to_string()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("accept", value.parse().unwrap());
        headers
    }

    #[test]
    fn aggregated_discovery_is_offered_only_when_asked_for() {
        let kubectl_1_33 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated::wanted(&accept(kubectl_1_33)), Some("v2"));
        let kubectl_1_27 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated::wanted(&accept(kubectl_1_27)), Some("v2beta1"));
        assert_eq!(aggregated::wanted(&accept("application/json, */*")), None);
        assert_eq!(aggregated::wanted(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn aggregated_groups_list_every_resource_with_its_scope_and_status() {
        let response = aggregated::response("v2", false);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(content_type, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let list: Value = serde_json::from_slice(&bytes).unwrap();
        let kubevirt =
            list["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "kubevirt.io").unwrap();
        let vms = &kubevirt["versions"][0]["resources"][0];
        assert_eq!(vms["resource"], "virtualmachines");
        assert_eq!(vms["scope"], "Namespaced");
        assert_eq!(vms["shortNames"], json!(["vm", "vms"]));
        assert_eq!(vms["subresources"][0]["subresource"], "status");
    }
}
