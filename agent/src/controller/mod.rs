//! The VirtualMachine controller (KubeVirt's virt-controller VM loop): keeps
//! each VM's VirtualMachineInstance present or absent as its run strategy
//! and state change requests say, gives the VM a stable firmware identity,
//! and reports the VM's status.
//!
//! - `strategy`: the run-strategy table and request handling (pure).
//! - `backoff`: start failures and the delay before the next start.
//! - `identity`: the firmware UUID and serial persisted into the VM.
//! - `status`: `printableStatus`, conditions and the rest of the status.
//! - `writes`: everything written to the API, and events.
//! - `reconcile`: one VM's sync, in that order.
//! - `orphans`: the controller's finalizer taken off VMIs no VM owns.
//! - `leader`: Lease-based leader election for `kvmlet controller`.
//! - `scheduler`: VMI-to-node assignment by capacity (cluster and standalone); `unresponsive`: failing
//!   the VMIs of nodes that stopped heartbeating.

pub mod backoff;
pub mod identity;
pub mod leader;
pub mod orphans;
pub mod scheduler;

pub mod reconcile;

pub mod status;
pub mod strategy;
pub mod unresponsive;
pub mod writes;

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance};

/// The events' source, as KubeVirt names it.
pub const COMPONENT: &str = "virtualmachine-controller";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// Admission rejects such VMs; one written around it is left alone.
    #[error("the VM has neither spec.running nor spec.runStrategy")]
    NoRunStrategy,
}

#[derive(Debug, Clone, Default)]
pub struct ControllerConfig {
    pub backoff: backoff::Backoff,
}

/// What every sync shares.
pub struct Context {
    pub writer: writes::Writer,
    pub backoff: backoff::Backoff,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(client: Client, config: ControllerConfig, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let instance = nix::unistd::gethostname().ok().map(|h| format!("{}-{}", h.to_string_lossy(), std::process::id()));
    let recorder = Recorder::new(client.clone(), Reporter { controller: COMPONENT.into(), instance });
    let ctx =
        Arc::new(Context { writer: writes::Writer { client: client.clone(), recorder }, backoff: config.backoff });
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    tracing::info!(backoff_base = ?config.backoff.base, "VM controller started");
    // Aborted with the controller (a replica that loses the lease stops both).
    let _orphans = AbortOnDrop(tokio::spawn(orphans::run(client.clone())));
    // kvmlet has no pods: it writes the EndpointSlices of Services that select VMIs.
    let _endpoints = AbortOnDrop(tokio::spawn(crate::services::endpoints::run(client.clone())));
    Controller::new(vms, watcher::Config::default())
        // Every VMI maps to the VM of its name and namespace, not only the
        // ones it owns (`.owns()` would miss orphans waiting for adoption and
        // the end of a foreign VMI that fences a new one).
        .watches(vmis, watcher::Config::default(), |vmi| {
            let namespace = vmi.namespace()?;
            Some(ObjectRef::<VirtualMachine>::new(&vmi.name_any()).within(&namespace))
        })
        .graceful_shutdown_on(shutdown)
        .run(
            |vm, ctx| crate::metrics::timed("vm-controller", reconcile::reconcile(vm, ctx)),
            reconcile::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "VM controller");
            }
        })
        .await;
    tracing::info!("VM controller stopped");
}

/// Runs the controller for as long as the process lives, starting it again
/// should it ever panic (a bug elsewhere in the process must not leave VMs
/// without their controller until a restart).
pub async fn run_forever(client: Client, config: ControllerConfig) {
    loop {
        let task = tokio::spawn(run(client.clone(), config.clone(), std::future::pending()));
        match task.await {
            Err(e) if e.is_panic() => tracing::error!(error = %e, "the VM controller panicked; starting it again"),
            _ => return,
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A spawned task that ends when its owner does (also when the owner is
/// itself aborted, where code after an `.await` never runs).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
