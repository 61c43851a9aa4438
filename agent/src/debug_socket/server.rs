//! The node-local debugging socket: `RUN_DIR/kvmlet.sock` (0600), HTTP + JSON.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/vms` | `[VmSummary]` |
//! | `GET /v1/namespaces/{ns}/vms/{name}` | `VmDetail` (summary, `VmConfig`, and which kernel boots and why) |
//! | `GET /v1/namespaces/{ns}/vms/{name}/console[?follow=true]` | the serial console (followed until the VM stops) |
//! | `POST /v1/namespaces/{ns}/vms/{name}/console` | body typed on the serial console |
//! | `POST /v1/namespaces/{ns}/vms/{name}/power-button` | presses the ACPI power button |
//! | `POST /v1/namespaces/{ns}/vms/{name}/kill` | kills the VM |
//!
//! `curl --unix-socket /run/kvmlet/kvmlet.sock http://localhost/v1/vms` works.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use proto::debug::{ControlRequest, NodeSocketError, VmDetail};
use serde::Deserialize;

use crate::node::vms::{Process, VmEntry, VmTable};
use crate::vmprocess::client;

/// How often a followed console looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
/// Console input accepted per request (the VM process takes 4 KiB at a time).
const MAX_INPUT: usize = 4096;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(NodeSocketError { error: message.into() })).into_response()
}

pub fn router(vms: VmTable) -> Router {
    Router::new()
        .route("/v1/vms", get(list))
        .route("/v1/namespaces/{namespace}/vms/{name}", get(inspect))
        .route("/v1/namespaces/{namespace}/vms/{name}/console", get(console).post(console_input))
        .route("/v1/namespaces/{namespace}/vms/{name}/power-button", post(power_button))
        .route("/v1/namespaces/{namespace}/vms/{name}/kill", post(kill))
        .with_state(vms)
}

/// Binds `socket` (replacing a stale one) with mode 0600.
pub fn bind(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the socket on its own task; a failure is logged.
pub fn spawn(listener: tokio::net::UnixListener, vms: VmTable) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(vms)).await {
            tracing::error!(error = %e, "the debugging socket stopped");
        }
    })
}

async fn list(State(vms): State<VmTable>) -> Response {
    Json(vms.summaries()).into_response()
}

/// The VM, or the 404 answer saying it is not here.
fn find(vms: &VmTable, namespace: &str, name: &str) -> Result<VmEntry, Box<Response>> {
    vms.find(namespace, name)
        .ok_or_else(|| Box::new(error(StatusCode::NOT_FOUND, format!("no VM {namespace}/{name} on this node"))))
}

async fn inspect(State(vms): State<VmTable>, UrlPath((namespace, name)): UrlPath<(String, String)>) -> Response {
    match find(&vms, &namespace, &name) {
        Ok(entry) => {
            let config = serde_json::to_value(&entry.config).unwrap_or_default();
            Json(VmDetail { summary: entry.summary(), config, boot: entry.boot.clone() }).into_response()
        }
        Err(response) => *response,
    }
}

async fn control(vms: &VmTable, namespace: &str, name: &str, request: ControlRequest) -> Response {
    let entry = match find(vms, namespace, name) {
        Ok(entry) => entry,
        Err(response) => return *response,
    };
    if matches!(entry.process, Process::Exited(_)) {
        return error(StatusCode::CONFLICT, format!("the VM {namespace}/{name} is not running"));
    }
    match client::request(&entry.dir, &request).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("VM process: {e}")),
    }
}

async fn power_button(State(vms): State<VmTable>, UrlPath((namespace, name)): UrlPath<(String, String)>) -> Response {
    control(&vms, &namespace, &name, ControlRequest::PowerButton {}).await
}

async fn kill(State(vms): State<VmTable>, UrlPath((namespace, name)): UrlPath<(String, String)>) -> Response {
    control(&vms, &namespace, &name, ControlRequest::Kill {}).await
}

async fn console_input(
    State(vms): State<VmTable>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_INPUT {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} bytes; send at most {MAX_INPUT} at a time", body.len()),
        );
    }
    let data = base64::engine::general_purpose::STANDARD.encode(&body);
    control(&vms, &namespace, &name, ControlRequest::ConsoleInput { data }).await
}

#[derive(Deserialize)]
struct ConsoleQuery {
    #[serde(default)]
    follow: bool,
}

async fn console(
    State(vms): State<VmTable>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    let entry = match find(&vms, &namespace, &name) {
        Ok(entry) => entry,
        Err(response) => return *response,
    };
    let path = entry.dir.serial_log();
    if !query.follow {
        return match tokio::fs::read(&path).await {
            Ok(bytes) => bytes.into_response(),
            Err(e) => error(StatusCode::NOT_FOUND, format!("{}: {e}", path.display())),
        };
    }
    let uid = entry.identity.uid.clone();
    // One open file for the whole follow: the agent removes the state
    // directory as soon as the VM is gone, and the last lines must still come.
    let log = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) => return error(StatusCode::NOT_FOUND, format!("{}: {e}", path.display())),
    };
    // Sends what the log has, then what it grows by, until the VM is gone
    // and everything it wrote was sent.
    let stream = futures::stream::unfold(Some(log), move |log| {
        let (vms, uid) = (vms.clone(), uid.clone());
        async move {
            let mut log = log?;
            loop {
                // Checked before reading: output written before the exit is read after it.
                let exited = vms.get(&uid).is_none_or(|e| matches!(e.process, Process::Exited(_)));
                match read_more(&mut log) {
                    Ok(bytes) if !bytes.is_empty() => return Some((Ok(Bytes::from(bytes)), Some(log))),
                    Err(e) => return Some((Err(e), None)),
                    Ok(_) if exited => return None,
                    Ok(_) => tokio::time::sleep(FOLLOW_POLL).await,
                }
            }
        }
    });
    Body::from_stream(stream).into_response()
}

/// Up to 64 KiB more of `file`, from where the last read ended.
fn read_more(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(64 * 1024).read_to_end(&mut bytes)?;
    Ok(bytes)
}
