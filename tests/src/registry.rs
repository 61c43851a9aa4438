//! A real OCI registry for tests: Debian's `docker-registry` on 127.0.0.1
//! (a free port), optionally with htpasswd basic auth; images are OCI layouts
//! written here by hand (hostile layers included) and pushed with `skopeo copy`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_tool;

/// How `push_image` compresses layers.
#[derive(Debug, Clone, Copy)]
pub enum Compression {
    Gzip,
    Zstd,
}

pub struct Registry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    creds: Option<(String, String)>,
}

/// One tar entry of a layer: path, kind, contents, link target.
pub struct Entry {
    pub path: String,
    pub kind: u8,
    pub data: Vec<u8>,
    pub link: String,
}

impl Entry {
    pub fn file(path: &str, data: &[u8]) -> Entry {
        Entry { path: path.into(), kind: b'0', data: data.to_vec(), link: String::new() }
    }
    pub fn dir(path: &str) -> Entry {
        Entry { path: path.into(), kind: b'5', data: Vec::new(), link: String::new() }
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry { path: path.into(), kind: b'2', data: Vec::new(), link: target.into() }
    }
}

/// A tar archive written byte by byte (ustar), so tests can write names
/// that tools refuse (`../x`).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = [0u8; 512];
        header[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        let mode = if entry.kind == b'5' { "0000755\0" } else { "0000644\0" };
        header[100..108].copy_from_slice(mode.as_bytes());
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", entry.data.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = entry.kind;
        header[157..157 + entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&entry.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("a digest").to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Registry {
    /// A registry without auth.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that wants `user:password` (htpasswd, bcrypt).
    pub fn start_with(creds: Option<(&str, &str)>) -> Registry {
        Registry::start_inner(creds, false)
    }

    /// A registry serving HTTPS with a self-signed certificate (openssl).
    pub fn start_tls() -> Registry {
        Registry::start_inner(None, true)
    }

    fn start_inner(creds: Option<(&str, &str)>, tls: bool) -> Registry {
        let binary = require_tool("docker-registry", "docker-registry");
        require_tool("skopeo", "skopeo");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth = match creds {
            Some((user, password)) => {
                require_tool("htpasswd", "apache2-utils");
                let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().unwrap();
                assert!(out.status.success());
                std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
                format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", dir.path().join("htpasswd").display())
            }
            None => String::new(),
        };
        let tls = if tls {
            require_tool("openssl", "openssl");
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let out = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
            format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry =
            Registry { child: None, port, creds: creds.map(|(u, p)| (u.to_string(), p.to_string())), dir };
        let _ = binary;
        registry.resume();
        registry
    }

    /// Starts the registry process (again, on the same port and storage).
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the registry never listened: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the registry process (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The node flags that send docker.io through this registry over plain HTTP.
    pub fn mirror_flags(&self) -> Vec<String> {
        vec![
            "--registry-mirror".into(),
            format!("docker.io=http://{}", self.host()),
            "--insecure-registry".into(),
            self.host(),
        ]
    }

    /// Pushes an image whose layers are these tar archives (gzip-compressed)
    /// as `repository:tag` (e.g. `kubevirt/cirros-container-disk-demo:latest`).
    /// Returns the digests of the layers as pushed.
    pub fn push(&self, repository_tag: &str, layers: &[Vec<u8>]) -> Vec<String> {
        self.push_image(repository_tag, &[("amd64", layers.to_vec())], Compression::Gzip, false)
    }

    /// Pushes one manifest per (architecture, layers), as a multi-arch index
    /// when `index` is set. Returns the layer digests of the last manifest.
    pub fn push_image(
        &self,
        repository_tag: &str,
        images: &[(&str, Vec<Vec<u8>>)],
        compression: Compression,
        index: bool,
    ) -> Vec<String> {
        let layout = self.dir.path().join(format!("layout-{}", uuid::Uuid::new_v4().simple()));
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| -> (String, usize) {
            let temp = layout.join("blob.tmp");
            std::fs::write(&temp, bytes).unwrap();
            let hex = sha256(&temp);
            std::fs::rename(&temp, blobs.join(&hex)).unwrap();
            (format!("sha256:{hex}"), bytes.len())
        };
        let mut manifests = Vec::new();
        let mut last_layers = Vec::new();
        for (arch, layers) in images {
            let mut layer_descriptors = Vec::new();
            let mut diff_ids = Vec::new();
            for layer in layers {
                let raw = layout.join("raw.tar");
                std::fs::write(&raw, layer).unwrap();
                diff_ids.push(format!("sha256:{}", sha256(&raw)));
                let (tool, media_type) = match compression {
                    Compression::Gzip => (["gzip", "-n", "-c"], "application/vnd.oci.image.layer.v1.tar+gzip"),
                    Compression::Zstd => (["zstd", "-q", "-c"], "application/vnd.oci.image.layer.v1.tar+zstd"),
                };
                let compressed = Command::new(tool[0]).args(&tool[1..]).arg(&raw).output().unwrap().stdout;
                std::fs::remove_file(&raw).unwrap();
                let (digest, size) = put(&compressed);
                layer_descriptors.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
            }
            let config = serde_json::json!({
                "architecture": arch, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {},
            });
            let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
            let manifest = serde_json::json!({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
                "layers": layer_descriptors,
            });
            let (digest, size) = put(&serde_json::to_vec(&manifest).unwrap());
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            }));
            last_layers = layer_descriptors.iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
        }
        let top = if index {
            let list = serde_json::json!({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
            });
            let (digest, size) = put(&serde_json::to_vec(&list).unwrap());
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size})
        } else {
            manifests.pop().unwrap()
        };
        let mut top = top;
        top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "latest"});
        let layout_index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
        std::fs::write(layout.join("index.json"), serde_json::to_vec(&layout_index).unwrap()).unwrap();
        std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut skopeo = Command::new("skopeo");
        skopeo.args(["copy", "--all", "--preserve-digests", "--dest-tls-verify=false"]);
        if let Some((user, password)) = &self.creds {
            skopeo.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = skopeo
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/{repository_tag}", self.host()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        last_layers
    }

    /// The registry's stored file for a blob (to tamper with).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A layer holding `disk/<name>` with `contents`.
pub fn disk_layer(name: &str, contents: &[u8]) -> Vec<u8> {
    tar(&[Entry::dir("disk/"), Entry::file(&format!("disk/{name}"), contents)])
}

/// A TCP proxy to `upstream` that sends responses slowly (about 1 MiB/s),
/// so a test can act while a pull is under way. Runs until the runtime ends.
pub async fn slow_proxy(upstream: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
                let mut buffer = vec![0u8; 32 << 10];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            });
        }
    });
    address
}

/// `len` bytes that do not compress (xorshift), so a layer stays big.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
