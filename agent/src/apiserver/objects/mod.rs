//! CRUD on objects: the semantics clients rely on (uid, creationTimestamp,
//! generation bumped on spec changes only, resourceVersion preconditions,
//! generateName, status subresources, finalizers holding deletion, label and
//! field selectors).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::admission;
use super::error::ApiError;
use super::events;
use super::protobuf;
use super::resources::{Resource, RESOURCES};
use super::selectors::Selectors;
use super::state::ApiState;
use super::store::{ObjectKey, Scope, Store};
use super::table;
use super::validation;
use super::watch::{self, WatchRequest};

mod apply;
mod body;
mod checks;
mod deletion;
mod patching;
use apply::{server_side_apply, APPLY_PATCH};
pub use body::MAX_REQUEST_BODY;
use body::{decode_protobuf, request_body};
use checks::{apply_defaults, builtin_rules, check_fields, check_metadata, initial_status};
use deletion::{delete, delete_collection};
use patching::{apply_patch, patch_pins_resource_version, PatchLock, PATCH_ATTEMPTS};

/// The state handlers share (the store, and the Service allocator beside it).
pub type Shared = Arc<ApiState>;

/// What a request path names.
#[derive(Debug)]
struct Target {
    /// The stored resource (core Events for events.k8s.io requests).
    resource: &'static Resource,
    /// Set when the request is for events.k8s.io's view of core Events.
    events_view: bool,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn parse(group: &str, version: &str, rest: &str) -> Result<Target, ApiError> {
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let lookup = |plural: &str| {
            Resource::find(group, version, plural).ok_or_else(|| ApiError::not_found("resource", plural))
        };
        let namespaced_collection = segments.len() >= 3
            && segments[0] == "namespaces"
            && RESOURCES.iter().any(|r| r.group == group && r.version == version && r.plural == segments[2]);
        let (resource, namespace, rest) = if namespaced_collection {
            (lookup(segments[2])?, Some(segments[1].to_string()), &segments[3..])
        } else {
            (lookup(segments.first().copied().unwrap_or_default())?, None, segments.get(1..).unwrap_or_default())
        };
        if resource.namespaced == namespace.is_none() && !rest.is_empty() {
            return Err(ApiError::not_found("resource", resource.plural));
        }
        // NAME[/status]: anything further (a name with '/' in it) names nothing.
        let served_subresource = |s: &str| s == "status" && resource.status_subresource;
        if rest.len() > 2 || rest.get(1).is_some_and(|s| !served_subresource(s)) {
            return Err(ApiError::not_found("resource", &rest.join("/")));
        }
        for segment in namespace.iter().map(String::as_str).chain(rest.first().copied()) {
            if let Some(problem) = validation::path_name(segment) {
                return Err(ApiError::bad_request(format!("invalid resource name {segment:?}: {problem}")));
            }
        }
        let events_view = events::is_view(resource);
        let resource = if events_view { lookup_core_events()? } else { resource };
        Ok(Target {
            resource,
            events_view,
            namespace,
            name: rest.first().map(|s| s.to_string()),
            subresource: rest.get(1).map(|s| s.to_string()),
        })
    }

    fn key(&self, name: &str) -> ObjectKey {
        ObjectKey::new(&self.resource.store_name(), self.namespace.as_deref(), name)
    }

    fn what(&self) -> String {
        if self.resource.group.is_empty() {
            self.resource.plural.to_string()
        } else {
            format!("{}.{}", self.resource.plural, self.resource.group)
        }
    }
}

fn lookup_core_events() -> Result<&'static Resource, ApiError> {
    Resource::find("", "v1", "events").ok_or_else(|| ApiError::internal("core events are not served"))
}

fn now() -> String {
    crate::clock::now_rfc3339()
}

/// Longest generateName prefix kept (253 minus the 5-character suffix).
const MAX_GENERATED_PREFIX: usize = 248;

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..5].to_string()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// The request's selectors; a malformed one is a 400 with apimachinery's message.
fn selectors(query: &HashMap<String, String>) -> Result<Selectors, ApiError> {
    Selectors::from_query(query).map_err(ApiError::bad_request)
}

