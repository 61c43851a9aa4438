//! Assembling and serving the API: the router, a unix socket for local
//! clients (mode 0600), loopback TCP for kubectl, and the kubeconfig.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::routing::{any, get};
use axum::Router;
use serde_json::json;

use super::discovery;
use super::gc;
use super::objects::{self, Shared};
use super::openapi;
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
        .route("/openapi/v3", get(openapi::root))
        .route("/openapi/v3/api/v1", get(openapi::core_document))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi::group_document))
        .with_state(store)
}

/// Opens the store under `data_dir` and creates the initial namespaces.
pub fn open_store(data_dir: &Path) -> Result<Shared, StoreError> {
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
                    "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                },
                "status": {"phase": "Active"},
            });
            store.create(&key, namespace)?;
        }
    }
    Ok(Arc::new(store))
}

/// Where the API listens.
pub struct Endpoints {
    pub socket: PathBuf,
    pub tcp: SocketAddr,
}

/// Serves until the process ends. The unix socket is created with mode 0600.
pub async fn serve(store: Shared, socket: &Path, tcp: tokio::net::TcpListener) -> std::io::Result<()> {
    tokio::spawn(gc::run(store.clone()));
    let router = router(store);
    let _ = std::fs::remove_file(socket);
    let unix = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let unix_server = axum::serve(unix, router.clone().into_make_service());
    let tcp_server = axum::serve(tcp, router.into_make_service());
    tokio::try_join!(unix_server, tcp_server)?;
    Ok(())
}

/// A kubeconfig for kubectl pointing at the loopback endpoint, written
/// atomically so a reader never sees half of it.
pub fn write_kubeconfig(path: &Path, server: &str) -> std::io::Result<()> {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kvmlet\n  cluster:\n    server: {server}\ncontexts:\n- name: kvmlet\n  context:\n    cluster: kvmlet\n    namespace: default\n    user: kvmlet\ncurrent-context: kvmlet\nusers:\n- name: kvmlet\n  user: {{}}\n"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, config)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(tmp, path)
}
