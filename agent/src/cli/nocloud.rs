//! `kvmlet nocloud`: a cloud-init NoCloud seed image on its own, like `cloud-localds`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::vmi::cloud_init;

/// cloud-localds's default instance id.
const DEFAULT_INSTANCE_ID: &str = "iid-local01";
/// Largest input file. Files have no KubeVirt limit (that is for manifest
/// fields), but a seed is read into memory and by cloud-init at boot; 16 MiB
/// is far beyond any real user data and stops a wrong path (a disk image)
/// early with a clear message.
const MAX_INPUT_FILE: u64 = 16 << 20;

#[derive(Debug, Args)]
pub struct NocloudArgs {
    /// cloud-init user data (any size; the KubeVirt 2048-byte limit applies to manifests only).
    #[arg(long, value_name = "FILE")]
    pub user_data: PathBuf,
    /// cloud-init network configuration, written as `network-config`.
    #[arg(long, value_name = "FILE")]
    pub network_data: Option<PathBuf>,
    /// `instance-id` in meta-data.
    #[arg(long, value_name = "ID", default_value = DEFAULT_INSTANCE_ID)]
    pub instance_id: String,
    /// `local-hostname` in meta-data (omitted when not given).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Where to write the image.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn main(args: NocloudArgs) -> anyhow::Result<()> {
    let read = |path: &PathBuf| -> anyhow::Result<Vec<u8>> {
        let size = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?.len();
        anyhow::ensure!(
            size <= MAX_INPUT_FILE,
            "{} is {size} bytes; at most {MAX_INPUT_FILE} are accepted",
            path.display()
        );
        std::fs::read(path).with_context(|| format!("read {}", path.display()))
    };
    let user_data = read(&args.user_data)?;
    let network = args.network_data.as_ref().map(read).transpose()?;
    let seed = cloud_init::seed(&args.instance_id, args.hostname.as_deref(), user_data, network);
    seed.write_image(&args.out)?;
    tracing::info!(out = %args.out.display(), instance_id = %args.instance_id, "wrote NoCloud seed");
    Ok(())
}
