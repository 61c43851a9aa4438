//! What create and update check and default: unknown fields
//! (`fieldValidation=Strict`), Kubernetes' metadata rules, the status a new
//! object starts with, the defaults of built-in kinds, and the rules of
//! built-in kinds with more to them (Services, EndpointSlices).

use serde_json::{json, Value};

use super::Target;
use crate::apiserver::endpointslices;
use crate::apiserver::error::ApiError;
use crate::apiserver::openapi;
use crate::apiserver::resources::Resource;
use crate::apiserver::services::{self, Turn};
use crate::apiserver::state::ApiState;
use crate::apiserver::validation;

/// With `fieldValidation=Strict` (kubectl's default), fields the schema does
/// not know are an error, as on a real API server.
pub(super) fn check_fields(target: &Target, object: &Value, strict: bool) -> Result<(), ApiError> {
    if !strict {
        return Ok(());
    }
    let mut unknown = Vec::new();
    openapi::unknown_fields(&openapi::schema(target.resource), object, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(());
    }
    let fields: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    let kind = target.resource.kind;
    Err(ApiError::bad_request(format!(
        "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
        target.resource.version,
        fields.join(", ")
    )))
}

/// What the server puts in `status` on create for resources with a status
/// subresource (Kubernetes' `PrepareForCreate`): a Namespace starts Active,
/// a Service with an empty load balancer status.
pub(super) fn initial_status(resource: &Resource) -> Option<Value> {
    match (resource.group, resource.plural) {
        ("", "namespaces") => Some(json!({"phase": "Active"})),
        ("", "services") => Some(json!({"loadBalancer": {}})),
        _ => None,
    }
}

/// The rules of built-in kinds that kube-apiserver's registry applies
/// after its defaults (`current` is the stored object, on updates):
/// Services are defaulted, validated and allocated their cluster IP and
/// node ports, EndpointSlices validated. The [`Turn`] returned must be held
/// until the object is stored, so no other write takes what it allocated.
pub(super) fn builtin_rules<'a>(
    state: &'a ApiState,
    target: &Target,
    name: &str,
    object: &mut Value,
    current: Option<&Value>,
) -> Result<Option<Turn<'a>>, ApiError> {
    match (target.resource.group, target.resource.kind) {
        ("", "Service") => services::admit(state, &target.key(name), object, current),
        (endpointslices::GROUP, "EndpointSlice") => {
            endpointslices::admit(name, object, current)?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Kubernetes' defaults for fields a client may leave out: a Secret without
/// a type is `Opaque`.
pub(super) fn apply_defaults(resource: &Resource, object: &mut Value) {
    if resource.group.is_empty() && resource.plural == "secrets" && object["type"].as_str().is_none_or(str::is_empty) {
        object["type"] = json!("Opaque");
    }
}

/// Kubernetes' metadata validation (`validation::object_meta`) as a 422. On
/// update (`current` given) only labels and annotations that changed are
/// checked, so objects stored before these checks existed (or with names
/// they refuse) can still have their finalizers removed and be deleted.
pub(super) fn check_metadata(
    resource: &Resource,
    name: &str,
    object: &Value,
    current: Option<&Value>,
) -> Result<(), ApiError> {
    let mut errors = validation::object_meta(resource, object);
    if let Some(current) = current {
        let changed = |field: &str| object["metadata"].get(field) != current["metadata"].get(field);
        errors.retain(|(field, _)| {
            (field == "metadata.labels" && changed("labels"))
                || (field == "metadata.annotations" && changed("annotations"))
        });
        // As Kubernetes: once deletion began, finalizers can only go.
        if current["metadata"].get("deletionTimestamp").is_some() {
            let names = |o: &Value| -> Vec<String> {
                let list = o["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                list.iter().filter_map(|f| f.as_str().map(str::to_string)).collect()
            };
            let before = names(current);
            let added: Vec<String> = names(object).into_iter().filter(|f| !before.contains(f)).collect();
            if !added.is_empty() {
                let message =
                    format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}");
                errors.push(("metadata.finalizers".into(), message));
            }
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_in(resource.group, resource.kind, name, errors))
}
