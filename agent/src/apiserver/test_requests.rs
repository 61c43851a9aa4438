//! Requests to an [`EmbeddedApi`] for tests, through its in-process client
//! (the router kubectl reaches), answered as (status code, JSON body).

use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::embedded::EmbeddedApi;

/// Sends `body` (none when it is null) as `content_type` with `accept`.
pub async fn send(
    client: &kube::Client,
    method: Method,
    path: &str,
    content_type: &str,
    accept: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let bytes = if body.is_null() { vec![] } else { serde_json::to_vec(body).unwrap() };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .header("accept", accept)
        .body(kube::client::Body::from(bytes))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let code = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes))))
}

pub async fn call(api: &EmbeddedApi, method: Method, path: &str, body: &Value) -> (StatusCode, Value) {
    send(&api.client(), method, path, "application/json", "application/json", body).await
}

pub async fn post(api: &EmbeddedApi, path: &str, body: &Value) -> (StatusCode, Value) {
    call(api, Method::POST, path, body).await
}

pub async fn get(api: &EmbeddedApi, path: &str) -> (StatusCode, Value) {
    call(api, Method::GET, path, &Value::Null).await
}

pub async fn merge_patch(api: &EmbeddedApi, path: &str, patch: &Value) -> (StatusCode, Value) {
    send(&api.client(), Method::PATCH, path, "application/merge-patch+json", "application/json", patch).await
}

/// A Table of what `path` lists, as kubectl asks for it.
pub async fn table(api: &EmbeddedApi, path: &str) -> Value {
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (code, table) = send(&api.client(), Method::GET, path, "application/json", accept, &Value::Null).await;
    assert_eq!(code, StatusCode::OK, "{table}");
    table
}

/// The message of a refused request, checking its code.
pub fn refused(answer: (StatusCode, Value), code: u16) -> String {
    assert_eq!(answer.0.as_u16(), code, "{}", answer.1);
    answer.1["message"].as_str().unwrap_or_default().to_string()
}
