//! Assembling and serving the API: the router, a unix socket for local
//! clients (mode 0600), loopback TCP for kubectl, and the kubeconfig.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde_json::json;

use super::discovery;
use super::error::ApiError;
use super::health;
use super::objects::{self, Shared};
use super::openapi;
use super::openapi_v2;
use super::private_files;
use super::state::{ApiConfig, ApiState};
use super::store::{ObjectKey, Store, StoreError};

/// Namespaces that exist from the start, as in every cluster.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system"];

pub fn router(store: Shared) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/api/v1/{*rest}", any(objects::core))
        .route("/apis", get(discovery::groups))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/apis/{group}/{version}/{*rest}", any(objects::grouped))
        .route("/openapi/v2", get(openapi_v2::serve))
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/api/v1", get(openapi::core_document))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi::group_document))
        .merge(health::routes())
        .layer(axum::extract::DefaultBodyLimit::max(objects::MAX_REQUEST_BODY))
        .with_state(store)
}

/// Opens the store under `data_dir` (created 0700 if missing, tightened if
/// wider; the database file is born 0600), creates the initial namespaces
/// and sets up the state the handlers share.
pub fn open_store(data_dir: &Path, config: &ApiConfig) -> Result<Shared, StoreError> {
    private_files::private_dir(data_dir).map_err(|e| StoreError::Database(format!("{}: {e}", data_dir.display())))?;
    let store = Store::open(&data_dir.join("state.redb"))?;
    for name in INITIAL_NAMESPACES {
        let key = ObjectKey::new("core/namespaces", None, name);
        if store.get(&key)?.is_none() {
            let namespace = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "uid": uuid::Uuid::new_v4().to_string(),
                    "creationTimestamp": crate::clock::now_rfc3339(),
                },
                "status": {"phase": "Active"},
            });
            store.create(&key, namespace)?;
        }
    }
    Ok(Arc::new(ApiState::new(store, config)))
}

/// Where the API listens.
pub struct Endpoints {
    pub socket: PathBuf,
    pub tcp: SocketAddr,
}

/// Serves until the process ends: the unix socket (mode 0600) for local
/// clients of this user, and TLS on the loopback TCP listener for kubectl,
/// where every request must carry `Authorization: Bearer <token>`.
/// The router comes from [`super::embedded::EmbeddedApi::router`], which
/// also runs the garbage collector.
pub async fn serve(
    router: Router,
    socket: &Path,
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    token: String,
) -> std::io::Result<()> {
    // Bound under a staging name and renamed once it is 0600, so the
    // socket's own name never offers a wider mode (a socket's mode cannot be
    // given at bind time without changing the process-wide umask).
    let staging = socket.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&staging);
    let unix = tokio::net::UnixListener::bind(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staging, socket)?;
    let unix_server = axum::serve(unix, router.clone().into_make_service());
    let authenticated =
        router.layer(axum::middleware::from_fn_with_state(Arc::new(format!("Bearer {token}")), require_token));
    tokio::try_join!(unix_server, serve_tls(tcp, acceptor, authenticated))?;
    Ok(())
}

async fn require_token(State(expected): State<Arc<String>>, request: Request, next: Next) -> Response {
    let presented = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    // As kube-apiserver's system:public-info-viewer role: health checks need no credentials.
    if presented == Some(expected.as_str()) || health::is_health_path(request.uri().path()) {
        return next.run(request).await;
    }
    let unauthorized = ApiError {
        code: StatusCode::UNAUTHORIZED,
        reason: "Unauthorized",
        message: "Unauthorized".into(),
        causes: vec![],
        subject: None,
    };
    unauthorized.into_response()
}

/// Accepts TLS connections and serves each (HTTP/1.1 or HTTP/2) on its own task.
async fn serve_tls(
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = tcp.accept().await?;
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(error) =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service).await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
}

/// The bearer token for TCP clients: created once (mode 0600) and kept, so
/// kubeconfigs stay valid across restarts.
pub fn token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("token");
    if let Ok(token) = private_files::read_private(&path) {
        let token = String::from_utf8_lossy(&token).trim().to_string();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    private_files::write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// A kubeconfig for kubectl pointing at the loopback endpoint, written
/// atomically so a reader never sees half of it.
pub fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, token: &str) -> std::io::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kvmlet\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: kvmlet\n  context:\n    cluster: kvmlet\n    namespace: default\n    user: kvmlet\ncurrent-context: kvmlet\nusers:\n- name: kvmlet\n  user:\n    token: {token}\n"
    );
    private_files::write_private(path, config.as_bytes())
}
