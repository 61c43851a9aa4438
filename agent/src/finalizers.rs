//! Finalizers added and removed with JSON patches that `test` the list they
//! read, so a concurrent change conflicts instead of being overwritten. The
//! one home for these writes (the node's, the controller's, the orphan and
//! unresponsive-node sweeps').

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Ops that add `finalizer` to `list`.
fn add_ops(list: &Option<Vec<String>>, finalizer: &str) -> Value {
    match list {
        Some(list) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ]),
        None => json!([{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]),
    }
}

/// Ops that take `finalizer` out of `list`.
fn remove_ops(list: &[String], finalizer: &str) -> Value {
    let rest: Vec<&String> = list.iter().filter(|f| *f != finalizer).collect();
    json!([
        {"op": "test", "path": "/metadata/finalizers", "value": list},
        {"op": "replace", "path": "/metadata/finalizers", "value": rest},
    ])
}

pub fn has<K: Resource>(object: &K, finalizer: &str) -> bool {
    object.finalizers().iter().any(|f| f == finalizer)
}

/// Adds `finalizer` unless `object` has it; the object as written, or None
/// when there was nothing to do.
pub async fn add<K>(api: &Api<K>, object: &K, finalizer: &str) -> kube::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    if has(object, finalizer) {
        return Ok(None);
    }
    patch(api, object, add_ops(&object.meta().finalizers, finalizer)).await.map(Some)
}

/// Removes `finalizer` if `object` has it; the object as written (a
/// deleted object's last state), or None when there was nothing to do.
pub async fn remove<K>(api: &Api<K>, object: &K, finalizer: &str) -> kube::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    if !has(object, finalizer) {
        return Ok(None);
    }
    patch(api, object, remove_ops(object.finalizers(), finalizer)).await.map(Some)
}

async fn patch<K>(api: &Api<K>, object: &K, ops: Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let ops: json_patch::Patch = serde_json::from_value(ops).expect("a well-formed JSON patch");
    api.patch(&object.name_any(), &PatchParams::default(), &Patch::Json::<()>(ops)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_test_the_list_they_read() {
        assert_eq!(add_ops(&None, "f"), json!([{"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]));
        let list = vec!["a".to_string(), "f".to_string()];
        assert_eq!(
            add_ops(&Some(list.clone()), "g"),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["a", "f"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "g"},
            ])
        );
        assert_eq!(
            remove_ops(&list, "f"),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["a", "f"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": ["a"]},
            ])
        );
    }
}
