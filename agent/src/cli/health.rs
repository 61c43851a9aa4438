//! `--health-listen`: `/healthz` (the process serves), `/readyz` (it has
//! reached the API) for Kubernetes probes, and `/metrics` for Prometheus.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// Binds `address` (so a bad flag fails at start) and serves the probes in the background.
pub async fn spawn(address: SocketAddr, ready: Arc<AtomicBool>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let router = Router::new().route("/healthz", get(|| async { "ok" })).route("/metrics", get(metrics)).route(
        "/readyz",
        get(move || {
            let ready = ready.load(Ordering::Relaxed);
            async move {
                if ready {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "the API has not answered yet")
                }
            }
        }),
    );
    tracing::info!(%address, "health endpoints listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "health endpoints stopped");
        }
    }))
}

async fn metrics() -> impl axum::response::IntoResponse {
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::global().render())
}

/// Sets `ready` once the API answers (retrying every second).
pub fn ready_when_api_answers(client: kube::Client, ready: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while client.apiserver_version().await.is_err() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        ready.store(true, Ordering::Relaxed);
    })
}

/// The probes on `address` when given; the returned guard stops them.
pub async fn serve_optional(
    address: Option<SocketAddr>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<Option<crate::controller::AbortOnDrop>> {
    use anyhow::Context;
    let Some(address) = address else { return Ok(None) };
    let task = spawn(address, ready).await.with_context(|| format!("--health-listen {address}"))?;
    Ok(Some(crate::controller::AbortOnDrop(task)))
}
