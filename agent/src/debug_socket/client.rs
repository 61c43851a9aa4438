//! A small HTTP client for the debugging socket (what `kvmlet ps`,
//! `inspect` and `console` use).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use proto::debug::NodeSocketError;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the node agent at {path} (is `kvmlet agent` or `kvmlet standalone` running with this --run-dir?)"
    )]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("HTTP")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Agent(String),
    #[error("unexpected answer")]
    Decode(#[from] serde_json::Error),
}

pub struct NodeClient {
    socket: PathBuf,
}

impl NodeClient {
    pub fn new(socket: &Path) -> NodeClient {
        NodeClient { socket: socket.to_path_buf() }
    }

    /// Sends one request on a fresh connection and returns the response head
    /// and body stream; non-2xx answers become `ClientError::Agent`.
    pub async fn send(&self, method: Method, path: &str, body: Bytes) -> Result<Response<Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { path: self.socket.clone(), source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(body))
            .expect("a valid request");
        let response = sender.send_request(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<NodeSocketError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        Err(ClientError::Agent(message))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.send(Method::GET, path, Bytes::new()).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn post(&self, path: &str, body: Bytes) -> Result<(), ClientError> {
        let response = self.send(Method::POST, path, body).await?;
        response.into_body().collect().await?;
        Ok(())
    }
}

/// `/v1/namespaces/{ns}/vms/{name}` plus `suffix`.
pub fn vm_path(namespace: &str, name: &str, suffix: &str) -> String {
    format!("/v1/namespaces/{namespace}/vms/{name}{suffix}")
}
