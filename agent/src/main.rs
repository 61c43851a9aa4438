//! `kvmlet`: runs KubeVirt VirtualMachines as rust-vmm microVMs.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.log_format);
    cli.command.run()
}
