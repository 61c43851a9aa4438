//! The VM controller's flags, shared by `kvmlet standalone` (which runs the
//! controller next to its API) and `kvmlet controller` (cluster mode).

use std::time::Duration;

use clap::Args;

use crate::controller::backoff::Backoff;
use crate::controller::ControllerConfig;

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Delay after the first failed start, in milliseconds (10·n² s by default);
    /// hidden: only tests shorten it.
    #[arg(long, hide = true, value_name = "MS", default_value_t = 10_000, env = "KVMLET_START_BACKOFF_BASE_MS")]
    pub start_backoff_base_ms: u64,
}

impl ControllerArgs {
    pub fn config(&self) -> ControllerConfig {
        ControllerConfig { backoff: Backoff { base: Duration::from_millis(self.start_backoff_base_ms) } }
    }
}

/// `kvmlet controller`: the VM controller and the scheduler for a cluster,
/// run by whichever replica holds the Lease.
#[derive(Debug, Args)]
pub struct ControllerCmdArgs {
    /// Namespace of the leader-election Lease.
    #[arg(long, value_name = "NS", default_value = "kvmlet-system", env = "KVMLET_LEASE_NAMESPACE")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "kvmlet-controller")]
    pub lease_name: String,
    /// Nodes whose kubevirt.io/heartbeat is older than this many seconds get no new VMIs.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, env = "KVMLET_HEARTBEAT_THRESHOLD")]
    pub heartbeat_threshold: u64,
    /// Serve /healthz, /readyz (liveness and readiness probes) and /metrics on this address.
    #[arg(long, value_name = "ADDR", env = "KVMLET_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub controller: ControllerArgs,
}

pub fn main(args: ControllerCmdArgs, global: &super::GlobalArgs) -> anyhow::Result<()> {
    use crate::controller::{leader, scheduler, AbortOnDrop};
    anyhow::ensure!(args.heartbeat_threshold > 0, "--heartbeat-threshold: must be at least 1 second");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _health = super::health::serve_optional(args.health_listen, ready.clone()).await?;
        let client = super::kube_client(global.kubeconfig.as_deref()).await?;
        // Ready once the API answers: standby replicas are ready too.
        let readiness = AbortOnDrop(super::health::ready_when_api_answers(client.clone(), ready));
        let lease = leader::LeaseConfig::new(&args.lease_namespace, &args.lease_name);
        tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for leadership");
        let config = args.controller.config();
        let scheduling =
            scheduler::SchedulerConfig { heartbeat_threshold: Duration::from_secs(args.heartbeat_threshold) };
        let work = || {
            let (client, config) = (client.clone(), config.clone());
            async move {
                let scheduler = tokio::spawn(scheduler::run(client.clone(), scheduling));
                // The scheduler task ends with this one: an aborted leader stops both.
                let _abort = AbortOnDrop(scheduler);
                crate::controller::run(client, config, std::future::pending()).await;
            }
        };
        super::systemd::notify_ready();
        leader::run_as_leader(client.clone(), lease, work, super::shutdown_signal()).await;
        drop(readiness);
        anyhow::Ok(())
    })
}
