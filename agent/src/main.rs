//! `kvmlet`: runs KubeVirt VirtualMachines as rust-vmm microVMs.

use std::process::ExitCode;

use agent::cli;
use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.global.log_format);
    cli.run()
}
