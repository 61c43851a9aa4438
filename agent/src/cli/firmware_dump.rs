//! `kvmlet firmware-dump`: the ACPI tables and SMBIOS data a VM would see.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::vm_args::VmArgs;

#[derive(Debug, Args)]
pub struct FirmwareDumpArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Directory to write `<SIGNATURE>.dat` tables, `RSDP.dat` and `smbios.bin` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn main(args: FirmwareDumpArgs) -> anyhow::Result<()> {
    let prepared = args.vm.prepare()?;
    prepared.config.validate()?;
    let firmware = vmm::firmware::build(&prepared.config)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = args.out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        println!("{}", path.display());
        anyhow::Ok(())
    };
    write("RSDP.dat", &firmware.rsdp.bytes)?;
    for table in &firmware.acpi_tables {
        write(&format!("{}.dat", table.name()), &table.bytes)?;
    }
    write("smbios.bin", &firmware.smbios_dump())
}
