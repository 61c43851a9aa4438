//! DELETE and deletecollection: finalizers holding an object, propagation
//! policies (Background, Foreground, Orphan) and preconditions.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{get, now, parse_body, revision_of, selectors, write_latest, Target};
use crate::apiserver::error::ApiError;
use crate::apiserver::gc;
use crate::apiserver::store::{Scope, Store};

/// DELETE of one object, with its preconditions (resourceVersion, uid).
pub(super) fn delete(
    store: &Store,
    target: &Target,
    name: &str,
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let options: Value = if body.is_empty() { json!({}) } else { parse_body(body)? };
    let pinned: Option<u64> = options["preconditions"]["resourceVersion"].as_str().and_then(|v| v.parse().ok());
    let uid = options["preconditions"]["uid"].as_str().filter(|u| !u.is_empty());
    write_latest(store, target, name, pinned.is_some(), |current| {
        if let Some(uid) = uid.filter(|&u| current["metadata"]["uid"].as_str() != Some(u)) {
            let found = current["metadata"]["uid"].as_str().unwrap_or_default();
            let message = format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {found}");
            return Err(ApiError { message, ..ApiError::conflict(&target.what(), name) });
        }
        let precondition = pinned.or(revision_of(&current));
        delete_read(store, target, name, current, &options, query, precondition)
    })
}

/// Deletes the object as read: marked for deletion while finalizers hold it,
/// else gone; `precondition` is the revision it was read at (or the client's).
fn delete_read(
    store: &Store,
    target: &Target,
    name: &str,
    mut current: Value,
    options: &Value,
    query: &HashMap<String, String>,
    precondition: Option<u64>,
) -> Result<Response, ApiError> {
    let policy = options["propagationPolicy"]
        .as_str()
        .or(query.get("propagationPolicy").map(String::as_str))
        .unwrap_or("Background");
    match policy {
        "Background" | "Orphan" => {}
        "Foreground" => {
            // The garbage collector deletes the dependents, then this finalizer.
            let finalizers = current["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            if !finalizers.iter().any(|f| f == gc::FOREGROUND_FINALIZER) {
                let mut with = finalizers;
                with.push(json!(gc::FOREGROUND_FINALIZER));
                current["metadata"]["finalizers"] = Value::Array(with);
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown propagationPolicy {other}: use Background, Foreground or Orphan"
            )))
        }
    }
    let orphan = |owner: &Value| {
        if let (Some(namespace), Some(uid)) = (&target.namespace, owner["metadata"]["uid"].as_str()) {
            gc::orphan_dependents(store, namespace, uid);
        }
    };
    let has_finalizers = current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if current["metadata"].get("deletionTimestamp").is_some() {
            if policy == "Orphan" {
                orphan(&current);
            }
            return Ok(Json(current).into_response());
        }
        let mut marked = current.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        let grace = options["gracePeriodSeconds"].as_i64().unwrap_or(0);
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        // As in Kubernetes, an orphaning delete is announced on the owner
        // (the `orphan` finalizer) before its dependents lose their owner
        // reference, so a controller watching the owner neither deletes them
        // with it nor adopts them back in between.
        if policy == "Orphan" {
            if let Some(list) = marked["metadata"]["finalizers"].as_array_mut() {
                list.push(json!(ORPHAN_FINALIZER));
            }
        }
        let stored = store
            .update(&target.key(name), marked, precondition)
            .map_err(|e| ApiError::from_store(e, &target.what(), name))?;
        if policy != "Orphan" {
            return Ok((StatusCode::ACCEPTED, Json(stored)).into_response());
        }
        orphan(&stored);
        return release_orphan_finalizer(store, target, name);
    }
    if policy == "Orphan" {
        orphan(&current);
    }
    let gone =
        store.delete(&target.key(name), precondition).map_err(|e| ApiError::from_store(e, &target.what(), name))?;
    Ok(Json(gone).into_response())
}

/// Kubernetes' finalizer for an owner whose dependents are being orphaned.
const ORPHAN_FINALIZER: &str = "orphan";

/// The dependents are orphaned: the `orphan` finalizer goes, and with it
/// the object if no other finalizer holds it. Retried on a conflict (a
/// controller may be writing the object at the same moment).
fn release_orphan_finalizer(store: &Store, target: &Target, name: &str) -> Result<Response, ApiError> {
    loop {
        let mut current = get(store, target, name)?;
        let revision = current["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok());
        let Some(list) = current["metadata"]["finalizers"].as_array_mut() else {
            return Ok((StatusCode::ACCEPTED, Json(current)).into_response());
        };
        list.retain(|f| f != ORPHAN_FINALIZER);
        let result = if list.is_empty() {
            store.delete(&target.key(name), revision).map(|gone| (StatusCode::OK, gone))
        } else {
            store.update(&target.key(name), current, revision).map(|kept| (StatusCode::ACCEPTED, kept))
        };
        match result.map_err(|e| ApiError::from_store(e, &target.what(), name)) {
            Ok((code, object)) => return Ok((code, Json(object)).into_response()),
            Err(error) if error.code == StatusCode::CONFLICT => continue,
            Err(error) => return Err(error),
        }
    }
}

/// `deletecollection`: each object the selectors match is deleted as by
/// its own DELETE (finalizers, propagation); the answer lists them as they
/// were before.
pub(super) fn delete_collection(
    store: &Store,
    target: &Target,
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let selectors = selectors(query)?;
    let scope = Scope { resource: target.resource.store_name(), namespace: target.namespace.clone() };
    let (items, revision) = store.list(&scope).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut deleted = Vec::new();
    for (_, object) in items {
        let selected = selectors.matches(&object);
        let Some(name) = object["metadata"]["name"].as_str().filter(|_| selected) else { continue };
        let one = Target {
            resource: target.resource,
            events_view: target.events_view,
            namespace: object["metadata"]["namespace"].as_str().map(str::to_string),
            name: Some(name.to_string()),
            subresource: None,
        };
        match delete(store, &one, name, body, query) {
            Ok(_) => deleted.push(object),
            // Deleted meanwhile by someone else: nothing left to do for it.
            Err(error) if error.code == StatusCode::NOT_FOUND => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Json(json!({
        "kind": format!("{}List", target.resource.kind),
        "apiVersion": target.resource.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": deleted,
    }))
    .into_response())
}
