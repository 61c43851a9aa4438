//! `kvmlet vm-process`: one VM, started by the node agent (not by hand).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use proto::debug::VmExitKind;

use crate::vmprocess::server;
use crate::vmprocess::StateDir;

#[derive(Debug, Args)]
pub struct VmProcessArgs {
    /// The VM's state directory (RUN_DIR/vms/<uid>), holding vm.json.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

pub fn main(args: VmProcessArgs) -> anyhow::Result<ExitCode> {
    let exit = server::run(&StateDir::open(args.state_dir))?;
    Ok(match exit.kind {
        VmExitKind::PowerOff => ExitCode::SUCCESS,
        VmExitKind::TripleFault => ExitCode::from(4),
        VmExitKind::Error => ExitCode::from(5),
        VmExitKind::Killed => ExitCode::from(130),
    })
}