fn list(store: &Store, target: &Target, query: &HashMap<String, String>, as_table: bool) -> Result<Response, ApiError> {
    let selectors = selectors(query)?;
    let scope = Scope { resource: target.resource.store_name(), namespace: target.namespace.clone() };
    let (items, revision) = store.list(&scope).map_err(|e| ApiError::internal(e.to_string()))?;
    let items: Vec<Value> = items.into_iter().map(|(_, object)| object).filter(|o| selectors.matches(o)).collect();
    if as_table {
        return Ok(Json(table::table(target.resource, &items, revision)).into_response());
    }
    Ok(Json(json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    }))
    .into_response())
}

fn get(store: &Store, target: &Target, name: &str) -> Result<Value, ApiError> {
    store
        .get(&target.key(name))
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(&target.what(), name))
}

fn namespace_exists(store: &Store, namespace: &str) -> Result<(), ApiError> {
    let key = ObjectKey::new("core/namespaces", None, namespace);
    match store.get(&key) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::not_found("namespaces", namespace)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

fn create(state: &ApiState, target: &Target, mut object: Value, strict: bool) -> Result<Response, ApiError> {
    check_fields(target, &object, strict)?;
    let resource = target.resource;
    if let Some(namespace) = &target.namespace {
        namespace_exists(state, namespace)?;
    }
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::bad_request("metadata is required"))?;
    let name = match (meta.get("name").and_then(Value::as_str), meta.get("generateName").and_then(Value::as_str)) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) => {
            // As Kubernetes: the prefix is cut so the name stays within 253 characters.
            let prefix: String = prefix.chars().take(MAX_GENERATED_PREFIX).collect();
            format!("{prefix}{}", random_suffix())
        }
        _ => {
            return Err(ApiError::invalid_in(
                resource.group,
                resource.kind,
                "",
                vec![("metadata.name".into(), "Required value: name or generateName is required".into())],
            ))
        }
    };
    if let (Some(body_ns), Some(url_ns)) = (meta.get("namespace").and_then(Value::as_str), &target.namespace) {
        if body_ns != url_ns {
            return Err(ApiError::bad_request(format!(
                "the namespace of the object ({body_ns}) does not match the namespace on the request ({url_ns})"
            )));
        }
    }
    meta.insert("name".into(), json!(name));
    if let Some(namespace) = &target.namespace {
        meta.insert("namespace".into(), json!(namespace));
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.insert("generation".into(), json!(1));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    object["apiVersion"] = json!(resource.api_version());
    object["kind"] = json!(resource.kind);
    if resource.status_subresource {
        // Status is written by controllers through /status, never on create:
        // what the client sent is replaced by the server's default.
        let object = object.as_object_mut().expect("an object");
        object.remove("status");
        if let Some(status) = initial_status(resource) {
            object.insert("status".into(), status);
        }
    }
    check_metadata(resource, &name, &object, None)?;
    apply_defaults(resource, &mut object);
    admission::mutate(resource, &mut object);
    admission::check(resource, &name, &object, None)?;
    // Held until the object is stored: what it was allocated is taken then.
    let _allocation = builtin_rules(state, target, &name, &mut object, None)?;
    let stored =
        state.create(&target.key(&name), object).map_err(|e| ApiError::from_store(e, &target.what(), &name))?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

/// Replaces `current` with `new` as PUT/PATCH do: identity fields are kept,
/// status (or everything but status, for /status) is taken from `current`.
fn update(
    state: &ApiState,
    target: &Target,
    name: &str,
    current: Value,
    mut new: Value,
    strict: bool,
) -> Result<Response, ApiError> {
    check_fields(target, &new, strict)?;
    let resource = target.resource;
    // The client's resourceVersion, else the one read: parts of `current`
    // are written back, so a write in between must conflict, not be lost.
    let precondition = revision_of(&new).or(revision_of(&current));
    let status_only = target.subresource.as_deref() == Some("status");
    if resource.status_subresource {
        if status_only {
            let status = new.get("status").cloned();
            new = current.clone();
            match status {
                Some(status) => new["status"] = status,
                None => {
                    new.as_object_mut().expect("an object").remove("status");
                }
            }
        } else {
            match current.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        }
    }
    for field in ["uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"] {
        match current["metadata"].get(field) {
            Some(value) => new["metadata"][field] = value.clone(),
            None => {
                new["metadata"].as_object_mut().map(|m| m.remove(field));
            }
        }
    }
    new["apiVersion"] = json!(resource.api_version());
    new["kind"] = json!(resource.kind);
    if new.get("spec") != current.get("spec") {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(generation);
    }
    check_metadata(resource, name, &new, Some(&current))?;
    apply_defaults(resource, &mut new);
    admission::mutate(resource, &mut new);
    admission::check(resource, name, &new, Some(&current))?;
    // Held until the object is stored: what it was allocated is taken then.
    let _allocation = builtin_rules(state, target, name, &mut new, Some(&current))?;
    // An object being deleted goes away once its last finalizer is removed.
    let finalizers_empty = new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
    if current["metadata"].get("deletionTimestamp").is_some() && finalizers_empty {
        let gone =
            state.delete(&target.key(name), precondition).map_err(|e| ApiError::from_store(e, &target.what(), name))?;
        return Ok(Json(gone).into_response());
    }
    let stored = state
        .update(&target.key(name), new, precondition)
        .map_err(|e| ApiError::from_store(e, &target.what(), name))?;
    Ok(Json(stored).into_response())
}

/// The resourceVersion a stored object was read at.
fn revision_of(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok())
}

