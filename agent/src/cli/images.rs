//! `kvmlet images`: the node's pulled images, read from the image directory
//! itself (no agent needed); `kvmlet images prune` removes the ones no VM uses.
//! A VM uses an image while its state directory `RUN_DIR/vms/<uid>` exists.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::images::store::Store;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// The node's image directory (as given to the agent).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kvmlet/images", env = "KVMLET_IMAGE_DIR", global = true)]
    pub image_dir: PathBuf,
    /// The node's run directory (VM state directories).
    #[arg(long, value_name = "DIR", default_value = "/run/kvmlet", env = "KVMLET_RUN_DIR", global = true)]
    pub run_dir: PathBuf,
    #[command(subcommand)]
    pub action: Option<ImagesAction>,
}

#[derive(Debug, Subcommand)]
pub enum ImagesAction {
    /// Remove images no VM uses, and the blobs only they needed.
    Prune,
}

pub fn main(args: ImagesArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(args.image_dir.is_dir(), "--image-dir {}: no such directory", args.image_dir.display());
    let store = Store::open(&args.image_dir).with_context(|| format!("--image-dir {}", args.image_dir.display()))?;
    let vms = crate::vmprocess::state_dir::vms_dir(&args.run_dir);
    let alive = |uid: &str| vms.join(uid).is_dir();
    match args.action {
        Some(ImagesAction::Prune) => {
            for image in store.prune(alive)? {
                println!("deleted {image}");
            }
        }
        None => {
            let mut out = String::from("REF\tDIGEST\tSIZE\tUSERS\n");
            for (image, record) in store.images() {
                store.drop_gone_users(&image, alive);
                let users = store.users(&image);
                let users = if users.is_empty() { "-".to_string() } else { users.join(",") };
                out.push_str(&format!("{image}\t{}\t{}\t{users}\n", record.digest, record.size));
            }
            super::print_out(&out)?;
        }
    }
    Ok(())
}
