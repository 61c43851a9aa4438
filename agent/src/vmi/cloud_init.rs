//! KubeVirt's `cloudInitNoCloud` rules, in one place for the node and for
//! `kvmlet run` / `kvmlet nocloud`: where user data and network data come
//! from, the 2048-byte limit on inline and base64 data, the Secret keys,
//! and the seed's meta-data (`instance-id` = the firmware UUID, so it stays
//! the same across restarts; `local-hostname` = `spec.hostname` or the VMI
//! name up to its first dot). `vmm::nocloud` only writes the image.

use base64::Engine;
use proto::kubevirt::CloudInitNoCloudSource;
use uuid::Uuid;
use vmm::nocloud::NoCloudSeed;

/// KubeVirt's limit for inline and base64 data (after decoding).
pub const MAX_INLINE_DATA: usize = 2048;
/// Longest `local-hostname` (a DNS label).
const MAX_HOSTNAME: usize = 63;
/// The serial of the seed disk when its disk names none.
pub const SEED_SERIAL: &str = "cidata";
/// Keys of a `secretRef` Secret holding user data, in the order tried.
pub const USER_DATA_KEYS: [&str; 2] = ["userdata", "userData"];
/// Keys of a `networkDataSecretRef` Secret holding network data, in the order tried.
pub const NETWORK_DATA_KEYS: [&str; 2] = ["networkdata", "networkData"];

/// The fields of a `cloudInitNoCloud` volume with its Secrets' contents
/// (resolved by the caller, who can read Secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudInitNoCloud {
    pub user_data: Option<String>,
    pub user_data_base64: Option<String>,
    /// Contents of the Secret named by `secretRef`.
    pub user_data_secret: Option<Vec<u8>>,
    pub network_data: Option<String>,
    pub network_data_base64: Option<String>,
    /// Contents of the Secret named by `networkDataSecretRef`.
    pub network_data_secret: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("cloudInitNoCloud: exactly one of userData, userDataBase64 and secretRef must be set ({0} are)")]
    UserDataSources(usize),
    #[error(
        "cloudInitNoCloud: at most one of networkData, networkDataBase64 and networkDataSecretRef may be set ({0} are)"
    )]
    NetworkDataSources(usize),
    #[error("cloudInitNoCloud.{field}: {len} bytes exceed the {MAX_INLINE_DATA} byte limit")]
    TooLong { field: &'static str, len: usize },
    #[error("cloudInitNoCloud.{field}: not valid base64")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
}

fn count(sources: &[bool]) -> usize {
    sources.iter().filter(|set| **set).count()
}

fn inline(field: &'static str, data: &str) -> Result<Vec<u8>, SourceError> {
    if data.len() > MAX_INLINE_DATA {
        return Err(SourceError::TooLong { field, len: data.len() });
    }
    Ok(data.as_bytes().to_vec())
}

fn decoded(field: &'static str, data: &str) -> Result<Vec<u8>, SourceError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|source| SourceError::Base64 { field, source })?;
    if bytes.len() > MAX_INLINE_DATA {
        return Err(SourceError::TooLong { field, len: bytes.len() });
    }
    Ok(bytes)
}

impl CloudInitNoCloud {
    /// The volume's fields, with the Secrets' contents where it refers to them.
    pub fn new(
        source: &CloudInitNoCloudSource,
        user_data_secret: Option<Vec<u8>>,
        network_data_secret: Option<Vec<u8>>,
    ) -> CloudInitNoCloud {
        CloudInitNoCloud {
            user_data: source.user_data.clone(),
            user_data_base64: source.user_data_base64.clone(),
            user_data_secret,
            network_data: source.network_data.clone(),
            network_data_base64: source.network_data_base64.clone(),
            network_data_secret,
        }
    }

    /// Checks what can be checked without reading Secrets (a referenced
    /// Secret counts as a source, its contents are the node's to read).
    pub fn check(source: &CloudInitNoCloudSource) -> Result<(), SourceError> {
        let placeholder = |r: &Option<proto::kubevirt::LocalObjectReference>| r.as_ref().map(|_| Vec::new());
        let fields = CloudInitNoCloud::new(
            source,
            placeholder(&source.secret_ref),
            placeholder(&source.network_data_secret_ref),
        );
        fields.resolve().map(drop)
    }

