//! TLS for the loopback TCP endpoint. kubectl sends bearer tokens only over
//! TLS, so standalone mode keeps its own small CA under `DIR/tls/`: created
//! once, so kubeconfigs and clients stay valid across restarts.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::private_files;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
}

/// What the server and its kubeconfig need.
pub struct ServingTls {
    pub acceptor: TlsAcceptor,
    /// The CA certificate (PEM) clients trust.
    pub ca_pem: String,
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    private_files::write_private(path, bytes)
        .map_err(|source| TlsError::Io { path: path.display().to_string(), source })
}

/// A CA and a certificate for 127.0.0.1 / localhost signed by it.
fn generate(dir: &Path) -> Result<(), TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(DnType::CommonName, "kvmlet standalone CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, "kvmlet standalone");
    let cert = params.signed_by(&key, &issuer)?;

    write_private(&dir.join("server.key.der"), &key.serialize_der())?;
    write_private(&dir.join("server.der"), cert.der())?;
    write_private(&dir.join("ca.pem"), ca_cert.pem().as_bytes())
}

pub fn load_or_create(data_dir: &Path) -> Result<ServingTls, TlsError> {
    let dir = data_dir.join("tls");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Io { path, source }
    };
    private_files::private_dir(&dir).map_err(io(&dir))?;
    if !dir.join("ca.pem").exists() {
        generate(&dir)?;
    }
    let read = |name: &str| private_files::read_private(&dir.join(name)).map_err(io(&dir.join(name)));
    let cert = CertificateDer::from(read("server.der")?);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read("server.key.der")?));
    let ca_pem = String::from_utf8_lossy(&read("ca.pem")?).into_owned();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServingTls { acceptor: TlsAcceptor::from(Arc::new(config)), ca_pem })
}
