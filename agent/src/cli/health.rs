//! `--health-listen`: `/healthz` (the process serves) and `/readyz` (it has
//! reached the API) for Kubernetes probes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// Binds `address` (so a bad flag fails at start) and serves the probes in the background.
pub async fn spawn(address: SocketAddr, ready: Arc<AtomicBool>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let router = Router::new().route("/healthz", get(|| async { "ok" })).route(
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
