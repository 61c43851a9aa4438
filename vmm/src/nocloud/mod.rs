//! The cloud-init NoCloud seed disk: an ISO 9660 image labelled `cidata`
//! holding `meta-data`, `user-data` and, when given, `network-config`, as
//! cloud-init's NoCloud datasource reads it. Files in, image out: what goes
//! into the files (KubeVirt's sources, limits and meta-data keys) is the
//! caller's business.

mod iso9660;

use std::path::Path;

pub use iso9660::IsoError;

/// The volume label cloud-init looks for.
pub const VOLUME_LABEL: &str = "cidata";

/// The files of one seed, as their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudSeed {
    /// `meta-data`.
    pub meta_data: Vec<u8>,
    /// `user-data`.
    pub user_data: Vec<u8>,
    /// `network-config`, present only when given.
    pub network_config: Option<Vec<u8>>,
}

impl NoCloudSeed {
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
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Born private: the seed may hold secrets from user data.
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            file.write_all(&image)?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            SeedWriteError::Io { path: path.to_path_buf(), source }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeedWriteError {
    #[error(transparent)]
    Image(#[from] IsoError),
    #[error("write {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(network_config: Option<Vec<u8>>) -> NoCloudSeed {
        NoCloudSeed { meta_data: b"instance-id: i\n".to_vec(), user_data: b"u".to_vec(), network_config }
    }

    #[test]
    fn network_config_is_only_present_when_given() {
        let without = seed(None).image().unwrap();
        let with = seed(Some(b"version: 2\n".to_vec())).image().unwrap();
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
        let seed = seed(None);
        seed.write_image(&out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), seed.image().unwrap());
        assert_eq!(std::fs::read(&neighbour).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file is left behind");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "born private");
    }
}
