//! `events.k8s.io/v1` Events, stored as core `v1` Events.
//!
//! Kubernetes keeps one Event storage and serves it through both APIs: what
//! kube-rs's `Recorder` (events.k8s.io/v1) writes, `kubectl describe` (core
//! v1, by `involvedObject`) reads. kvmlet does the same: requests to
//! events.k8s.io are converted to the core form on the way in and back on the
//! way out (bodies, patches applied to the events.k8s.io form, responses and
//! watch events), with the field mapping of Kubernetes' own conversion.

use axum::body::Body;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::resources::Resource;

pub const GROUP: &str = "events.k8s.io";

/// (core v1 field, events.k8s.io/v1 field) pairs with different names; the
/// rest (metadata, reason, type, action, eventTime, series, related,
/// reportingInstance) are shared.
const RENAMED: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Whether a resource is events.k8s.io's view of the core Events.
pub fn is_view(resource: &Resource) -> bool {
    resource.group == GROUP && resource.plural == "events"
}

fn rename(object: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(value) = object.remove(from) {
        object.insert(to.to_string(), value);
    }
}

/// An events.k8s.io/v1 Event in its stored (core v1) form.
pub fn to_core(mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut() {
        for (core, new) in RENAMED {
            rename(object, new, core);
        }
        object.insert("apiVersion".into(), json!("v1"));
        object.insert("kind".into(), json!("Event"));
    }
    event
}

/// A stored (core v1) Event as events.k8s.io/v1 shows it. Bookmarks (only
/// metadata) come out with the right apiVersion too.
pub fn from_core(mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut() {
        for (core, new) in RENAMED {
            rename(object, core, new);
        }
        object.insert("apiVersion".into(), json!(format!("{GROUP}/v1")));
        object.insert("kind".into(), json!("Event"));
    }
    event
}

/// Rewrites a core-form response (an Event or an EventList) into the
/// events.k8s.io form; anything else (Status errors, Tables) passes as is.
pub async fn present_response(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(%error, "could not read an Event response to convert it");
            return Response::from_parts(parts, Body::empty());
        }
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    match value["kind"].as_str() {
        Some("Event") => value = from_core(value),
        Some("EventList") => {
            value["apiVersion"] = json!(format!("{GROUP}/v1"));
            if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    *item = from_core(item.take());
                }
            }
        }
        _ => return Response::from_parts(parts, Body::from(bytes)),
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&value).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_events_become_core_events_and_back() {
        let recorded = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "vm-cirros.1", "namespace": "default"},
            "eventTime": "2026-11-24T05:00:00.000000Z",
            "action": "Create",
            "reason": "SuccessfulCreate",
            "note": "Started the virtual machine",
            "type": "Normal",
            "regarding": {"kind": "VirtualMachine", "name": "vm-cirros", "uid": "u1"},
            "reportingController": "kvmlet.io/controller",
            "reportingInstance": "node-1",
        });
        let core = to_core(recorded.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "vm-cirros");
        assert_eq!(core["message"], "Started the virtual machine");
        assert_eq!(core["reportingComponent"], "kvmlet.io/controller");
        assert!(core.get("regarding").is_none() && core.get("note").is_none());
        assert_eq!(from_core(core), recorded);
    }

    #[tokio::test]
    async fn lists_are_converted_and_errors_pass_through() {
        let list = json!({"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": [{"kind": "Event", "message": "m"}]});
        let response = present_response(Response::new(Body::from(list.to_string()))).await;
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let converted: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(converted["apiVersion"], "events.k8s.io/v1");
        assert_eq!(converted["items"][0]["note"], "m");

        let status = json!({"kind": "Status", "message": "not found"});
        let response = present_response(Response::new(Body::from(status.to_string()))).await;
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), status);
    }
}
