//! The node flags shared by `kvmlet agent` and `kvmlet standalone`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::images::reference::{Endpoint, RegistryConfig};
use vmm::TapSource;

use crate::node::cni::{self, CniNetwork};
use crate::node::pod_netns;
use crate::node::translate::PodNetwork;
use crate::node::{NodeConfig, NodeDefaults};
use crate::vmi::host_disk::{HostDiskPolicy, HOST_DISK_GATE, KNOWN_GATES};
use crate::vmi::network::ResolvConf;

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// This node's name (VMIs labelled kubevirt.io/nodeName=NODE run here). Default: the host name.
    #[arg(long, value_name = "NODE", env = "KVMLET_NODE_NAME")]
    pub node_name: Option<String>,
    /// VM state directories and the debugging socket (kvmlet.sock).
    #[arg(long, value_name = "DIR", default_value = "/run/kvmlet", env = "KVMLET_RUN_DIR")]
    pub run_dir: PathBuf,
    /// Container images: pulled ones in a content-addressed store here (blobs/, unpacked/, refs/),
    /// and hand-made IMAGE_DIR/REF/disk/<raw image> (REF with its tag, :latest by default), used first.
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
    /// Host cgroup directory each VM process is placed and limited under (as
    /// DIR/<uid>: memory, pids and cpu, where DIR's hierarchy has them), so
    /// VMs also leave the agent's container cgroup (DaemonSet deployments).
    /// Repeatable: on a cgroup v1 host, one per hierarchy.
    #[arg(long = "cgroup-parent", value_name = "DIR", env = "KVMLET_CGROUP_PARENT", value_delimiter = ',')]
    pub cgroup_parents: Vec<PathBuf>,
    /// Seconds between Node heartbeats.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, env = "KVMLET_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: u64,
    /// vCPUs offered per host CPU (kvmlet.io/vcpus = host CPUs x N), like
    /// KubeVirt's cpuAllocationRatio: idle guests halt, so vCPUs overcommit.
    #[arg(long, value_name = "N", default_value_t = 10, env = "KVMLET_CPU_ALLOCATION_RATIO",
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub cpu_allocation_ratio: u64,
    /// Feature gates to open, as KubeVirt's (comma list, repeatable). Known: HostDisk
    /// (hostDisk volumes, under a --host-disk-root only).
    #[arg(long = "feature-gates", value_name = "GATE[,GATE]", value_delimiter = ',', value_parser = parse_gate,
          env = "KVMLET_FEATURE_GATES")]
    pub feature_gates: Vec<String>,
    /// A directory hostDisk volumes may use (their paths must resolve to a file
    /// under one; DiskOrCreate creates only the file). Repeatable; required with HostDisk.
    #[arg(long = "host-disk-root", value_name = "DIR")]
    pub host_disk_roots: Vec<PathBuf>,
    /// Memory offered to VMs (kvmlet.io/memory), a quantity such as 24Gi or
    /// 512Mi. Default: the host's memory (never overcommitted).
    #[arg(long, value_name = "QUANTITY", env = "KVMLET_MEMORY_CAPACITY", value_parser = parse_memory_capacity)]
    pub memory_capacity: Option<u64>,
    /// The most VMs this node runs, published as the Node's `pods` capacity
    /// (as a kubelet's --max-pods); the scheduler leaves VMIs beyond it
    /// Unschedulable. Default: derived from the kernel's task limit, the
    /// agent's open-file limit and the memory left for per-VM overhead.
    #[arg(long, value_name = "N", env = "KVMLET_MAX_VMS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_vms: Option<u64>,
    /// The unprivileged user and group each VM process jails itself as
    /// (numeric; no account needs to exist; never 0). KubeVirt's qemu user by default.
    #[arg(long, value_name = "UID:GID", env = "KVMLET_VM_USER", default_value = "107:107")]
    pub vm_user: vmm::jail::VmUser,
    /// Test hook: VM processes answer `testJail` control requests. Hidden; only tests pass it.
    #[arg(long, hide = true)]
    pub test_vm_hooks: bool,
    /// Pull images of REGISTRY from URL instead (containerd's mirrors: docker.io for
    /// unqualified names such as kubevirt/cirros-container-disk-demo). Repeatable.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL", value_parser = parse_mirror,
          env = "KVMLET_REGISTRY_MIRRORS", value_delimiter = ',')]
    pub registry_mirrors: Vec<(String, Endpoint)>,
    /// A registry reached over plain HTTP (when its mirror URL says http://) or TLS
    /// without certificate verification. Repeatable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "KVMLET_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// The most one pulled image may unpack to, a quantity such as 64Gi: its
    /// layers' uncompressed bytes and the files written, summed over all
    /// layers. A larger image (or a compression bomb) fails its pull, naming
    /// this limit, instead of filling --image-dir.
    #[arg(long, value_name = "QUANTITY", env = "KVMLET_MAX_IMAGE_SIZE", default_value = "64Gi",
          value_parser = parse_image_size)]
    pub max_image_size: u64,
    /// The network each VM gets: `masquerade` (KubeVirt's default: a NIC on
    /// the pod network through the node's CNI plugins, in a namespace of its
    /// own), `none` (VMIs that name no network run without a NIC), or
    /// `auto`: masquerade when the node has a pod network (`--pod-cidr`, or a
    /// configuration in `--cni-conf-dir`), else none.
    #[arg(long, value_enum, default_value_t = NetworkMode::Auto, env = "KVMLET_NETWORK")]
    pub network: NetworkMode,
    /// The node's CNI network configuration (the first file by name is used).
    #[arg(long, value_name = "DIR", default_value = cni::DEFAULT_CONF_DIR, env = "KVMLET_CNI_CONF_DIR")]
    pub cni_conf_dir: PathBuf,
    /// The CNI plugins (Debian's containernetworking-plugins: /usr/lib/cni).
    #[arg(long, value_name = "DIR", default_value = cni::DEFAULT_BIN_DIR, env = "KVMLET_CNI_BIN_DIR")]
    pub cni_bin_dir: PathBuf,
    /// Use kvmlet's own pod network instead of --cni-conf-dir: a bridge
    /// kvmlet0 with host-local IPAM on this range (standalone nodes; 10.88.0.0/16 is usual).
    #[arg(long, value_name = "CIDR", env = "KVMLET_POD_CIDR")]
    pub pod_cidr: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    Auto,
    None,
    Masquerade,
}

