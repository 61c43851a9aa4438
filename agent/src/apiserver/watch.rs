//! Watches: a stream of `{"type", "object"}` lines from a resourceVersion on.
//!
//! The stream subscribes to committed changes *before* it reads the starting
//! state (a snapshot or the change log), and forwards live changes newer than
//! what it already sent, so nothing committed in between is lost or repeated.
//! A resourceVersion older than the change log gets a 410 Expired ERROR event;
//! a watcher that falls too far behind the live stream gets the same and
//! relists. Bookmarks carry the latest revision; `sendInitialEvents` ends its
//! initial ADDED events with a bookmark annotated `k8s.io/initial-events-end`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::objects::Shared;
use super::resources::Resource;
use super::store::{Event, EventType, Scope, StoreError};

/// Longest watch when the client names no timeout (the API server picks 30-60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

pub struct WatchRequest {
    pub resource: &'static Resource,
    pub scope: Scope,
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    /// Whether an object passes the request's label and field selectors.
    pub selects: Box<dyn Fn(&Value) -> bool + Send + Sync>,
    /// How stored objects are shown, when not as stored (events.k8s.io's
    /// view of core Events).
    pub present: Option<fn(Value) -> Value>,
}

impl WatchRequest {
    fn shown<'a>(&self, object: &'a Value) -> Cow<'a, Value> {
        match self.present {
            Some(present) => Cow::Owned(present(object.clone())),
            None => Cow::Borrowed(object),
        }
    }
}

type Sink = mpsc::Sender<Result<Bytes, Infallible>>;

async fn send(sink: &Sink, kind: &str, object: &Value) -> bool {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON serializes");
    line.push(b'\n');
    sink.send(Ok(Bytes::from(line))).await.is_ok()
}

fn expired(message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "Expired", "code": 410})
}

fn bookmark(resource: &Resource, revision: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata})
}

/// What a watch with selectors sends for one change, as Kubernetes' watch
/// cache does: an object that starts matching is `ADDED`, one that stops
/// matching is `DELETED` (its last matching state at the new
/// resourceVersion), so a watcher's cache never keeps an object it can no
/// longer hear about.
fn seen_through(request: &WatchRequest, event: &Event) -> Option<(&'static str, Value)> {
    let now = (request.selects)(&event.object);
    // A change logged before previous states were kept counts as unchanged.
    let before = event.previous.as_ref().map_or(now, |p| (request.selects)(p));
    let kind = match event.kind {
        EventType::Added if now => "ADDED",
        EventType::Deleted if now => "DELETED",
        EventType::Modified if now && before => "MODIFIED",
        EventType::Modified if now => "ADDED",
        EventType::Modified if before => {
            let mut last = event.previous.clone().unwrap_or_default();
            last["metadata"]["resourceVersion"] = event.object["metadata"]["resourceVersion"].clone();
            return Some(("DELETED", request.shown(&last).into_owned()));
        }
        _ => return None,
    };
    Some((kind, request.shown(&event.object).into_owned()))
}

/// How long a watch from a resourceVersion the store has not reached yet
/// waits for it (kube-apiserver's watch cache waits 3 s).
pub const RESOURCE_VERSION_WAIT: Duration = Duration::from_secs(3);

/// Waits (at most [`RESOURCE_VERSION_WAIT`]) until the store has reached
/// `revision`; `Err` holds the store's revision when it did not.
pub async fn wait_for_revision(store: &Shared, revision: u64) -> Result<(), u64> {
    let mut changes = store.subscribe();
    let current = || store.revision().unwrap_or(0);
    if current() >= revision {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + RESOURCE_VERSION_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Ok(Ok(event)) if event.revision >= revision => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(_))) if current() >= revision => return Ok(()),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                let now = current();
                return if now >= revision { Ok(()) } else { Err(now) };
            }
        }
    }
}

/// kube-apiserver's answer to a watch from a resourceVersion newer than the
/// store (`NewTooLargeResourceVersionError`): 504 Timeout, retry in a second.
pub fn too_large_resource_version(requested: u64, current: u64) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("Timeout: Too large resource version: {requested}, current: {current}"),
        "reason": "Timeout",
        "details": {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
        "code": 504,
    });
    (axum::http::StatusCode::GATEWAY_TIMEOUT, axum::Json(status)).into_response()
}

/// The response body of a watch; the stream runs on its own task.
pub fn start(store: Shared, request: WatchRequest) -> Body {
    let (sink, stream) = mpsc::channel(256);
    tokio::spawn(run(store, request, sink));
    Body::from_stream(ReceiverStream::new(stream))
}

async fn run(store: Shared, request: WatchRequest, sink: Sink) {
    let mut live = store.subscribe();
    let initial_state = request.send_initial_events || request.resource_version.is_none_or(|rv| rv == 0);
    let mut last = if initial_state {
        let Ok((items, revision)) = store.list(&request.scope) else { return };
        for (_, object) in items.iter().filter(|(_, o)| (request.selects)(o)) {
            if !send(&sink, "ADDED", &request.shown(object)).await {
                return;
            }
        }
        if request.send_initial_events
            && !send(&sink, "BOOKMARK", &request.shown(&bookmark(request.resource, revision, true))).await
        {
            return;
        }
        revision
    } else {
        let from = request.resource_version.unwrap_or_default();
        match store.events_after(from, &request.scope) {
            // The snapshot's revision, not a later read: a change committed
            // after the snapshot must still come through the live stream.
            Ok((events, snapshot)) => {
                for event in events {
                    if let Some((kind, object)) = seen_through(&request, &event) {
                        if !send(&sink, kind, &object).await {
                            return;
                        }
                    }
                }
                snapshot
            }
            Err(error @ StoreError::Expired { .. }) => {
                let _ = send(&sink, "ERROR", &expired(format!("too old resource version: {error}"))).await;
                return;
            }
            Err(_) => return,
        }
    };

    let deadline = tokio::time::sleep(request.timeout.unwrap_or(DEFAULT_TIMEOUT));
    tokio::pin!(deadline);
    let mut bookmarks = tokio::time::interval(BOOKMARK_INTERVAL);
    bookmarks.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = bookmarks.tick(), if request.bookmarks => {
                if !send(&sink, "BOOKMARK", &request.shown(&bookmark(request.resource, last, false))).await {
                    return;
                }
            }
            change = live.recv() => match change {
                Ok(event) => {
                    if event.revision <= last || !request.scope.contains(&event.key) {
                        continue;
                    }
                    last = event.revision;
                    if let Some((kind, object)) = seen_through(&request, &event) {
                        if !send(&sink, kind, &object).await {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let message = format!("the watch fell {missed} changes behind; relist");
                    let _ = send(&sink, "ERROR", &expired(message)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = sink.closed() => return,
        }
    }
}
