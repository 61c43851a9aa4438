//! `kvmlet run`: one VM in the foreground.

use clap::Args;

use super::vm_args::VmArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    args.vm.to_config().validate()?;
    anyhow::bail!("kvmlet run: the VMM is not assembled yet")
}
