//! Command-line interface: one module per subcommand.

mod agent;
mod controller;
mod debug;
mod expose;
mod firmware_dump;
mod health;
mod images;
mod nocloud;
mod node_args;
mod run;
mod standalone;
mod systemd;
mod vm_args;
mod vm_commands;
mod vm_process;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "kvmlet", version, about = "Runs KubeVirt VirtualMachines as rust-vmm microVMs on /dev/kvm")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, before or after its name, as kubectl's and
/// virtctl's do (`kvmlet --kubeconfig F start vm` = `kvmlet start vm --kubeconfig F`).
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KVMLET_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Kubeconfig for commands that talk to an API (else KUBECONFIG,
    /// ~/.kube/config, or the in-cluster service account).
    #[arg(long, global = true, value_name = "FILE", env = "KVMLET_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Namespace of the VM or VMI a command names.
    #[arg(short, long, global = true, value_name = "NS", default_value = "default")]
    pub namespace: String,
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
    /// Serve the kubevirt.io/v1 API on this machine (kubectl --kubeconfig DIR/kubeconfig) and run its VMs.
    Standalone(standalone::StandaloneArgs),
    /// Run this node's VirtualMachineInstances as microVMs (the node agent).
    Agent(agent::AgentArgs),
    /// List the VMs on this node (through the agent's debugging socket).
    Ps(debug::PsArgs),
    /// Show one VM's state and VmConfig.
    Inspect(debug::VmiArgs),
    /// Attach to a VM's serial console (Ctrl-] detaches).
    Console(debug::VmiArgs),
    /// Run the VM controller and scheduler for a cluster (leader-elected through a Lease).
    Controller(controller::ControllerCmdArgs),
    /// Start a VirtualMachine (as virtctl start).
    Start(vm_commands::StartArgs),
    /// Stop a VirtualMachine (as virtctl stop).
    Stop(vm_commands::StopArgs),
    /// Restart a VirtualMachine's instance (as virtctl restart).
    Restart(vm_commands::RestartArgs),
    /// Expose a VirtualMachine or VMI as a new Service (as virtctl expose).
    Expose(expose::ExposeArgs),
    /// The node's pulled images (REF, DIGEST, SIZE, USERS); `prune` removes unused ones.
    Images(images::ImagesArgs),
    /// Print kvmlet's version.
    Version,
    /// Write a shell completion script to standard output (e.g. `kvmlet completions bash > /etc/bash_completion.d/kvmlet`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run one VM for the node agent (started by the agent, not by hand).
    #[command(hide = true)]
    VmProcess(vm_process::VmProcessArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let global = self.global;
        match self.command {
            Command::Run(args) => run::main(args),
            Command::Version => {
                println!("kvmlet {}", env!("CARGO_PKG_VERSION"));
                Ok(ExitCode::SUCCESS)
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "kvmlet", &mut script);
                print_out(&String::from_utf8_lossy(&script))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::FirmwareDump(args) => firmware_dump::main(args).map(|()| ExitCode::SUCCESS),
            Command::Nocloud(args) => nocloud::main(args).map(|()| ExitCode::SUCCESS),
            Command::Standalone(args) => standalone::main(args).map(|()| ExitCode::SUCCESS),
            Command::Agent(args) => agent::main(args, &global).map(|()| ExitCode::SUCCESS),
            Command::Ps(args) => debug::ps(args).map(|()| ExitCode::SUCCESS),
            Command::Inspect(args) => debug::inspect(args, &global.namespace).map(|()| ExitCode::SUCCESS),
            Command::Console(args) => debug::console(args, &global.namespace).map(|()| ExitCode::SUCCESS),
            Command::Controller(args) => controller::main(args, &global).map(|()| ExitCode::SUCCESS),
            Command::Start(args) => vm_commands::start_main(args, &global).map(|()| ExitCode::SUCCESS),
            Command::Stop(args) => vm_commands::stop_main(args, &global).map(|()| ExitCode::SUCCESS),
            Command::Restart(args) => vm_commands::restart_main(args, &global).map(|()| ExitCode::SUCCESS),
            Command::Expose(args) => expose::main(args, &global).map(|()| ExitCode::SUCCESS),
            Command::Images(args) => images::main(args).map(|()| ExitCode::SUCCESS),
            Command::VmProcess(args) => vm_process::main(args),
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

/// A client for the API named by `kubeconfig`, else found as kubectl finds
/// it (KUBECONFIG, ~/.kube/config) or in-cluster.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Prints to standard output; a reader that went away (`| head`) is not an error.
pub(crate) fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kvmlet").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn global_flags_go_before_or_after_the_command_as_with_kubectl() {
        for args in [
            &["--kubeconfig", "/k", "-n", "ns", "start", "vm"][..],
            &["start", "vm", "--kubeconfig", "/k", "-n", "ns"],
            &["--kubeconfig=/k", "start", "--namespace", "ns", "vm"],
        ] {
            let cli = parse(args);
            assert_eq!(cli.global.kubeconfig.as_deref(), Some(std::path::Path::new("/k")), "{args:?}");
            assert_eq!(cli.global.namespace, "ns", "{args:?}");
            assert!(matches!(cli.command, Command::Start(ref a) if a.target.vm == "vm"), "{args:?}");
        }
        let cli = parse(&["--log-format", "json", "-n", "team", "inspect", "db"]);
        assert!(matches!(cli.global.log_format, LogFormat::Json));
        assert_eq!(cli.global.namespace, "team");
        assert_eq!(parse(&["stop", "vm"]).global.namespace, "default");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
