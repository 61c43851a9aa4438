//! `kvmlet standalone`: the embedded Kubernetes-compatible API on one
//! machine, with the node loop running this machine's VMs against it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::controller::ControllerArgs;
use super::node_args::NodeArgs;
use crate::apiserver::embedded::EmbeddedApi;
use crate::apiserver::services::{ServiceCidr, DEFAULT_SERVICE_CIDR};
use crate::apiserver::state::ApiConfig;
use crate::apiserver::{server, tls};
use crate::controller;
use crate::debug_socket;
use crate::node::NodeLoop;

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Directory for the database, the unix socket and the kubeconfig.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Loopback address for kubectl (port 0 picks a free one; see DIR/kubeconfig).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Serve the API only: no node loop runs VMs here (agents elsewhere may).
    #[arg(long)]
    pub no_node: bool,
    /// Do not run the VM controller and scheduler here (`kvmlet controller` replicas run them).
    #[arg(long, conflicts_with = "controller")]
    pub no_controller: bool,
    /// Run the VM controller and scheduler even with --no-node (by default they run with the node loop).
    #[arg(long)]
    pub controller: bool,
    /// IPv4 range Services' cluster IPs are allocated from (/12 to /28; its
    /// network and broadcast addresses are never handed out).
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_SERVICE_CIDR)]
    pub service_cidr: ServiceCidr,
    /// Serve /healthz, /readyz and /metrics on this address.
    #[arg(long, value_name = "ADDR", env = "KVMLET_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Where the service proxy serves NodePorts (with --network masquerade):
    /// IPv4 networks or addresses, comma-separated or repeated, as
    /// kube-proxy's flag (default: every address of the node, loopback included).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub nodeport_addresses: Vec<crate::services::proxy::Ipv4Cidr>,
    #[command(flatten)]
    pub controller_args: ControllerArgs,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub fn main(args: StandaloneArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.listen.ip().is_loopback(), "--listen {}: only loopback addresses are served", args.listen);
    crate::apiserver::private_files::private_dir(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let node_config = (!args.no_node).then(|| args.node.config()).transpose()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _health = super::health::serve_optional(args.health_listen, ready.clone()).await?;
        let api = EmbeddedApi::open_with(&args.data_dir, &ApiConfig { service_cidr: args.service_cidr })?;
        // First, so a second server on a busy run directory stops before it starts anything.
        let node =
            node_config.map(|config| NodeLoop::new(api.client(), config.clone()).map(|n| (n, config))).transpose()?;
        // The loops next to the API use an in-process kube::Client through
        // the same handlers kubectl reaches.
        // The controller runs by default when VMs run here too; an API-only
        // server (--no-node) is a cluster's API, whose controller may run elsewhere.
        if !args.no_controller && (args.controller || !args.no_node) {
            tokio::spawn(controller::run_forever(api.client(), args.controller_args.config()));
            // With it, the cluster's scheduler (as `kvmlet controller` runs it):
            // VMIs go to this node, or to agents' nodes, by the same capacity accounting.
            // This node's heartbeat, however slow it was set, never counts as stale.
            let mut scheduling = controller::scheduler::SchedulerConfig::default();
            if let Some((_, config)) = &node {
                scheduling.heartbeat_threshold = scheduling.heartbeat_threshold.max(config.heartbeat_interval * 5);
            }
            tokio::spawn(controller::scheduler::run(api.client(), scheduling));
        }
        // With a pod network, this machine is also the service proxy (a cluster has kube-proxy).
        let _proxy = node.as_ref().filter(|(_, config)| config.cni.is_some()).map(|_| {
            let addresses = crate::services::proxy::NodePortAddresses(args.nodeport_addresses.clone());
            let client = api.client();
            crate::controller::AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = crate::services::proxy::run(client, addresses).await {
                    tracing::error!(error = %crate::errors::with_causes(&e), "the service proxy stopped");
                }
            }))
        });
        if let Some((node, config)) = node {
            let socket = config.run_dir.join(debug_socket::SOCKET_NAME);
            let listener = debug_socket::server::bind(&socket).with_context(|| format!("bind {}", socket.display()))?;
            debug_socket::server::spawn(listener, node.vms());
            tokio::spawn(node.run(std::future::pending()));
            tracing::info!(node = %config.node_name, socket = %socket.display(), "node loop started");
        }
        let tcp =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
        let address = tcp.local_addr()?;
        let kubeconfig = args.data_dir.join("kubeconfig");
        let token = server::token(&args.data_dir)?;
        let tls = tls::load_or_create(&args.data_dir)?;
        server::write_kubeconfig(&kubeconfig, &format!("https://{address}"), &tls.ca_pem, &token)?;
        let socket = args.data_dir.join("api.sock");
        tracing::info!(%address, socket = %socket.display(), kubeconfig = %kubeconfig.display(), "API ready");
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        super::systemd::notify_ready();
        let _watchdog = crate::controller::AbortOnDrop(tokio::spawn(super::systemd::watchdog()));
        server::serve(api.router(), &socket, tcp, tls.acceptor, token).await?;
        anyhow::Ok(())
    })
}