fn parse_mirror(flag: &str) -> Result<(String, Endpoint), String> {
    RegistryConfig::parse_mirror(flag)
}

fn parse_gate(gate: &str) -> Result<String, String> {
    match KNOWN_GATES.iter().find(|known| **known == gate) {
        Some(known) => Ok(known.to_string()),
        None => Err(format!("unknown feature gate {gate:?} (known: {})", KNOWN_GATES.join(", "))),
    }
}

/// Bytes in a quantity; at least 1 MiB.
fn parse_image_size(quantity: &str) -> Result<u64, String> {
    match crate::vmi::quantity::bytes(quantity) {
        Ok(bytes) if bytes < 1 << 20 => Err("must be at least 1Mi".into()),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(format!("{e} (e.g. 64Gi, 500Gi)")),
    }
}

/// MiB in a memory quantity; at least 1 MiB.
fn parse_memory_capacity(quantity: &str) -> Result<u64, String> {
    match crate::vmi::quantity::capacity_mib(quantity) {
        Ok(0) => Err("must be at least 1Mi".into()),
        Ok(mib) => Ok(mib),
        Err(e) => Err(format!("{e} (e.g. 24Gi, 512Mi)")),
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
        let host_disks =
            HostDiskPolicy::new(self.feature_gates.iter().any(|g| g == HOST_DISK_GATE), &self.host_disk_roots)?;
        let registry = RegistryConfig {
            mirrors: self.registry_mirrors.iter().cloned().collect(),
            insecure: self.insecure_registries.clone(),
        };
        registry.check().map_err(anyhow::Error::msg)?;
        let cni = match self.network {
            NetworkMode::None => None,
            NetworkMode::Masquerade => Some(self.cni_network()?),
            NetworkMode::Auto => self.node_pod_network()?,
        };
        Ok(NodeConfig {
            registry,
            image_limits: crate::images::unpack::Limits {
                max_bytes: self.max_image_size,
                max_entries: crate::images::unpack::MAX_IMAGE_ENTRIES,
            },
            node_name,
            run_dir: self.run_dir.clone(),
            defaults: NodeDefaults {
                kernel: self.default_kernel.clone(),
                initrd: self.default_initrd.clone(),
                cmdline: self.default_cmdline.clone(),
                image_dir: self.image_dir.clone(),
                host_disks,
                pod_network: cni.as_ref().map(|_| PodNetwork {
                    tap: TapSource::Name(pod_netns::TAP.into()),
                    mtu: vmm::net_config::DEFAULT_MTU,
                    resolv: ResolvConf::of_node(),
                }),
            },
            cni,
            cgroup_parents: self.cgroup_parents.clone(),
            exe: std::env::current_exe()?,
            heartbeat_interval: Duration::from_secs(self.heartbeat_interval),
            cpu_allocation_ratio: self.cpu_allocation_ratio,
            memory_capacity_mib: self.memory_capacity,
            max_vms: self.max_vms,
            vm_user: self.vm_user,
            test_vm_hooks: self.test_vm_hooks,
        })
    }
}

