//! `kvmlet firmware-dump`: the ACPI tables and SMBIOS data a VM would see.

use std::path::PathBuf;

use clap::Args;

use super::vm_args::VmArgs;

#[derive(Debug, Args)]
pub struct FirmwareDumpArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Directory to write `<SIG>.dat` tables and `smbios.bin` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn main(args: FirmwareDumpArgs) -> anyhow::Result<()> {
    let _ = (&args.vm, &args.out);
    anyhow::bail!("kvmlet firmware-dump: firmware tables are not built yet")
}
