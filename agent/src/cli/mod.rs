//! Command-line interface: one module per subcommand.

mod firmware_dump;
mod nocloud;
mod run;
mod standalone;
mod vm_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "kvmlet", version, about = "Runs KubeVirt VirtualMachines as rust-vmm microVMs on /dev/kvm")]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KVMLET_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot one VM in the foreground with its serial console on the terminal.
    Run(run::RunArgs),
    /// Write the ACPI tables and SMBIOS data a VM with these flags would see.
    FirmwareDump(firmware_dump::FirmwareDumpArgs),
    /// Write a cloud-init NoCloud seed image (like cloud-localds).
    Nocloud(nocloud::NocloudArgs),
    /// Serve the kubevirt.io/v1 API on this machine (kubectl --kubeconfig DIR/kubeconfig).
    Standalone(standalone::StandaloneArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run(args) => run::main(args),
            Command::FirmwareDump(args) => firmware_dump::main(args).map(|()| ExitCode::SUCCESS),
            Command::Nocloud(args) => nocloud::main(args).map(|()| ExitCode::SUCCESS),
            Command::Standalone(args) => standalone::main(args).map(|()| ExitCode::SUCCESS),
        }
    }
}

/// Logs go to standard error so that a VM's console can own standard output.
/// `RUST_LOG` selects levels (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
