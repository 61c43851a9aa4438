//! Server-side apply, the subset kvmlet's clients rely on.

use std::collections::HashMap;

use axum::response::Response;
use serde_json::{json, Value};

use super::{check_fields, create, update, Target};
use crate::apiserver::error::ApiError;
use crate::apiserver::patch;
use crate::apiserver::state::ApiState;

/// Content type of server-side apply requests (kubectl and kube-rs send JSON,
/// which is YAML too; only JSON bodies are understood).
pub(super) const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Server-side apply, the subset kvmlet's clients rely on: the applied
/// configuration creates the object when it is absent and is merged into it
/// (JSON merge patch rules) when present. Not done: managedFields and
/// per-manager field ownership, so there are no apply conflicts and fields a
/// manager stops applying are kept rather than removed.
pub(super) fn server_side_apply(
    state: &ApiState,
    target: &Target,
    name: &str,
    applied: Value,
    query: &HashMap<String, String>,
    strict: bool,
) -> Result<Response, ApiError> {
    if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(ApiError::invalid_in(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![("fieldManager".into(), "Required value: is required for apply patch".into())],
        ));
    }
    if !applied.is_object() || !applied.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("the applied configuration must be an object with object metadata"));
    }
    if applied["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            applied["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    match state.get(&target.key(name)).map_err(|e| ApiError::internal(e.to_string()))? {
        None => {
            let mut object = applied;
            object["metadata"]["name"] = json!(name);
            create(state, target, object, strict)
        }
        Some(current) => {
            check_fields(target, &applied, strict)?;
            let mut merged = current.clone();
            patch::merge(&mut merged, &applied);
            update(state, target, name, current, merged, false)
        }
    }
}