/// Runs `write` against the object as it is now, again when a concurrent
/// write wins the race (each write is conditional on the revision it read,
/// so nothing another client wrote in between is overwritten), unless the
/// client pinned a resourceVersion: then the conflict is the client's.
fn write_latest(
    store: &Store,
    target: &Target,
    name: &str,
    client_pinned: bool,
    mut write: impl FnMut(Value) -> Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let lock = PatchLock::new(target.key(name));
    let _turn = lock.hold();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match write(get(store, target, name)?) {
            Err(e) if e.code == StatusCode::CONFLICT && !client_pinned && attempts < PATCH_ATTEMPTS => continue,
            result => return result,
        }
    }
}

async fn watch(store: Shared, target: &Target, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let number = |key: &str| query.get(key).filter(|v| !v.is_empty()).map(|v| v.parse::<u64>());
    let resource_version =
        number("resourceVersion").transpose().map_err(|_| ApiError::bad_request("resourceVersion must be a number"))?;
    let timeout =
        number("timeoutSeconds").transpose().map_err(|_| ApiError::bad_request("timeoutSeconds must be a number"))?;
    let selectors = selectors(query)?;
    if let Some(requested) = resource_version {
        if let Err(current) = watch::wait_for_revision(&store, requested).await {
            return Ok(watch::too_large_resource_version(requested, current));
        }
    }
    let request = WatchRequest {
        resource: target.resource,
        scope: Scope { resource: target.resource.store_name(), namespace: target.namespace.clone() },
        resource_version,
        send_initial_events: query.get("sendInitialEvents").is_some_and(|v| v == "true"),
        bookmarks: query.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
        timeout: timeout.map(std::time::Duration::from_secs),
        present: target.events_view.then_some(events::from_core as fn(Value) -> Value),
        selects: Box::new(move |object| selectors.matches(object)),
    };
    let body = watch::start(store, request);
    Ok(([("content-type", "application/json")], body).into_response())
}