    /// The user data and optional network data, or the first reason they are unusable.
    pub fn resolve(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), SourceError> {
        let users =
            count(&[self.user_data.is_some(), self.user_data_base64.is_some(), self.user_data_secret.is_some()]);
        if users != 1 {
            return Err(SourceError::UserDataSources(users));
        }
        let networks = count(&[
            self.network_data.is_some(),
            self.network_data_base64.is_some(),
            self.network_data_secret.is_some(),
        ]);
        if networks > 1 {
            return Err(SourceError::NetworkDataSources(networks));
        }
        let user = match (&self.user_data, &self.user_data_base64, &self.user_data_secret) {
            (Some(data), _, _) => inline("userData", data)?,
            (_, Some(data), _) => decoded("userDataBase64", data)?,
            (_, _, Some(data)) => data.clone(),
            _ => unreachable!("exactly one user-data source was counted"),
        };
        let network = match (&self.network_data, &self.network_data_base64, &self.network_data_secret) {
            (Some(data), _, _) => Some(inline("networkData", data)?),
            (_, Some(data), _) => Some(decoded("networkDataBase64", data)?),
            (_, _, Some(data)) => Some(data.clone()),
            _ => None,
        };
        Ok((user, network))
    }
}

/// A seed's `instance-id`: the firmware UUID, so cloud-init sees the same
/// instance across restarts (and a new one when the UUID changes).
pub fn instance_id(firmware_uuid: &Uuid) -> String {
    firmware_uuid.to_string()
}

/// `local-hostname` as KubeVirt chooses it: `spec.hostname` if set, else the
/// VMI name up to its first dot; at most 63 characters.
pub fn local_hostname(vmi_name: &str, hostname: Option<&str>) -> String {
    let name = hostname.filter(|h| !h.is_empty()).unwrap_or_else(|| vmi_name.split('.').next().unwrap_or(vmi_name));
    name.chars().take(MAX_HOSTNAME).collect()
}

