//! The node loop (KubeVirt's virt-handler): runs the VMIs assigned to this
//! node as VM processes and reports their phase.
//!
//! - `registration`: the Node object, heartbeat and capacity.
//! - `translate` (+ `disks`): VMI spec → `VmConfig` and disk files (the spec's rules: `crate::vmi`).
//! - `vms`: the table of VM processes, watched over their control sockets.
//! - `decision`: what to do next for a VMI (pure, table-tested).
//! - `reconcile`: carries the decision out for one VMI and its VM process.
//! - `cni`: the pod IP, from the node's CNI plugins run on the VM's namespace.
//! - `pod_netns`: a VM's network namespace with KubeVirt's masquerade layout.
//! - `vm_network`: a VM's namespace, CNI and masquerade layout, attached and detached.
//! - `run_dir`: one agent per run directory.
//! - `report`: status, finalizer and events written back.
//!
//! Every log line about a VM carries `namespace`, `vmi` (its name; `name` is
//! taken by the span's own name in JSON logs) and `uid`.

pub mod boot_disk;
pub mod cni;
pub mod decision;
mod disks;
pub mod pod_netns;
pub mod reconcile;
#[cfg(test)]
mod reconcile_tests;
pub mod registration;
pub mod report;
pub mod run_dir;
pub mod slots;
pub mod translate;
pub mod vm_network;
pub mod vms;

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use proto::debug::ControlRequest;
use proto::kubevirt::VirtualMachineInstance;
use proto::labels::NODE_NAME_LABEL;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::Instrument;

pub use translate::NodeDefaults;
use vms::{Process, VmEntry, VmTable};

use crate::vmprocess::client;
use crate::vmprocess::state_dir::StateDir;

/// How often VM processes are checked against the VMIs that exist.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// How a node agent runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_name: String,
    /// State directories (`vms/<uid>/`) and the debugging socket.
    pub run_dir: PathBuf,
    pub defaults: NodeDefaults,
    /// The pod network VMs are attached to (`--network masquerade`); none:
    /// VMs run without a NIC.
    pub cni: Option<cni::CniNetwork>,
    /// Host cgroup directory that VM processes are moved under (DaemonSet).
    pub cgroup_parents: Vec<PathBuf>,
    /// The kvmlet binary, re-executed as `kvmlet vm-process` for each VM.
    pub exe: PathBuf,
    pub heartbeat_interval: Duration,
    /// vCPUs offered per host CPU.
    pub cpu_allocation_ratio: u64,
    /// Memory offered to VMs instead of the host's (`--memory-capacity`).
    pub memory_capacity_mib: Option<u64>,
    /// The most VMs this node runs (`--max-vms`, published as `pods`);
    /// None: derived from the host's limits (`registration::derived_max_vms`).
    pub max_vms: Option<u64>,
    /// Who VM processes jail themselves as (`--vm-user`).
    pub vm_user: vmm::jail::VmUser,
    /// VM processes answer `testJail` requests (`--test-vm-hooks`, tests only).
    pub test_vm_hooks: bool,
    /// Registry mirrors and insecure registries for image pulls.
    pub registry: crate::images::reference::RegistryConfig,
    /// What one pulled image may unpack to (`--max-image-size`).
    pub image_limits: crate::images::unpack::Limits,
}

