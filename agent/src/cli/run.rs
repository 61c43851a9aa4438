//! `kvmlet run`: one VM in the foreground, its serial console on standard
//! output, like `cloud-hypervisor --kernel …`.

use std::process::ExitCode;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use vmm::jail::JailConfig;
use vmm::seccomp::{self, SeccompMode, ThreadKind};
use vmm::{ExitReason, HostFiles, Vm, VmHandle};

use super::vm_args::VmArgs;

#[derive(Debug, Args)]
#[command(after_help = "\
Exit status:
  0    the guest powered off
  1    the VM could not be built or started (the message names the problem)
  3    the guest asked to reboot (kvmlet run does not restart it)
  4    a vCPU triple-faulted
  5    the VMM stopped on an error while the guest ran
  130  killed by a second Ctrl-C (or SIGTERM)
  159  a thread made a syscall outside its seccomp allow-list (the message names it)

Ctrl-C (or SIGTERM) presses the ACPI power button; a second one kills the VM.")]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// What a syscall outside its thread's seccomp allow-list does: `kill`
    /// stops the VM naming the syscall, `log` lets it run and has the
    /// kernel log it (audit type=1326), `off` installs no filter.
    #[arg(long, value_name = "MODE", default_value = "kill")]
    pub seccomp: SeccompMode,
    /// Test hook: once the guest runs, the main thread makes a syscall
    /// outside its allow-list (getpgrp), to check that seccomp stops and
    /// names it. Hidden; only tests pass it.
    #[arg(long, hide = true)]
    pub test_forbidden_syscall: bool,
    /// Run as root without the VM jail (namespaces, unprivileged user,
    /// Landlock); for local experiments only. Without root there is no jail.
    #[arg(long)]
    pub no_jail: bool,
    /// The unprivileged user and group the jailed VM runs as (numeric, never 0).
    #[arg(long, value_name = "UID:GID", default_value = "107:107")]
    pub vm_user: vmm::jail::VmUser,
    /// Test hook: once jailed, try CHECK (open, connect, forbidden-syscall)
    /// and print the outcome on standard error. Hidden; only tests pass it.
    #[arg(long, hide = true, value_name = "CHECK")]
    pub test_jail_check: Option<proto::debug::JailCheck>,
}

pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Taken before any thread exists so that every thread inherits the mask
    // and only the signal thread below sees these signals.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    let jailed = !args.no_jail && nix::unistd::geteuid().is_root();
    if jailed {
        // The VM runs on as pid 1 of its own PID namespace; this process
        // stays outside, passes Ctrl-C and SIGTERM on and exits as it does.
        vmm::jail::pid_namespace::enter(signals)?;
    }

    seccomp::configure(args.seccomp)?;
    let mut prepared = args.vm.prepare()?;
    // A machine without a UUID is no machine a guest can tell apart: give it
    // a fresh one, as virt-install and cloud-hypervisor do.
    prepared.config.uuid.get_or_insert_with(uuid::Uuid::new_v4);
    prepared.config.console.stdout = true;
    let files = HostFiles::open(&prepared.config)?;
    // Opened: the seed's temporary file can go before the jail hides it.
    let config = prepared.into_config();
    if !jailed {
        tracing::info!("running without the VM jail");
    } else {
        // Its own empty network namespace too: a tap is already open.
        let jail = JailConfig { root: std::env::temp_dir(), user: args.vm_user, new_network: true };
        let landlock = vmm::jail::enter(&jail)?;
        tracing::debug!(user = %args.vm_user, ?landlock, "jailed");
    }
    seccomp::enter(ThreadKind::Control)?;
    if let Some(check) = args.test_jail_check {
        eprintln!("jail check: {}", crate::vmprocess::jail_checks::attempt(check));
    }
    let mut vm = Vm::with_files(config, files)?;
    spawn_signal_thread(signals, vm.handle());
    vm.start()?;
    if args.test_forbidden_syscall {
        tracing::warn!("test hook: calling getpgrp, outside the control thread's seccomp list");
        let _ = nix::unistd::getpgrp();
    }
    let reason = vm.wait();
    Ok(report(&reason))
}

/// First signal: the power button; the next one: kill.
fn spawn_signal_thread(signals: SigSet, vm: VmHandle) {
    std::thread::spawn(move || {
        let mut pressed = false;
        while let Ok(signal) = signals.wait() {
            if pressed {
                tracing::warn!(%signal, "killing the VM");
                vm.kill();
            } else {
                tracing::info!(%signal, "pressing the power button (again to kill)");
                if let Err(e) = vm.power_button() {
                    tracing::error!(error = %e, "power button failed; killing the VM");
                    vm.kill();
                }
                pressed = true;
            }
        }
    });
}

fn report(reason: &ExitReason) -> ExitCode {
    let code = crate::vmprocess::server::exit_kind(reason).exit_code();
    if code != 0 {
        eprintln!("kvmlet run: {reason}");
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use proto::debug::VmExitKind;

    #[test]
    fn the_help_lists_the_exit_statuses_the_command_returns() {
        let help = crate::cli::Cli::command().find_subcommand_mut("run").unwrap().render_long_help().to_string();
        for (kind, words) in [
            (VmExitKind::PowerOff, "the guest powered off"),
            (VmExitKind::Reboot, "the guest asked to reboot"),
            (VmExitKind::TripleFault, "a vCPU triple-faulted"),
            (VmExitKind::Error, "the VMM stopped on an error"),
            (VmExitKind::Killed, "killed by a second Ctrl-C"),
        ] {
            let line = format!("{:<5}{words}", kind.exit_code());
            assert!(help.contains(&line), "{line:?} missing from:\n{help}");
        }
    }
}
