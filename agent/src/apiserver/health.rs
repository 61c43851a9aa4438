//! `/healthz`, `/livez` and `/readyz` on the API port, as kube-apiserver
//! serves them: `ok` (text/plain), `?verbose` listing each check as
//! `[+]name ok`, `/healthz/NAME` for one check, 500 when a check fails.
//! No credentials are needed (kube-apiserver's `system:public-info-viewer`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::objects::Shared;
use super::store::Store;

const ENDPOINTS: &[&str] = &["healthz", "livez", "readyz"];

/// One named check: `Err` says why it failed.
type Check = fn(&Store) -> Result<(), String>;

fn ping(_: &Store) -> Result<(), String> {
    Ok(())
}

/// The database answers a read transaction.
fn store(store: &Store) -> Result<(), String> {
    store.revision().map(|_| ()).map_err(|e| e.to_string())
}

const CHECKS: &[(&str, Check)] = &[("ping", ping), ("store", store)];

/// Whether `path` is one of the health endpoints (served without a token).
pub fn is_health_path(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    ENDPOINTS.contains(&first)
}

pub fn routes() -> Router<Shared> {
    let mut router = Router::new();
    for endpoint in ENDPOINTS {
        router = router
            .route(&format!("/{endpoint}"), get(move |state, query| all(state, query, endpoint)))
            .route(&format!("/{endpoint}/{{check}}"), get(one));
    }
    router
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")], body).into_response()
}

async fn all(State(api): State<Shared>, Query(query): Query<HashMap<String, String>>, endpoint: &str) -> Response {
    let excluded: Vec<String> =
        query.get("exclude").map(|e| e.split(',').map(str::to_string).collect()).unwrap_or_default();
    let results: Vec<(&str, Result<(), String>)> = tokio::task::spawn_blocking(move || {
        let included = |name: &&str| !excluded.iter().any(|e| e == name);
        CHECKS.iter().filter(|(name, _)| included(name)).map(|(name, check)| (*name, check(&api))).collect()
    })
    .await
    .unwrap_or_else(|e| vec![("ping", Err(e.to_string()))]);
    let healthy = results.iter().all(|(_, r)| r.is_ok());
    for (name, result) in &results {
        if let Err(reason) = result {
            tracing::warn!(check = name, %reason, endpoint, "health check failed");
        }
    }
    let verbose = query.contains_key("verbose");
    if healthy && !verbose {
        return text(StatusCode::OK, "ok".into());
    }
    let mut body = String::new();
    for (name, result) in &results {
        match result {
            Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
            Err(_) => body.push_str(&format!("[-]{name} failed: reason withheld\n")),
        }
    }
    if healthy {
        body.push_str(&format!("{endpoint} check passed\n"));
        text(StatusCode::OK, body)
    } else {
        body.push_str(&format!("{endpoint} check failed\n"));
        text(StatusCode::INTERNAL_SERVER_ERROR, body)
    }
}

async fn one(State(api): State<Shared>, Path(check): Path<String>) -> Response {
    let Some((_, run)) = CHECKS.iter().find(|(name, _)| *name == check) else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    };
    let run = *run;
    match tokio::task::spawn_blocking(move || run(&api)).await {
        Ok(Ok(())) => text(StatusCode::OK, "ok".into()),
        _ => text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error: reason withheld\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(client: &kube::Client, path: &str) -> Result<String, kube::Error> {
        client.request_text(axum::http::Request::get(path).body(Vec::new()).unwrap()).await
    }

    #[tokio::test]
    async fn health_endpoints_answer_as_kube_apiserver() {
        let dir = tempfile::tempdir().unwrap();
        let api = super::super::embedded::EmbeddedApi::open(dir.path()).unwrap();
        let client = api.client();
        for endpoint in ENDPOINTS {
            assert_eq!(get(&client, &format!("/{endpoint}")).await.unwrap(), "ok");
            let body = get(&client, &format!("/{endpoint}?verbose")).await.unwrap();
            assert_eq!(body, format!("[+]ping ok\n[+]store ok\n{endpoint} check passed\n"));
            assert_eq!(get(&client, &format!("/{endpoint}/store")).await.unwrap(), "ok");
            assert!(get(&client, &format!("/{endpoint}/nope")).await.is_err());
        }
        assert!(is_health_path("/readyz/ping") && is_health_path("/livez") && !is_health_path("/api/v1"));
    }
}
