//! `kvmlet`: runs KubeVirt VirtualMachines as rust-vmm microVMs.

use std::process::ExitCode;

use agent::cli;
use clap::Parser;

/// Arenas for the C allocator: see `vmm::malloc`.
const MALLOC_ARENAS: i32 = 2;

fn main() -> anyhow::Result<ExitCode> {
    vmm::malloc::limit_arenas(MALLOC_ARENAS);
    let cli = cli::Cli::parse();
    cli::init_logging(cli.global.log_format);
    cli.run()
}
