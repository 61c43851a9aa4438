//! `kvmlet vm-process`: one VM, started by the node agent (not by hand).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vmm::seccomp::{self, SeccompMode};

use crate::vmprocess::server;
use crate::vmprocess::StateDir;

#[derive(Debug, Args)]
pub struct VmProcessArgs {
    /// The VM's state directory (RUN_DIR/vms/<uid>), holding vm.json.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// What a syscall outside its thread's seccomp allow-list does: `kill`
    /// stops the VM process naming the syscall, `log` lets it run and has
    /// the kernel log it (audit type=1326), `off` installs no filter.
    #[arg(long, value_name = "MODE", default_value = "kill")]
    pub seccomp: SeccompMode,
}

pub fn main(args: VmProcessArgs) -> anyhow::Result<ExitCode> {
    // The filters are built here; the control thread enters its own in
    // `server::run`, once it has joined the VM's network namespace.
    seccomp::configure(args.seccomp)?;
    match server::run(&StateDir::open(args.state_dir)) {
        Ok(exit) => Ok(ExitCode::from(exit.kind.exit_code())),
        // One line, causes included and no backtrace: the node reports the
        // last line of this log as the reason the VM process died.
        Err(e) => {
            eprintln!("kvmlet vm-process: {}", crate::errors::with_causes(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}
