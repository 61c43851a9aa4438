//! One image pulled from a registry (OCI distribution v2, via `oci-client`)
//! into the store: manifest (a multi-arch index resolved to linux/amd64),
//! each layer blob verified against its digest before it gets its name, the
//! layers unpacked into a tree that is renamed into place when complete.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::reference::{ImageRef, RegistryConfig, DOCKER_HUB};
use super::store::{ImageRecord, Store};
use super::unpack::{self, Budget, Limits, UnpackError};

/// Largest compressed layer a registry may send (a bound on hostile registries).
const MAX_LAYER_BYTES: i64 = 64 << 30;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("registry {host}")]
    Registry {
        host: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("layer {digest} is {size} bytes, more than kvmlet accepts")]
    LayerTooLarge { digest: String, size: i64 },
    #[error("unpacking layer {digest}")]
    Unpack {
        digest: String,
        #[source]
        source: UnpackError,
    },
    #[error("the image store")]
    Store(#[source] std::io::Error),
    #[error("secret {secret:?} is not a kubernetes.io/dockerconfigjson Secret with valid .dockerconfigjson")]
    BadSecret { secret: String },
}

/// Registry credentials from a `kubernetes.io/dockerconfigjson` Secret.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    auths: BTreeMap<String, (String, String)>,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl DockerConfig {
    /// Parses `.dockerconfigjson` (keys may be `host`, `https://host` or `https://host/v1/`).
    pub fn parse(secret: &str, json: &[u8]) -> Result<DockerConfig, PullError> {
        let bad = || PullError::BadSecret { secret: secret.to_string() };
        let config: ConfigJson = serde_json::from_slice(json).map_err(|_| bad())?;
        let mut auths = BTreeMap::new();
        for (key, entry) in config.auths {
            let host = key.trim_start_matches("https://").trim_start_matches("http://");
            let host = host.split('/').next().unwrap_or_default().to_string();
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| bad())?;
                    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                    let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
                    (user.to_string(), password.to_string())
                }
                (None, Some(user), Some(password)) => (user, password),
                _ => return Err(bad()),
            };
            auths.insert(host, pair);
        }
        Ok(DockerConfig { auths })
    }

    /// Credentials for the endpoint contacted, else for the image's registry.
    fn auth_for(&self, endpoint: &str, image: &ImageRef) -> RegistryAuth {
        let hub = ["index.docker.io", "registry-1.docker.io"];
        let mut keys = vec![endpoint, image.registry.as_str()];
        if image.registry == DOCKER_HUB {
            keys.extend(hub);
        }
        match keys.iter().find_map(|k| self.auths.get(*k)) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// Pulls `image` into `store` and points its reference at it; its layers
/// may unpack to no more than `limits`.
pub async fn pull(
    store: &Store,
    config: &RegistryConfig,
    limits: Limits,
    image: &ImageRef,
    credentials: &DockerConfig,
) -> Result<ImageRecord, PullError> {
    let endpoint = config.endpoint(image);
    let registry_error = |source| PullError::Registry { host: endpoint.host.clone(), source };
    let client = Client::new(ClientConfig {
        protocol: if endpoint.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        accept_invalid_certificates: config.is_insecure(&endpoint.host),
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        ..ClientConfig::default()
    });
    let reference = match (&image.digest, &image.tag) {
        (Some(digest), _) => Reference::with_digest(endpoint.host.clone(), image.repository.clone(), digest.clone()),
        (None, tag) => Reference::with_tag(
            endpoint.host.clone(),
            image.repository.clone(),
            tag.clone().unwrap_or_else(|| "latest".into()),
        ),
    };
    let auth = credentials.auth_for(&endpoint.host, image);
    // The manifest's digest is checked against its bytes (and the digest in
    // the reference, if any) by the client.
    let (manifest, digest) = client.pull_image_manifest(&reference, &auth).await.map_err(registry_error)?;
    let layers: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    let size = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum();
    let record = ImageRecord { digest: digest.clone(), layers, size };

    for layer in &manifest.layers {
        if layer.size > MAX_LAYER_BYTES {
            return Err(PullError::LayerTooLarge { digest: layer.digest.clone(), size: layer.size });
        }
        let blob = store.blob_path(&layer.digest).map_err(PullError::Store)?;
        let _lock = store.lock(&layer.digest).await.map_err(PullError::Store)?;
        if blob.exists() {
            continue;
        }
        let temp = store.temp_path("blob");
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .await
            .map_err(PullError::Store)?;
        // The client hashes the stream and fails on a digest mismatch; the
        // writer stops a registry that sends more than the manifest said.
        let pulled = client.pull_blob(&reference, layer, Bounded { inner: file, left: layer.size.max(0) as u64 }).await;
        if let Err(e) = pulled {
            let _ = std::fs::remove_file(&temp);
            return Err(registry_error(e));
        }
        tokio::fs::rename(&temp, &blob).await.map_err(PullError::Store)?;
    }

    let tree = store.unpacked_path(&digest).map_err(PullError::Store)?;
    let _lock = store.lock(&digest).await.map_err(PullError::Store)?;
    if !tree.is_dir() {
        let blobs: Vec<(String, std::path::PathBuf)> = record
            .layers
            .iter()
            .map(|d| Ok((d.clone(), store.blob_path(d)?)))
            .collect::<std::io::Result<_>>()
            .map_err(PullError::Store)?;
        let store = store.clone();
        tokio::task::spawn_blocking(move || unpack_image(&store, &tree, &blobs, limits))
            .await
            .map_err(|e| PullError::Store(std::io::Error::other(e)))??;
    }
    store.set_ref(image, &record).map_err(PullError::Store)?;
    Ok(record)
}

/// A writer that refuses to write more than `left` bytes in all.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Bounded<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            let error =
                std::io::Error::new(std::io::ErrorKind::InvalidData, "the blob is larger than its descriptor says");
            return std::task::Poll::Ready(Err(error));
        }
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &written {
            self.left -= *n as u64;
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Unpacks `blobs` (bottom layer first) under the store's `tmp/` and renames
/// the tree to `tree` when complete; on failure nothing is left.
fn unpack_image(
    store: &Store,
    tree: &Path,
    blobs: &[(String, std::path::PathBuf)],
    limits: Limits,
) -> Result<(), PullError> {
    let temp = store.temp_path("unpack");
    let unpacked =
        unpack_all(&temp, blobs, limits).and_then(|()| std::fs::rename(&temp, tree).map_err(PullError::Store));
    if unpacked.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    unpacked
}

fn unpack_all(root: &Path, blobs: &[(String, std::path::PathBuf)], limits: Limits) -> Result<(), PullError> {
    std::fs::create_dir(root).map_err(PullError::Store)?;
    let mut budget = Budget::new(limits);
    for (digest, blob) in blobs {
        let unpack_error = |source| PullError::Unpack { digest: digest.clone(), source };
        unpack::apply_layer(blob, root, &mut budget).map_err(unpack_error)?;
    }
    unpack::check_links(root).map_err(|source| PullError::Unpack { digest: "(all layers)".into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_larger_than_its_descriptor_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let mut writer = Bounded { inner: Vec::new(), left: 4 };
        writer.write_all(b"abcd").await.unwrap();
        let error = writer.write_all(b"e").await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(writer.inner, b"abcd");
    }

    #[test]
    fn an_image_over_the_size_limit_leaves_nothing_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = |name: &str, len: usize, digit: char| {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(len as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, &vec![0u8; len][..]).unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
            let path = dir.path().join(name.replace('/', "-"));
            std::fs::write(&path, gz.finish().unwrap()).unwrap();
            (format!("sha256:{}", digit.to_string().repeat(64)), path)
        };
        let limits = Limits { max_bytes: 4 << 20, max_entries: 10 };
        // Two layers of 3 MiB: each fits, together they do not.
        let blobs = [layer("disk/a.img", 3 << 20, 'a'), layer("disk/b.img", 3 << 20, 'c')];
        let tree = store.unpacked_path(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let error = unpack_image(&store, &tree, &blobs, limits).unwrap_err();
        let message = crate::errors::with_causes(&error);
        assert!(message.contains("unpacks to more than 4 MiB (the node's limit, --max-image-size)"), "{message}");
        assert!(!tree.exists());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "nothing left in tmp/");

        unpack_image(&store, &tree, &blobs[..1], limits).unwrap();
        assert_eq!(std::fs::metadata(tree.join("disk/a.img")).unwrap().len(), 3 << 20);
    }

    #[test]
    fn docker_config_credentials_by_host() {
        let json = br#"{"auths":{"https://127.0.0.1:5000/v1/":{"auth":"dXNlcjpwYXNz"},
                       "index.docker.io":{"username":"hub","password":"secret"}}}"#;
        let config = DockerConfig::parse("creds", json).unwrap();
        let local = ImageRef::parse("127.0.0.1:5000/a:1").unwrap();
        assert_eq!(
            format!("{:?}", config.auth_for("127.0.0.1:5000", &local)),
            format!("{:?}", RegistryAuth::Basic("user".into(), "pass".into()))
        );
        let hub = ImageRef::parse("busybox").unwrap();
        let via_mirror = config.auth_for("mirror:5000", &hub);
        assert_eq!(format!("{via_mirror:?}"), format!("{:?}", RegistryAuth::Basic("hub".into(), "secret".into())));
        let other = ImageRef::parse("quay.io/a/b").unwrap();
        assert!(matches!(config.auth_for("quay.io", &other), RegistryAuth::Anonymous));
        for bad in [&b"{"[..], br#"{"auths":{"h":{"auth":"!!"}}}"#, br#"{"auths":{"h":{}}}"#] {
            assert!(DockerConfig::parse("creds", bad).is_err());
        }
    }
}
