//! The cloud-init NoCloud seed disk: an ISO 9660 image labelled `cidata`
//! holding `meta-data`, `user-data` and, when given, `network-config`, as
//! cloud-init's NoCloud datasource reads it (and as KubeVirt builds it).

mod iso9660;
mod source;

use std::path::Path;

pub use iso9660::IsoError;
pub use source::{default_hostname, CloudInitNoCloud, SourceError, MAX_INLINE_DATA};

/// The volume label cloud-init looks for.
pub const VOLUME_LABEL: &str = "cidata";

/// The files of one seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudSeed {
    pub meta_data: Vec<u8>,
    pub user_data: Vec<u8>,
    pub network_config: Option<Vec<u8>>,
}

impl NoCloudSeed {
    /// `meta-data` is JSON, as KubeVirt writes it: `instance-id` (the firmware
    /// UUID, so it stays the same across restarts) and `local-hostname`.
    pub fn new(instance_id: &str, hostname: Option<&str>, user_data: Vec<u8>, network_config: Option<Vec<u8>>) -> Self {
        let mut meta = serde_json::Map::new();
        meta.insert("instance-id".into(), instance_id.into());
        if let Some(hostname) = hostname {
            meta.insert("local-hostname".into(), hostname.into());
        }
        let mut meta_data = serde_json::to_vec_pretty(&meta).expect("a map of strings serializes");
        meta_data.push(b'\n');
        NoCloudSeed { meta_data, user_data, network_config }
    }

    /// The ISO 9660 image.
    pub fn image(&self) -> Result<Vec<u8>, IsoError> {
        let mut files = vec![
            iso9660::File { name: "meta-data", data: &self.meta_data },
            iso9660::File { name: "user-data", data: &self.user_data },
        ];
        if let Some(network) = &self.network_config {
            files.push(iso9660::File { name: "network-config", data: network });
        }
        iso9660::build(VOLUME_LABEL, &files)
    }

    /// Writes the image to `path` (through a temporary file next to it, so a
    /// reader never sees half an image). The temporary name carries our pid,
    /// so it never collides with a file the caller owns.
    pub fn write_image(&self, path: &Path) -> Result<(), SeedWriteError> {
        let image = self.image()?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        std::fs::write(&tmp, image).and_then(|()| std::fs::rename(&tmp, path)).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            SeedWriteError::Io { path: path.to_path_buf(), source }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeedWriteError {
    #[error(transparent)]
    Image(#[from] IsoError),
    #[error("write {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_carries_instance_id_and_hostname() {
        let seed = NoCloudSeed::new("5d1c1b34", Some("vm-cirros"), b"#!/bin/sh\n".to_vec(), None);
        let meta: serde_json::Value = serde_json::from_slice(&seed.meta_data).unwrap();
        assert_eq!(meta["instance-id"], "5d1c1b34");
        assert_eq!(meta["local-hostname"], "vm-cirros");
        let bare = NoCloudSeed::new("x\"y", None, Vec::new(), None);
        let meta: serde_json::Value = serde_json::from_slice(&bare.meta_data).unwrap();
        assert_eq!(meta["instance-id"], "x\"y");
        assert!(meta.get("local-hostname").is_none());
    }

    #[test]
    fn network_config_is_only_present_when_given() {
        let without = NoCloudSeed::new("i", None, b"u".to_vec(), None).image().unwrap();
        let with = NoCloudSeed::new("i", None, b"u".to_vec(), Some(b"version: 2\n".to_vec())).image().unwrap();
        let contains = |image: &[u8], needle: &[u8]| image.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(&without, b"network-config"));
        assert!(contains(&with, b"network-config"));
    }

    #[test]
    fn write_image_leaves_neighbouring_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seed.iso");
        let neighbour = dir.path().join("seed.tmp");
        std::fs::write(&neighbour, b"mine").unwrap();
        let seed = NoCloudSeed::new("i", None, b"u".to_vec(), None);
        seed.write_image(&out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), seed.image().unwrap());
        assert_eq!(std::fs::read(&neighbour).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file is left behind");
    }
}