/// The seed's files: `meta-data` is JSON, as KubeVirt writes it, with
/// `instance-id` and (when given) `local-hostname`.
pub fn seed(
    instance_id: &str,
    hostname: Option<&str>,
    user_data: Vec<u8>,
    network_config: Option<Vec<u8>>,
) -> NoCloudSeed {
    let mut meta = serde_json::Map::new();
    meta.insert("instance-id".into(), instance_id.into());
    if let Some(hostname) = hostname {
        meta.insert("local-hostname".into(), hostname.into());
    }
    let mut meta_data = serde_json::to_vec_pretty(&meta).expect("a map of strings serializes");
    meta_data.push(b'\n');
    NoCloudSeed { meta_data, user_data, network_config }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_USER_DATA_BASE64: &str = "IyEvYmluL3NoCgplY2hvICdwcmludGVkIGZyb20gY2xvdWQtaW5pdCB1c2VyZGF0YScK";

    #[test]
    fn base64_user_data_decodes() {
        let volume = CloudInitNoCloud { user_data_base64: Some(SEED_USER_DATA_BASE64.into()), ..Default::default() };
        let (user, network) = volume.resolve().unwrap();
        assert_eq!(user, b"#!/bin/sh\n\necho 'printed from cloud-init userdata'\n");
        assert_eq!(network, None);
    }

    #[test]
    fn each_source_kind_is_accepted() {
        let inline = CloudInitNoCloud {
            user_data: Some("#cloud-config\n".into()),
            network_data_secret: Some(b"version: 2\n".to_vec()),
            ..Default::default()
        };
        assert_eq!(inline.resolve().unwrap(), (b"#cloud-config\n".to_vec(), Some(b"version: 2\n".to_vec())));
        let secret = CloudInitNoCloud { user_data_secret: Some(vec![b'x'; 10_000]), ..Default::default() };
        assert_eq!(secret.resolve().unwrap().0.len(), 10_000, "Secrets have no inline limit");
    }

    #[test]
    fn kubevirt_rules_are_enforced() {
        let none = CloudInitNoCloud::default();
        assert_eq!(none.resolve(), Err(SourceError::UserDataSources(0)));
        let two = CloudInitNoCloud {
            user_data: Some("a".into()),
            user_data_base64: Some("YQ==".into()),
            ..Default::default()
        };
        assert_eq!(two.resolve(), Err(SourceError::UserDataSources(2)));
        let nets = CloudInitNoCloud {
            user_data: Some("a".into()),
            network_data: Some("n".into()),
            network_data_base64: Some("bg==".into()),
            ..Default::default()
        };
        assert_eq!(nets.resolve(), Err(SourceError::NetworkDataSources(2)));
        let long = CloudInitNoCloud { user_data: Some("x".repeat(2049)), ..Default::default() };
        assert_eq!(long.resolve(), Err(SourceError::TooLong { field: "userData", len: 2049 }));
        let bad = CloudInitNoCloud { user_data_base64: Some("not base64!".into()), ..Default::default() };
        let error = bad.resolve().unwrap_err();
        assert_eq!(error.to_string(), "cloudInitNoCloud.userDataBase64: not valid base64");
        assert!(std::error::Error::source(&error).is_some(), "the decoder's error is kept as the source");
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 2049]);
        let big =
            CloudInitNoCloud { user_data: Some("a".into()), network_data_base64: Some(big), ..Default::default() };
        assert_eq!(big.resolve(), Err(SourceError::TooLong { field: "networkDataBase64", len: 2049 }));
    }

    #[test]
    fn every_field_names_itself_in_its_error() {
        let encoded_2049 = base64::engine::general_purpose::STANDARD.encode(vec![b'u'; 2049]);
        let long_b64 = CloudInitNoCloud { user_data_base64: Some(encoded_2049), ..Default::default() };
        assert_eq!(long_b64.resolve(), Err(SourceError::TooLong { field: "userDataBase64", len: 2049 }));
        let long_net = CloudInitNoCloud {
            user_data: Some("a".into()),
            network_data: Some("n".repeat(2049)),
            ..Default::default()
        };
        let err = long_net.resolve().unwrap_err();
        assert_eq!(err, SourceError::TooLong { field: "networkData", len: 2049 });
        assert_eq!(err.to_string(), "cloudInitNoCloud.networkData: 2049 bytes exceed the 2048 byte limit");
        let bad_net = CloudInitNoCloud {
            user_data: Some("a".into()),
            network_data_base64: Some("%%%".into()),
            ..Default::default()
        };
        assert!(matches!(bad_net.resolve(), Err(SourceError::Base64 { field: "networkDataBase64", .. })));
        let secret_and_inline = CloudInitNoCloud {
            user_data: Some("a".into()),
            user_data_secret: Some(b"b".to_vec()),
            ..Default::default()
        };
        let err = secret_and_inline.resolve().unwrap_err();
        assert_eq!(err, SourceError::UserDataSources(2));
        assert!(err.to_string().contains("userData, userDataBase64 and secretRef"), "{err}");
        let three_nets = CloudInitNoCloud {
            user_data: Some("a".into()),
            network_data: Some("n".into()),
            network_data_base64: Some("bg==".into()),
            network_data_secret: Some(b"n".to_vec()),
            ..Default::default()
        };
        assert_eq!(three_nets.resolve(), Err(SourceError::NetworkDataSources(3)));
        // Exactly at the limit is allowed, for both kinds.
        let at_limit = CloudInitNoCloud {
            user_data: Some("u".repeat(MAX_INLINE_DATA)),
            network_data_base64: Some(base64::engine::general_purpose::STANDARD.encode(vec![b'n'; MAX_INLINE_DATA])),
            ..Default::default()
        };
        let (user, network) = at_limit.resolve().unwrap();
        assert_eq!((user.len(), network.map(|n| n.len())), (MAX_INLINE_DATA, Some(MAX_INLINE_DATA)));
    }

    #[test]
    fn check_counts_secret_references_without_reading_them() {
        let source = |v: serde_json::Value| -> CloudInitNoCloudSource { serde_json::from_value(v).unwrap() };
        assert_eq!(CloudInitNoCloud::check(&source(serde_json::json!({"secretRef": {"name": "s"}}))), Ok(()));
        let both = source(serde_json::json!({"secretRef": {"name": "s"}, "userData": "x"}));
        assert_eq!(CloudInitNoCloud::check(&both), Err(SourceError::UserDataSources(2)));
        let long = source(serde_json::json!({"userData": "x".repeat(3000)}));
        assert_eq!(CloudInitNoCloud::check(&long), Err(SourceError::TooLong { field: "userData", len: 3000 }));
    }

    #[test]
    fn hostname_defaults_to_the_first_label_of_the_name() {
        assert_eq!(local_hostname("vm-cirros", None), "vm-cirros");
        assert_eq!(local_hostname("web.example.com", None), "web");
        assert_eq!(local_hostname("web.example.com", Some("db")), "db");
        assert_eq!(local_hostname("web", Some("")), "web");
        assert_eq!(local_hostname(&"a".repeat(80), None).len(), 63);
    }

    #[test]
    fn meta_data_carries_instance_id_and_hostname() {
        let uuid = Uuid::parse_str("5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10").unwrap();
        let seed = seed(&instance_id(&uuid), Some("vm-cirros"), b"#!/bin/sh\n".to_vec(), None);
        let meta: serde_json::Value = serde_json::from_slice(&seed.meta_data).unwrap();
        assert_eq!(meta["instance-id"], "5d1c1b34-7f0e-4a5e-9c61-4a2f3b9e8d10");
        assert_eq!(meta["local-hostname"], "vm-cirros");
        assert_eq!(seed.user_data, b"#!/bin/sh\n");
        let bare = super::seed("x\"y", None, Vec::new(), None);
        let meta: serde_json::Value = serde_json::from_slice(&bare.meta_data).unwrap();
        assert_eq!(meta["instance-id"], "x\"y");
        assert!(meta.get("local-hostname").is_none());
    }
}
