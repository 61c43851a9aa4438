//! `kvmlet agent`: the node loop against a Kubernetes API (a cluster, or
//! another machine's `kvmlet standalone`), with the debugging socket.

use anyhow::Context;
use clap::Args;

use super::node_args::NodeArgs;
use super::systemd;
use crate::debug_socket;
use crate::node::NodeLoop;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Serve /healthz, /readyz and /metrics on this address.
    #[arg(long, value_name = "ADDR", env = "KVMLET_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub fn main(args: AgentArgs, global: &super::GlobalArgs) -> anyhow::Result<()> {
    let config = args.node.config()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _health = super::health::serve_optional(args.health_listen, ready.clone()).await?;
        let client = super::kube_client(global.kubeconfig.as_deref()).await?;
        let _readiness = crate::controller::AbortOnDrop(super::health::ready_when_api_answers(client.clone(), ready));
        let node = NodeLoop::new(client, config.clone())?;
        let socket = config.run_dir.join(debug_socket::SOCKET_NAME);
        let listener = debug_socket::server::bind(&socket).with_context(|| format!("bind {}", socket.display()))?;
        let server = debug_socket::server::spawn(listener, node.vms());
        tracing::info!(node = %config.node_name, socket = %socket.display(), "node agent ready");
        systemd::notify_ready();
        let watchdog = tokio::spawn(systemd::watchdog());
        node.run(super::shutdown_signal()).await;
        watchdog.abort();
        server.abort();
        anyhow::Ok(())
    })
}
