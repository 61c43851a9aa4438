//! `kvmlet nocloud`: a cloud-init NoCloud seed image on its own.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct NocloudArgs {
    /// cloud-init user data.
    #[arg(long, value_name = "FILE")]
    pub user_data: PathBuf,
    /// cloud-init network configuration.
    #[arg(long, value_name = "FILE")]
    pub network_data: Option<PathBuf>,
    /// `instance-id` in meta-data (default: a new UUID).
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// `local-hostname` in meta-data.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Where to write the image.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn main(args: NocloudArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("kvmlet nocloud: the seed builder is not built yet")
}