/// Why a node loop cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeSetupError {
    #[error(transparent)]
    RunDir(#[from] run_dir::RunDirError),
    #[error("cannot open the image store {}", path.display())]
    ImageDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What every reconcile shares.
pub struct NodeContext {
    pub config: NodeConfig,
    pub client: Client,
    pub vms: VmTable,
    pub reporter: report::VmiReporter,
    /// Image pulls and the node's image store.
    pub images: crate::images::Images,
    /// What the node offers (published on its Node).
    pub capacity: registration::Capacity,
    /// `--max-vms`, checked by the node itself.
    pub slots: slots::VmSlots,
}

impl NodeContext {
    /// The Secrets the VMI's cloud-init volumes name (missing ones are left
    /// out, and translation names the field that refers to them).
    async fn secrets(&self, vmi: &VirtualMachineInstance) -> kube::Result<translate::Secrets> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &vmi.namespace().unwrap_or_default());
        let mut secrets = translate::Secrets::new();
        for name in translate::secret_names(vmi) {
            if let Some(secret) = api.get_opt(&name).await? {
                let data: BTreeMap<String, Vec<u8>> =
                    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                secrets.insert(name, data);
            }
        }
        Ok(secrets)
    }

    /// Removes the state directory (and cgroup) of a VM whose process is
    /// gone, once; the entry stays, marked cleaned, for `kvmlet ps`.
    fn clean_up(&self, entry: &VmEntry) {
        if entry.cleaned {
            return;
        }
        if let Some(cni) = &self.config.cni {
            vm_network::detach(cni, &entry.dir, &entry.identity.uid);
        }
        if let Err(e) = entry.dir.remove() {
            tracing::warn!(error = %e, "cannot remove the VM's state directory");
        }
        crate::vmprocess::cgroup::remove(&self.config.cgroup_parents, &entry.dir);
        self.vms.update(&entry.identity.uid, |e| e.cleaned = true);
    }

    /// A control request whose failure only matters through the next status.
    async fn request(&self, dir: &StateDir, request: ControlRequest) {
        if let Err(e) = client::request(dir, &request).await {
            tracing::debug!(?request, error = %e, "control request failed");
        }
    }
}

/// The node loop, ready to run: VM processes from an earlier agent are
/// already re-attached when `new` returns.
pub struct NodeLoop {
    ctx: Arc<NodeContext>,
    pokes: mpsc::UnboundedReceiver<ObjectRef<VirtualMachineInstance>>,
    /// Held until the loop ends (or the process does).
    _run_dir: run_dir::RunDirLock,
}

impl NodeLoop {
    /// Fails when another agent holds the run directory (before anything
    /// in it is touched beyond creating it).
    pub fn new(client: Client, config: NodeConfig) -> Result<NodeLoop, NodeSetupError> {
        let prepare = |source| run_dir::RunDirError::Io { path: config.run_dir.clone(), source };
        std::fs::create_dir_all(&config.run_dir).map_err(prepare)?;
        let lock = run_dir::RunDirLock::take(&config.run_dir)?;
        std::fs::create_dir_all(crate::vmprocess::state_dir::vms_dir(&config.run_dir)).map_err(prepare)?;
        std::fs::set_permissions(&config.run_dir, std::fs::Permissions::from_mode(0o700)).map_err(prepare)?;
        let (poke, pokes) = mpsc::unbounded_channel();
        let images = crate::images::Images::new(
            config.defaults.image_dir.clone(),
            config.registry.clone(),
            config.image_limits,
            client.clone(),
            poke.clone(),
        )
        .map_err(|source| NodeSetupError::ImageDir { path: config.defaults.image_dir.clone(), source })?;
        let vms = VmTable::new(poke);
        vms.attach_all(&config.run_dir);
        if let Some(cni) = &config.cni {
            check_networks(cni, &vms);
        }
        crate::metrics::global().add_collector(crate::metrics::vm::collector(vms.clone(), config.node_name.clone()));
        let reporter = report::VmiReporter::new(client.clone(), &config.node_name);
        let capacity = registration::Capacity::of_this_host(
            config.cpu_allocation_ratio,
            config.memory_capacity_mib,
            config.max_vms,
        );
        let slots = slots::VmSlots::new(capacity.vms);
        let ctx = NodeContext { config, client, vms, reporter, images, capacity, slots };
        Ok(NodeLoop { ctx: Arc::new(ctx), pokes, _run_dir: lock })
    }

    /// The VM table, for the debugging socket.
    pub fn vms(&self) -> VmTable {
        self.ctx.vms.clone()
    }

    /// Runs until `shutdown` resolves; then marks the node unschedulable.
    /// VM processes keep running: the next agent re-attaches to them.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
        let _run_dir = self._run_dir;
        let ctx = self.ctx;
        let node = ctx.config.node_name.clone();
        register_until_done(&ctx).await;
        let heartbeat = tokio::spawn(heartbeats(ctx.clone()));

