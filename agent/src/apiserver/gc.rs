//! Garbage collection by `ownerReferences`, as `propagationPolicy` asks:
//!
//! - Background (the default): once an owner is gone, its dependents are deleted.
//! - Foreground: the owner carries the `foregroundDeletion` finalizer while its
//!   dependents are deleted; when none is left the finalizer goes, and the owner with it.
//! - Orphan: dependents lose their owner reference before the owner is deleted
//!   (done synchronously by the DELETE handler, see `orphan_dependents`).
//!
//! Dependents with finalizers are marked for deletion and go when their
//! finalizers do, like any other object. Deleting a namespace deletes what
//! is in it the same way.

use serde_json::{json, Value};

use super::objects::Shared;
use super::resources::RESOURCES;
use super::store::{EventType, ObjectKey, Scope, Store};

pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// The store's name for namespaces.
const NAMESPACES: &str = "core/namespaces";

fn uid(object: &Value) -> Option<&str> {
    object["metadata"]["uid"].as_str()
}

fn owned_by(object: &Value, owner_uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(owner_uid)))
}

/// Every stored object in `namespace` (dependents live in their owner's namespace).
fn objects_in(store: &Store, namespace: &str) -> Vec<(ObjectKey, Value)> {
    RESOURCES
        .iter()
        .filter(|r| r.namespaced)
        .flat_map(|r| {
            let scope = Scope { resource: r.store_name(), namespace: Some(namespace.to_string()) };
            store.list(&scope).map(|(items, _)| items).unwrap_or_default()
        })
        .collect()
}

fn dependents(store: &Store, namespace: &str, owner_uid: &str) -> Vec<(ObjectKey, Value)> {
    objects_in(store, namespace).into_iter().filter(|(_, o)| owned_by(o, owner_uid)).collect()
}

/// Deletes an object as a background DELETE would: marked if it has finalizers, else removed.
fn delete(store: &Store, key: &ObjectKey, object: &Value) {
    let has_finalizers = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    let result = if has_finalizers {
        if object["metadata"].get("deletionTimestamp").is_some() {
            return;
        }
        let mut marked = object.clone();
        marked["metadata"]["deletionTimestamp"] = json!(crate::clock::now_rfc3339());
        store.update(key, marked, None).map(|_| ())
    } else {
        store.delete(key, None).map(|_| ())
    };
    if let Err(error) = result {
        tracing::debug!(%error, name = %key.name, "garbage collector: dependent changed under us; the next event retries");
    }
}

/// Removes the owner reference to `owner_uid` from every dependent (Orphan).
pub fn orphan_dependents(store: &Store, namespace: &str, owner_uid: &str) {
    for (key, mut object) in dependents(store, namespace, owner_uid) {
        if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| r["uid"].as_str() != Some(owner_uid));
            if refs.is_empty() {
                object["metadata"].as_object_mut().map(|m| m.remove("ownerReferences"));
            }
        }
        if let Err(error) = store.update(&key, object, None) {
            tracing::warn!(%error, name = %key.name, "could not orphan a dependent");
        }
    }
}

/// One pass over what a change implies.
fn on_change(store: &Store, kind: EventType, key: &ObjectKey, object: &Value) {
    let deleted = kind == EventType::Deleted;
    // A deleted namespace takes everything in it along (each object as by
    // its own DELETE: finalizers hold it until they are removed).
    if deleted && key.resource == NAMESPACES {
        for (contained_key, contained) in objects_in(store, &key.name) {
            delete(store, &contained_key, &contained);
        }
        return;
    }
    let Some(owner_uid) = uid(object) else { return };
    let foreground = object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|v| v.as_str() == Some(FOREGROUND_FINALIZER)))
        && object["metadata"].get("deletionTimestamp").is_some();
    if deleted || foreground {
        let remaining = dependents(store, &key.namespace, owner_uid);
        for (dep_key, dependent) in &remaining {
            delete(store, dep_key, dependent);
        }
    }
    // A dependent went away: its owners waiting in foreground deletion may be done.
    if deleted {
        for reference in object["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
            if let Some(owner) = reference["uid"].as_str() {
                release_foreground_owner(store, &key.namespace, owner);
            }
        }
    }
    if foreground {
        release_foreground_owner(store, &key.namespace, owner_uid);
    }
}

fn release_foreground_owner(store: &Store, namespace: &str, owner_uid: &str) {
    if !dependents(store, namespace, owner_uid).is_empty() {
        return;
    }
    let Some((key, mut owner)) = objects_in(store, namespace).into_iter().find(|(_, o)| uid(o) == Some(owner_uid))
    else {
        return;
    };
    let Some(finalizers) = owner["metadata"]["finalizers"].as_array_mut() else { return };
    let before = finalizers.len();
    finalizers.retain(|f| f.as_str() != Some(FOREGROUND_FINALIZER));
    if finalizers.len() == before {
        return;
    }
    let result = if finalizers.is_empty() {
        store.delete(&key, None).map(|_| ())
    } else {
        store.update(&key, owner, None).map(|_| ())
    };
    if let Err(error) = result {
        tracing::debug!(%error, name = %key.name, "garbage collector: owner changed under us; the next event retries");
    }
}

/// Follows committed changes for as long as the server runs.
pub async fn run(store: Shared) {
    let mut changes = store.subscribe();
    loop {
        match changes.recv().await {
            Ok(event) => {
                let store = store.clone();
                let _ =
                    tokio::task::spawn_blocking(move || on_change(&store, event.kind, &event.key, &event.object)).await;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "garbage collector fell behind; some cascades wait for the next change");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
