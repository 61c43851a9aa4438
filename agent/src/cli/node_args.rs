//! The node flags shared by `kvmlet agent` and `kvmlet standalone`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::node::{NodeConfig, NodeDefaults};

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// This node's name (VMIs labelled kubevirt.io/nodeName=NODE run here). Default: the host name.
    #[arg(long, value_name = "NODE", env = "KVMLET_NODE_NAME")]
    pub node_name: Option<String>,
    /// VM state directories and the debugging socket (kvmlet.sock).
    #[arg(long, value_name = "DIR", default_value = "/run/kvmlet", env = "KVMLET_RUN_DIR")]
    pub run_dir: PathBuf,
    /// Node-local container images: IMAGE_DIR/REF/disk/<raw image> (REF with its tag, :latest by default).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kvmlet/images", env = "KVMLET_IMAGE_DIR")]
    pub image_dir: PathBuf,
    /// Kernel for VMIs without spec.domain.firmware.kernelBoot.
    #[arg(long, value_name = "PATH", env = "KVMLET_DEFAULT_KERNEL")]
    pub default_kernel: Option<PathBuf>,
    /// Initrd that goes with --default-kernel.
    #[arg(long, value_name = "PATH", env = "KVMLET_DEFAULT_INITRD")]
    pub default_initrd: Option<PathBuf>,
    /// Kernel command line for VMIs without kernelBoot.kernelArgs.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0", env = "KVMLET_DEFAULT_CMDLINE")]
    pub default_cmdline: String,
    /// Host cgroup directory to move each VM process under (as DIR/<uid>), so
    /// VMs leave the agent's container cgroup (DaemonSet deployments).
    #[arg(long, value_name = "DIR", env = "KVMLET_CGROUP_PARENT")]
    pub cgroup_parent: Option<PathBuf>,
    /// Seconds between Node heartbeats.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, env = "KVMLET_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: u64,
    /// vCPUs offered per host CPU (kvmlet.io/vcpus = host CPUs x N), like
    /// KubeVirt's cpuAllocationRatio: idle guests halt, so vCPUs overcommit.
    #[arg(long, value_name = "N", default_value_t = 10, env = "KVMLET_CPU_ALLOCATION_RATIO",
          value_parser = clap::value_parser!(u64).range(1..=100))]
    pub cpu_allocation_ratio: u64,
    /// Memory offered to VMs (kvmlet.io/memory), a quantity such as 24Gi or
    /// 512Mi. Default: the host's memory (never overcommitted).
    #[arg(long, value_name = "QUANTITY", env = "KVMLET_MEMORY_CAPACITY", value_parser = parse_memory_capacity)]
    pub memory_capacity: Option<u64>,
}

/// MiB in a memory quantity; at least 1 MiB.
fn parse_memory_capacity(quantity: &str) -> Result<u64, String> {
    match crate::controller::scheduler::quantity_mib(quantity) {
        Some(0) => Err("must be at least 1Mi".into()),
        Some(mib) => Ok(mib),
        None => Err(format!("{quantity:?} is not a memory quantity (e.g. 24Gi, 512Mi)")),
    }
}

impl NodeArgs {
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        let node_name = match &self.node_name {
            Some(name) => name.clone(),
            None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
        };
        anyhow::ensure!(!node_name.is_empty(), "--node-name: the host has no name; give one");
        anyhow::ensure!(self.heartbeat_interval > 0, "--heartbeat-interval: must be at least 1 second");
        Ok(NodeConfig {
            node_name,
            run_dir: self.run_dir.clone(),
            defaults: NodeDefaults {
                kernel: self.default_kernel.clone(),
                initrd: self.default_initrd.clone(),
                cmdline: self.default_cmdline.clone(),
                image_dir: self.image_dir.clone(),
            },
            cgroup_parent: self.cgroup_parent.clone(),
            exe: std::env::current_exe()?,
            heartbeat_interval: Duration::from_secs(self.heartbeat_interval),
            cpu_allocation_ratio: self.cpu_allocation_ratio,
            memory_capacity_mib: self.memory_capacity,
        })
    }
}