        let vmis: Api<VirtualMachineInstance> = Api::all(ctx.client.clone());
        let selector = watcher::Config::default().labels(&format!("{NODE_NAME_LABEL}={node}"));
        let controller = Controller::new(vmis, selector).reconcile_on(UnboundedReceiverStream::new(self.pokes));
        let sweeper = tokio::spawn(sweep_orphans(ctx.clone(), controller.store()));
        controller
            .graceful_shutdown_on(shutdown)
            .run(
                |vmi, ctx| crate::metrics::timed("node", reconcile::reconcile(vmi, ctx)),
                reconcile::error_policy,
                ctx.clone(),
            )
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "node loop");
                }
            })
            .await;
        heartbeat.abort();
        sweeper.abort();
        if let Err(e) = registration::heartbeat(&ctx.client, &node, false).await {
            tracing::warn!(error = %e, "cannot mark the node unschedulable");
        }
        tracing::info!(node, "node loop stopped; VM processes keep running");
    }
}

async fn register_until_done(ctx: &NodeContext) {
    let capacity = ctx.capacity;
    let mut delay = Duration::from_millis(100);
    loop {
        match registration::register(&ctx.client, &ctx.config.node_name, capacity).await {
            Ok(()) => {
                tracing::info!(node = %ctx.config.node_name, ?capacity, "node registered");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot register the node; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn heartbeats(ctx: Arc<NodeContext>) {
    loop {
        tokio::time::sleep(ctx.config.heartbeat_interval).await;
        if let Err(e) = registration::heartbeat(&ctx.client, &ctx.config.node_name, true).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}

/// VM processes whose VMI no longer exists are stopped and cleaned up
/// (their VMI was removed behind the node's back, e.g. a forced finalizer
/// removal, or while the agent was away). A VM missing from the watch cache
/// is only a candidate (the cache may not be filled yet): a GET decides.
/// (`Store::wait_until_ready` is not used: kube-runtime 5 wakes only one of
/// its waiters, and the controller itself waits on it.)
async fn sweep_orphans(ctx: Arc<NodeContext>, store: Store<VirtualMachineInstance>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let known: Vec<String> = store.state().iter().filter_map(|vmi| vmi.uid()).collect();
        let candidates: Vec<VmEntry> =
            ctx.vms.lock().values().filter(|e| !known.contains(&e.identity.uid)).cloned().collect();
        for entry in candidates {
            let identity = &entry.identity;
            let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &identity.namespace);
            match api.get_opt(&identity.name).await {
                Ok(Some(vmi)) if vmi.uid().as_deref() == Some(identity.uid.as_str()) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot check for a VMI; sweeping later");
                    continue;
                }
            }
            let span =
                tracing::info_span!("vmi", namespace = %identity.namespace, vmi = %identity.name, uid = %identity.uid);
            // Instrumented, not entered: an entered span must not be held across an await.
            async {
                if let Process::Exited(_) = entry.process {
                    if !entry.cleaned {
                        tracing::info!("cleaning up the VM of a VMI that no longer exists");
                    }
                    ctx.clean_up(&entry);
                    ctx.vms.remove(&identity.uid);
                } else {
                    tracing::info!("stopping the VM of a VMI that no longer exists");
                    ctx.request(&entry.dir, ControlRequest::Kill {}).await;
                }
            }
            .instrument(span)
            .await;
        }
    }
}

/// CNI CHECK for each re-attached VM that is still running: a namespace that
/// is no longer as ADD left it is logged (the VM keeps running with what it has).
fn check_networks(cni: &cni::CniNetwork, vms: &VmTable) {
    let entries: Vec<VmEntry> = vms.lock().values().cloned().collect();
    for entry in entries.iter().filter(|e| !matches!(e.process, Process::Exited(_))) {
        let identity = &entry.identity;
        let span =
            tracing::info_span!("vmi", namespace = %identity.namespace, vmi = %identity.name, uid = %identity.uid);
        let _enter = span.enter();
        match vm_network::reattach(cni, &entry.dir, &identity.uid) {
            Ok(Some(address)) => tracing::info!(pod_ip = %address.ip, "pod network checked"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %crate::errors::with_causes(&e), "the VM's pod network failed CNI CHECK"),
        }
    }
}