async fn handle(
    store: Shared,
    method: Method,
    target: Target,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if method == Method::GET && target.name.is_none() && query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(store, &target, &query).await;
    }
    // Writes are fsync'ed transactions: keep them off the async workers.
    let strict = query.get("fieldValidation").is_some_and(|v| v.eq_ignore_ascii_case("strict"));
    let as_table = headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(table::wanted);
    // JSON bodies, and protobuf ones of the kinds `protobuf` decodes (kubectl
    // 1.32 on sends Namespaces, Secrets and Services so); other media types get a 415.
    let mut content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let mut body = body;
    if content_type.starts_with(protobuf::MEDIA_TYPE) && !body.is_empty() {
        let object = decode_protobuf(&body, target.resource)?;
        body = Bytes::from(serde_json::to_vec(&object).expect("JSON values serialize"));
        content_type = "application/json";
    }
    let apply = content_type.starts_with(APPLY_PATCH);
    if !body.is_empty() && !content_type.contains("json") && !apply {
        return Err(ApiError {
            code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "UnsupportedMediaType",
            message: format!("the body of the request was in an unknown format - accepted media types include: application/json, application/json-patch+json, application/merge-patch+json (got {content_type})"),
            causes: vec![],
            subject: None,
        });
    }
    let events_view = target.events_view;
    // Bodies of events.k8s.io requests are stored in the core form.
    let parse_stored = move |body: &Bytes| parse_body(body).map(|v| if events_view { events::to_core(v) } else { v });
    let response = tokio::task::spawn_blocking(move || {
        let Some(name) = target.name.clone() else {
            return match method {
                Method::GET => list(&store, &target, &query, as_table),
                Method::POST => create(&store, &target, parse_stored(&body)?, strict),
                Method::DELETE => delete_collection(&store, &target, &body, &query),
                _ => Err(ApiError {
                    code: StatusCode::METHOD_NOT_ALLOWED,
                    reason: "MethodNotAllowed",
                    message: format!("{method} is not allowed on a collection"),
                    causes: vec![],
                    subject: None,
                }),
            };
        };
        match method {
            Method::GET if as_table => {
                let object = get(&store, &target, &name)?;
                let revision = object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
                Ok(Json(table::table(target.resource, &[object], revision)).into_response())
            }
            Method::GET => get(&store, &target, &name).map(|o| Json(o).into_response()),
            Method::PUT => {
                let new = parse_stored(&body)?;
                let pinned = revision_of(&new).is_some();
                write_latest(&store, &target, &name, pinned, |current| {
                    update(&store, &target, &name, current, new.clone(), strict)
                })
            }
            Method::PATCH if apply => server_side_apply(&store, &target, &name, parse_stored(&body)?, &query, strict),
            Method::PATCH => {
                let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let patch_body = parse_body(&body)?;
                // As the real API server does: a patch that names no
                // resourceVersion is re-applied to the newer object when a
                // concurrent write wins the race, instead of failing with 409.
                let pinned = patch_pins_resource_version(content_type, &patch_body);
                write_latest(&store, &target, &name, pinned, |current| {
                    // Patches apply to the object as the client sees it.
                    let shown = if events_view { events::from_core(current.clone()) } else { current.clone() };
                    let patched = apply_patch(&shown, content_type, &patch_body, &target, &name)?;
                    let patched = if events_view { events::to_core(patched) } else { patched };
                    update(&store, &target, &name, current, patched, strict)
                })
            }
            Method::DELETE => delete(&store, &target, &name, &body, &query),
            _ => Err(ApiError {
                code: StatusCode::METHOD_NOT_ALLOWED,
                reason: "MethodNotAllowed",
                message: format!("{method} is not allowed"),
                causes: vec![],
                subject: None,
            }),
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(if events_view { events::present_response(response).await } else { response })
}

pub async fn core(
    State(store): State<Shared>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let target = Target::parse("", "v1", &rest)?;
    handle(store, method, target, query, headers, request_body(body)?).await
}

pub async fn grouped(
    State(store): State<Shared>,
    method: Method,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let target = Target::parse(&group, &version, &rest)?;
    handle(store, method, target, query, headers, request_body(body)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources_namespaces_and_subresources() {
        let t = Target::parse("kubevirt.io", "v1", "namespaces/default/virtualmachines/vm-cirros/status").unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace.as_deref(), t.name.as_deref(), t.subresource.as_deref()),
            ("virtualmachines", Some("default"), Some("vm-cirros"), Some("status"))
        );
        let t = Target::parse("", "v1", "namespaces/default").unwrap();
        assert_eq!((t.resource.plural, t.namespace, t.name.as_deref()), ("namespaces", None, Some("default")));
        let t = Target::parse("kubevirt.io", "v1", "virtualmachines").unwrap();
        assert_eq!((t.namespace, t.name), (None, None), "all namespaces");
        assert!(Target::parse("kubevirt.io", "v1", "widgets").is_err());
    }
}

#[cfg(test)]
mod hardening_tests;

#[cfg(test)]
mod consistency_tests;
