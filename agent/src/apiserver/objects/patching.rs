//! PATCH bodies applied to stored objects: JSON patch (RFC 6902) and merge
//! patch (RFC 7386), and whether a patch pins the resourceVersion.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use axum::http::StatusCode;
use serde_json::Value;

use super::Target;
use crate::apiserver::error::ApiError;
use crate::apiserver::patch;
use crate::apiserver::store::ObjectKey;

/// One lock per object: racing patches of one object take turns (the real
/// API server's retry loop has the same effect) instead of spinning on 409s.
/// Other writers (PUT, status) still race; patches retry around them.
static OBJECT_LOCKS: LazyLock<Mutex<HashMap<ObjectKey, Arc<Mutex<()>>>>> = LazyLock::new(Default::default);

/// Holds the patch lock of one object while it lives.
pub struct PatchLock {
    key: ObjectKey,
    lock: Arc<Mutex<()>>,
}

impl PatchLock {
    pub fn new(key: ObjectKey) -> PatchLock {
        let mut locks = OBJECT_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        let lock = locks.entry(key.clone()).or_default().clone();
        PatchLock { key, lock }
    }

    pub fn hold(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PatchLock {
    fn drop(&mut self) {
        let mut locks = OBJECT_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else waits on this object.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.key);
        }
    }
}

/// How often a patch is re-applied after losing a race with another write.
pub const PATCH_ATTEMPTS: usize = 8;

/// Whether the patch itself sets `metadata.resourceVersion` (then a conflict
/// is the client's to see).
pub fn patch_pins_resource_version(content_type: &str, patch_body: &Value) -> bool {
    if content_type.starts_with("application/json-patch+json") {
        let ops = patch_body.as_array().map(Vec::as_slice).unwrap_or_default();
        ops.iter().any(|op| op["path"] == "/metadata/resourceVersion" && op["op"] != "test")
    } else {
        patch_body.pointer("/metadata/resourceVersion").is_some_and(|v| !v.is_null())
    }
}

/// `shown` with a JSON patch or merge patch applied.
pub fn apply_patch(
    shown: &Value,
    content_type: &str,
    patch_body: &Value,
    target: &Target,
    name: &str,
) -> Result<Value, ApiError> {
    if content_type.starts_with("application/json-patch+json") {
        patch::json_patch(shown, patch_body).map_err(|e| match e {
            patch::JsonPatchError::TestFailed(..) => ApiError::conflict(&target.what(), name),
            other => {
                let resource = target.resource;
                ApiError::invalid_in(resource.group, resource.kind, name, vec![("patch".into(), other.to_string())])
            }
        })
    } else if content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json")
    {
        let mut patched = shown.clone();
        patch::merge(&mut patched, patch_body);
        Ok(patched)
    } else {
        Err(ApiError {
            code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "UnsupportedMediaType",
            message: format!("the patch type {content_type} is not supported"),
            causes: vec![],
            subject: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_patches_that_set_the_resource_version_pin_it() {
        let merge = "application/merge-patch+json";
        let json = "application/json-patch+json";
        assert!(patch_pins_resource_version(merge, &json!({"metadata": {"resourceVersion": "7"}})));
        assert!(!patch_pins_resource_version(merge, &json!({"metadata": {"labels": {"a": "b"}}})));
        assert!(!patch_pins_resource_version(merge, &json!({"metadata": {"resourceVersion": null}})));
        let replace = json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": "7"}]);
        assert!(patch_pins_resource_version(json, &replace));
        let test = json!([{"op": "test", "path": "/metadata/resourceVersion", "value": "7"}]);
        assert!(!patch_pins_resource_version(json, &test), "a failed test is a 409 of its own");
    }
}