impl NodeArgs {
    /// `--network auto`: the node's pod network when it has one. A node
    /// without a CNI configuration has none (said in the log); a broken
    /// configuration is an error, not a reason to run VMs without a network.
    fn node_pod_network(&self) -> anyhow::Result<Option<CniNetwork>> {
        match self.cni_network() {
            Ok(network) => Ok(Some(network)),
            Err(e) if e.downcast_ref::<cni::CniError>().is_some_and(cni::CniError::is_missing) => {
                tracing::info!(
                    conf_dir = %self.cni_conf_dir.display(),
                    "no CNI configuration and no --pod-cidr: VMIs run without a network (--network auto)"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The CNI network VMs are attached to: `--pod-cidr`'s built-in one, else
    /// the first configuration in `--cni-conf-dir`.
    fn cni_network(&self) -> anyhow::Result<CniNetwork> {
        let Some(pod_cidr) = &self.pod_cidr else {
            return Ok(CniNetwork::from_dir(&self.cni_conf_dir, &self.cni_bin_dir)?);
        };
        let cidr: Option<(std::net::Ipv4Addr, u8)> =
            pod_cidr.split_once('/').and_then(|(ip, len)| Some((ip.parse().ok()?, len.parse().ok()?)));
        anyhow::ensure!(
            cidr.is_some_and(|(_, len)| (8..=28).contains(&len)),
            "--pod-cidr: {pod_cidr:?} is not an IPv4 range such as 10.88.0.0/16"
        );
        let ipam_dir = self.run_dir.join("cni");
        let conflist = cni::default_conflist(pod_cidr, &ipam_dir);
        Ok(CniNetwork::new(conflist, "--pod-cidr".into(), self.cni_bin_dir.clone()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn parse(args: &[&str]) -> Result<NodeArgs, clap::Error> {
        let mut all = vec!["kvmlet", "--node-name", "n"];
        all.extend(args);
        Cli::try_parse_from(all).map(|c| c.node)
    }

    #[test]
    fn feature_gates_are_a_repeatable_comma_list_of_known_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let args = parse(&["--feature-gates", "HostDisk", "--host-disk-root", root]).unwrap();
        assert_eq!(args.feature_gates, ["HostDisk"]);
        assert_eq!(
            args.config().unwrap().defaults.host_disks,
            HostDiskPolicy::new(true, &[dir.path().into()]).unwrap()
        );
        let twice = parse(&["--feature-gates", "HostDisk,HostDisk", "--feature-gates", "HostDisk"]).unwrap();
        assert_eq!(twice.feature_gates.len(), 3);
        let unknown = parse(&["--feature-gates", "HostDisk,LiveMigration"]).unwrap_err().to_string();
        assert!(unknown.contains("unknown feature gate \"LiveMigration\""), "{unknown}");
    }

    #[test]
    fn registry_mirrors_need_insecure_for_plain_http() {
        let args =
            parse(&["--registry-mirror", "docker.io=http://127.0.0.1:5000", "--insecure-registry", "127.0.0.1:5000"]);
        let registry = args.unwrap().config().unwrap().registry;
        assert_eq!(registry.mirrors["docker.io"], Endpoint { host: "127.0.0.1:5000".into(), plain_http: true });
        let plain = parse(&["--registry-mirror", "docker.io=http://127.0.0.1:5000"]).unwrap().config().unwrap_err();
        assert!(plain.to_string().contains("--insecure-registry 127.0.0.1:5000"), "{plain}");
        let bad = parse(&["--registry-mirror", "docker.io"]).unwrap_err().to_string();
        assert!(bad.contains("REGISTRY=URL"), "{bad}");
    }

    #[test]
    fn max_image_size_is_a_quantity_with_a_64gi_default() {
        let limits = |args: &[&str]| parse(args).map(|a| a.config().unwrap().image_limits);
        let default = limits(&[]).unwrap();
        assert_eq!(default, crate::images::unpack::Limits::default());
        assert_eq!(default.max_bytes, 64 << 30);
        assert_eq!(limits(&["--max-image-size", "2Gi"]).unwrap().max_bytes, 2 << 30);
        assert_eq!(limits(&["--max-image-size", "10G"]).unwrap().max_bytes, 10_000_000_000);
        let tiny = limits(&["--max-image-size", "1k"]).unwrap_err().to_string();
        assert!(tiny.contains("at least 1Mi"), "{tiny}");
        assert!(limits(&["--max-image-size", "lots"]).is_err());
    }

    #[test]
    fn network_auto_uses_the_nodes_pod_network_when_it_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().to_str().unwrap();
        let cni = |extra: &[&str]| {
            let mut args = vec!["--cni-conf-dir", conf_dir];
            args.extend_from_slice(extra);
            parse(&args).unwrap().config().map(|c| c.cni.is_some())
        };
        assert!(!cni(&[]).unwrap(), "no configuration: no network");
        let missing = parse(&["--cni-conf-dir", "/nonexistent/cni"]).unwrap().config().unwrap();
        assert!(missing.cni.is_none(), "no directory: no network");
        assert!(cni(&["--pod-cidr", "10.88.0.0/16"]).unwrap(), "--pod-cidr is a pod network");
        let explicit = cni(&["--network", "masquerade"]).unwrap_err().to_string();
        assert!(explicit.contains(conf_dir), "masquerade without a configuration is an error: {explicit}");
        std::fs::write(
            dir.path().join("10-pods.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": []}"#,
        )
        .unwrap();
        assert!(cni(&[]).unwrap(), "a configuration: masquerade");
        assert!(!cni(&["--network", "none"]).unwrap());
        std::fs::write(dir.path().join("00-broken.conf"), "{ not json").unwrap();
        assert!(cni(&[]).is_err(), "a broken configuration is an error, not no network");
    }

    #[test]
    fn host_disk_roots_and_the_gate_go_together() {
        let no_root = parse(&["--feature-gates", "HostDisk"]).unwrap().config().unwrap_err();
        assert!(no_root.to_string().contains("--host-disk-root"), "{no_root}");
        let no_gate = parse(&["--host-disk-root", "/tmp"]).unwrap().config().unwrap_err();
        assert!(no_gate.to_string().contains("--feature-gates HostDisk"), "{no_gate}");
        assert_eq!(parse(&[]).unwrap().config().unwrap().defaults.host_disks, HostDiskPolicy::closed());
    }
}
