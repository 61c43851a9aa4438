//! The loop that keeps kvmlet's EndpointSlices as `slices` wants them:
//! it follows Services, VMIs, VMs and its own slices, and after any change
//! (or every [`RESYNC`]) compares every Service's wanted slices with the
//! stored ones, writing only differences. Runs inside the VM controller:
//! leader-elected with it in a cluster, and in `kvmlet standalone`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use proto::kubevirt::{VirtualMachine, VirtualMachineInstance};
use tokio::sync::Notify;

use super::slices::{wanted_slices, MANAGED_BY_LABEL, MANAGER};
use crate::controller::AbortOnDrop;

/// How often everything is compared even without a change (a write that
/// failed is retried then).
const RESYNC: Duration = Duration::from_secs(10);
/// A burst of changes (a VMI's phase, then its IP) is written once.
const SETTLE: Duration = Duration::from_millis(20);

/// A store that follows `api`, and a task (ended on drop) that keeps it
/// current and wakes `notify` on every change.
pub(super) fn follow<K>(api: Api<K>, config: watcher::Config, notify: Arc<Notify>) -> (Store<K>, AbortOnDrop)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "watch for EndpointSlices failed; retrying");
            }
            notify.notify_one();
        }
    });
    (reader, AbortOnDrop(task))
}

/// Runs until aborted.
pub async fn run(client: Client) {
    let notify = Arc::new(Notify::new());
    let all = watcher::Config::default();
    let own = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let (services, _s) = follow(Api::<Service>::all(client.clone()), all.clone(), notify.clone());
    let (vmis, _i) = follow(Api::<VirtualMachineInstance>::all(client.clone()), all.clone(), notify.clone());
    let (vms, _v) = follow(Api::<VirtualMachine>::all(client.clone()), all, notify.clone());
    let (slices, _e) = follow(Api::<EndpointSlice>::all(client.clone()), own, notify.clone());
    // Nothing is deleted from a partial picture.
    let ready = futures::future::try_join4(
        services.wait_until_ready(),
        vmis.wait_until_ready(),
        vms.wait_until_ready(),
        slices.wait_until_ready(),
    );
    if ready.await.is_err() {
        return;
    }
    tracing::info!("EndpointSlice writer started");
    loop {
        let vmis = vmis.state().iter().map(|v| (**v).clone()).collect::<Vec<_>>();
        let vms = vms.state().iter().map(|v| (**v).clone()).collect::<Vec<_>>();
        sync(&client, &services.state(), &vmis, &vms, &slices.state()).await;
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(SETTLE).await;
    }
}

type Key = (String, String);

fn key_of(slice: &EndpointSlice) -> Key {
    (slice.namespace().unwrap_or_default(), slice.name_any())
}

/// Whether a stored slice already says what the wanted one says.
fn same(stored: &EndpointSlice, wanted: &EndpointSlice) -> bool {
    stored.address_type == wanted.address_type
        && stored.endpoints == wanted.endpoints
        && stored.ports.clone().unwrap_or_default() == wanted.ports.clone().unwrap_or_default()
        && stored.metadata.labels == wanted.metadata.labels
        && stored.metadata.owner_references == wanted.metadata.owner_references
}

async fn sync(
    client: &Client,
    services: &[Arc<Service>],
    vmis: &[VirtualMachineInstance],
    vms: &[VirtualMachine],
    stored: &[Arc<EndpointSlice>],
) {
    let stored: BTreeMap<Key, &EndpointSlice> = stored.iter().map(|s| (key_of(s), &**s)).collect();
    let mut wanted_keys = BTreeSet::new();
    for service in services {
        let Some(wanted) = wanted_slices(service, vmis, vms) else { continue };
        for slice in wanted {
            let key = key_of(&slice);
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &key.0);
            let result = match stored.get(&key) {
                Some(current) if same(current, &slice) => Ok(()),
                Some(current) => {
                    let mut update = slice.clone();
                    update.metadata.resource_version = current.metadata.resource_version.clone();
                    api.replace(&key.1, &PostParams::default(), &update).await.map(drop)
                }
                None => api.create(&PostParams::default(), &slice).await.map(drop),
            };
            if let Err(e) = result {
                // A stale cache (conflict, already exists) or a passing error: the next sync retries.
                tracing::warn!(namespace = %key.0, service = %service.name_any(), slice = %key.1, error = %e, "cannot write the EndpointSlice");
            } else if stored.get(&key).is_none_or(|c| !same(c, &slice)) {
                tracing::info!(namespace = %key.0, service = %service.name_any(), slice = %key.1, endpoints = slice.endpoints.len(), "EndpointSlice written");
            }
            wanted_keys.insert(key);
        }
    }
    for (key, _) in stored.iter().filter(|(key, _)| !wanted_keys.contains(*key)) {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &key.0);
        match api.delete(&key.1, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(namespace = %key.0, slice = %key.1, "EndpointSlice deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(namespace = %key.0, slice = %key.1, error = %e, "cannot delete the EndpointSlice"),
        }
    }
}
