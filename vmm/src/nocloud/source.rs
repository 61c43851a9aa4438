//! Where a seed's user data and network data come from: the fields of a
//! KubeVirt `cloudInitNoCloud` volume, validated the way KubeVirt does.

use base64::Engine;

/// KubeVirt's limit for inline and base64 data (after decoding).
pub const MAX_INLINE_DATA: usize = 2048;
/// Longest `local-hostname` (a DNS label).
const MAX_HOSTNAME: usize = 63;

/// The fields of a `cloudInitNoCloud` volume. Secret references are resolved
/// by the caller (the node agent reads the Secret) and passed as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudInitNoCloud {
    pub user_data: Option<String>,
    pub user_data_base64: Option<String>,
    /// Contents of the Secret named by `secretRef` (key `userdata` or `userData`).
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
    #[error("cloudInitNoCloud.{field}: not valid base64: {reason}")]
    Base64 { field: &'static str, reason: String },
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
        .map_err(|e| SourceError::Base64 { field, reason: e.to_string() })?;
    if bytes.len() > MAX_INLINE_DATA {
        return Err(SourceError::TooLong { field, len: bytes.len() });
    }
    Ok(bytes)
}

impl CloudInitNoCloud {
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

/// `local-hostname` as KubeVirt chooses it: `spec.hostname` if set, else the
/// VMI name up to its first dot; at most 63 characters.
pub fn default_hostname(vmi_name: &str, hostname: Option<&str>) -> String {
    let name = hostname.filter(|h| !h.is_empty()).unwrap_or_else(|| vmi_name.split('.').next().unwrap_or(vmi_name));
    name.chars().take(MAX_HOSTNAME).collect()
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
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .starts_with("cloudInitNoCloud.userDataBase64: not valid base64"));
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
    fn hostname_defaults_to_the_first_label_of_the_name() {
        assert_eq!(default_hostname("vm-cirros", None), "vm-cirros");
        assert_eq!(default_hostname("web.example.com", None), "web");
        assert_eq!(default_hostname("web.example.com", Some("db")), "db");
        assert_eq!(default_hostname("web", Some("")), "web");
        assert_eq!(default_hostname(&"a".repeat(80), None).len(), 63);
    }
}
