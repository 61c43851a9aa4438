//! `kvmlet vm-process`: one VM, started by the node agent (not by hand).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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
    Ok(ExitCode::from(exit.kind.exit_code()))
}
