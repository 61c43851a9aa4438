//! The seam between the embedded API and the loops that run next to it.
//!
//! `kvmlet standalone` opens one [`EmbeddedApi`] on its data directory,
//! serves it to kubectl and local clients, and hands in-process loops (the
//! VirtualMachine controller, the node loop) a [`kube::Client`] from
//! [`EmbeddedApi::client`]. That client calls the router directly as a tower
//! service — no socket, no TLS, no token — yet goes through exactly the same
//! handlers, admission, store and watch code as kubectl's requests, so the
//! loops use one code path against a real cluster and against standalone mode.

use std::path::Path;

use axum::Router;

use super::objects::Shared;
use super::server;
use super::state::ApiConfig;
use super::store::StoreError;

/// The embedded API of one data directory: its durable store, the garbage
/// collector that follows ownerReferences, and the router serving both.
pub struct EmbeddedApi {
    store: Shared,
    router: Router,
}

impl EmbeddedApi {
    /// Opens (or creates) the database under `data_dir`, makes sure the
    /// initial namespaces exist and starts the garbage collector, with the
    /// default configuration (Services' cluster IPs from 10.96.0.0/16).
    /// Must be called from within a tokio runtime, which the collector then
    /// runs on.
    pub fn open(data_dir: &Path) -> Result<EmbeddedApi, StoreError> {
        EmbeddedApi::open_with(data_dir, &ApiConfig::default())
    }

    /// [`EmbeddedApi::open`] with the given configuration (`kvmlet
    /// standalone --service-cidr`).
    pub fn open_with(data_dir: &Path, config: &ApiConfig) -> Result<EmbeddedApi, StoreError> {
        let store = server::open_store(data_dir, config)?;
        tokio::spawn(super::gc::run(store.clone()));
        let router = server::router(store.clone());
        Ok(EmbeddedApi { store, router })
    }

    /// A client for in-process loops whose requests go straight to the
    /// router. Its default namespace is `default`. Must be called from within
    /// a tokio runtime (kube buffers requests on a spawned task).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router.clone(), "default")
    }

    /// The router, for serving on listeners (see [`server::serve`]).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The store, for code that needs the data without HTTP (benches, tests).
    pub fn store(&self) -> Shared {
        self.store.clone()
    }
}

#[cfg(test)]
mod tests {
    use kube::api::{
        Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
        WatchEvent, WatchParams,
    };
    use proto::kubevirt::VirtualMachine;

    use super::*;

    fn vm(name: &str) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"running": false, "template": {"spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {}}}}},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn in_process_client_creates_patches_and_watches() {
        let dir = tempfile::tempdir().unwrap();
        let api = EmbeddedApi::open(dir.path()).unwrap();
        let vms: Api<VirtualMachine> = Api::default_namespaced(api.client());

        let created = vms.create(&PostParams::default(), &vm("in-process")).await.unwrap();
        let created_version = created.metadata.resource_version.clone().unwrap();
        assert!(created.metadata.uid.is_some());
        assert_eq!(created.metadata.namespace.as_deref(), Some("default"));

        let events =
            vms.watch(&WatchParams::default().fields("metadata.name=in-process"), &created_version).await.unwrap();
        let mut events = std::pin::pin!(events);
        let patch = serde_json::json!({"spec": {"running": true}});
        let patched = vms.patch("in-process", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        assert_eq!(patched.spec.running, Some(true));
        assert_eq!(patched.metadata.generation, Some(2), "a spec change bumps the generation");

        match tokio_stream::StreamExt::next(&mut events).await.unwrap().unwrap() {
            WatchEvent::Modified(seen) => {
                assert_eq!(seen.metadata.resource_version, patched.metadata.resource_version);
            }
            other => panic!("expected the patch as a Modified event, got {other:?}"),
        }

        vms.delete("in-process", &DeleteParams::default()).await.unwrap();
        assert!(vms.list(&ListParams::default()).await.unwrap().items.is_empty());
    }

    fn events_api(client: kube::Client, group: &str) -> Api<DynamicObject> {
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", "Event"), "events");
        Api::namespaced_with(client, "default", &resource)
    }

    #[tokio::test]
    async fn events_recorded_through_events_k8s_io_are_core_events_about_their_object() {
        let dir = tempfile::tempdir().unwrap();
        let api = EmbeddedApi::open(dir.path()).unwrap();
        let recorded: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "vm-cirros.started"},
            "eventTime": "2026-11-24T05:00:00.000000Z",
            "action": "Start",
            "reason": "Started",
            "note": "VirtualMachineInstance started",
            "type": "Normal",
            "regarding": {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "vm-cirros", "namespace": "default"},
            "reportingController": "kvmlet.io/controller",
            "reportingInstance": "node-1",
        }))
        .unwrap();
        let new_events = events_api(api.client(), "events.k8s.io");
        let created = new_events.create(&PostParams::default(), &recorded).await.unwrap();
        assert_eq!(created.data["note"], "VirtualMachineInstance started");

        // kube-rs's Recorder updates a repeated event with a merge patch in its own field names.
        let series = serde_json::json!({"series": {"count": 2, "lastObservedTime": "2026-11-24T05:00:05.000000Z"}, "note": "again"});
        let patched =
            new_events.patch("vm-cirros.started", &PatchParams::default(), &Patch::Merge(&series)).await.unwrap();
        assert_eq!((patched.data["note"].as_str(), patched.data["series"]["count"].as_i64()), (Some("again"), Some(2)));

        let core_events = events_api(api.client(), "");
        let about_vm = core_events
            .list(&ListParams::default().fields("involvedObject.name=vm-cirros,involvedObject.kind=VirtualMachine"))
            .await
            .unwrap();
        assert_eq!(about_vm.items.len(), 1);
        let event = &about_vm.items[0].data;
        assert_eq!((event["message"].as_str(), event["reason"].as_str()), (Some("again"), Some("Started")));
        assert_eq!(event["reportingComponent"], "kvmlet.io/controller");
        assert!(event.get("note").is_none() && event.get("regarding").is_none());
    }

    #[tokio::test]
    async fn server_side_apply_creates_then_merges() {
        let dir = tempfile::tempdir().unwrap();
        let api = EmbeddedApi::open(dir.path()).unwrap();
        let vms: Api<VirtualMachine> = Api::default_namespaced(api.client());
        let manager = PatchParams::apply("kvmlet-test");

        let applied = vms.patch("applied", &manager, &Patch::Apply(&vm("applied"))).await.unwrap();
        assert_eq!((applied.spec.running, applied.metadata.generation), (Some(false), Some(1)));

        let mut labelled = vm("applied");
        labelled.metadata.labels = Some([("tier".to_string(), "web".to_string())].into());
        labelled.spec.running = Some(true);
        let merged = vms.patch("applied", &manager, &Patch::Apply(&labelled)).await.unwrap();
        assert_eq!(merged.metadata.uid, applied.metadata.uid, "applying again updates the same object");
        assert_eq!((merged.spec.running, merged.metadata.generation), (Some(true), Some(2)));
        assert_eq!(merged.metadata.labels.unwrap()["tier"], "web");

        let error = vms.patch("applied", &PatchParams::default(), &Patch::Apply(&labelled)).await.unwrap_err();
        match error {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422);
                assert!(status.message.contains("fieldManager"), "{}", status.message);
            }
            other => panic!("expected a 422 without a field manager, got {other}"),
        }
    }

    #[tokio::test]
    async fn delete_collection_deletes_what_the_selector_matches() {
        let dir = tempfile::tempdir().unwrap();
        let api = EmbeddedApi::open(dir.path()).unwrap();
        let vms: Api<VirtualMachine> = Api::default_namespaced(api.client());
        for (name, tier) in [("web-1", "web"), ("web-2", "web"), ("db-1", "db")] {
            let mut labelled = vm(name);
            labelled.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
            vms.create(&PostParams::default(), &labelled).await.unwrap();
        }
        vms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("tier=web")).await.unwrap();
        let left: Vec<String> =
            vms.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|v| v.metadata.name).collect();
        assert_eq!(left, ["db-1"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_patches_without_a_resource_version_all_apply() {
        let dir = tempfile::tempdir().unwrap();
        let api = EmbeddedApi::open(dir.path()).unwrap();
        let vms: Api<VirtualMachine> = Api::default_namespaced(api.client());
        vms.create(&PostParams::default(), &vm("raced")).await.unwrap();
        let writers = (0..8).map(|writer| {
            let vms = vms.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let patch = serde_json::json!({"metadata": {"labels": {format!("w{writer}-{i}"): "x"}}});
                    vms.patch("raced", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
                }
            })
        });
        for writer in writers.collect::<Vec<_>>() {
            writer.await.unwrap();
        }
        let labels = vms.get("raced").await.unwrap().metadata.labels.unwrap();
        assert_eq!(labels.len(), 80, "no patch lost or refused");

        // A patch that pins a stale resourceVersion still gets its 409.
        let stale = serde_json::json!({"metadata": {"resourceVersion": "1", "labels": {"late": "x"}}});
        let error = vms.patch("raced", &PatchParams::default(), &Patch::Merge(&stale)).await.unwrap_err();
        assert!(matches!(error, kube::Error::Api(ref s) if s.code == 409), "{error}");
    }

    /// A watch resumed from the resourceVersion a client just read delivers
    /// the very next change, while another task keeps writing: nothing that
    /// commits as the watch starts may fall between its history and its
    /// live stream (kubectl delete --wait hung on such a gap).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_resumed_under_concurrent_writes_misses_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let api = EmbeddedApi::open(dir.path()).unwrap();
        let vms: Api<VirtualMachine> = Api::default_namespaced(api.client());
        vms.create(&PostParams::default(), &vm("busy")).await.unwrap();
        let count = |vm: &VirtualMachine| vm.metadata.labels.as_ref().and_then(|l| l.get("n")?.parse::<u32>().ok());
        const WRITES: u32 = 300;
        let writer = {
            let vms = vms.clone();
            tokio::spawn(async move {
                for n in 1..=WRITES {
                    let patch = serde_json::json!({"metadata": {"labels": {"n": n.to_string()}}});
                    vms.patch("busy", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
                }
            })
        };
        let mut watches = 0;
        while !writer.is_finished() {
            let seen = vms.get("busy").await.unwrap();
            let Some(n) = count(&seen).filter(|n| *n < WRITES) else { continue };
            let version = seen.metadata.resource_version.clone().unwrap();
            let events = vms.watch(&WatchParams::default().fields("metadata.name=busy"), &version).await.unwrap();
            let mut events = std::pin::pin!(events);
            match tokio_stream::StreamExt::next(&mut events).await.unwrap().unwrap() {
                WatchEvent::Modified(next) => assert_eq!(count(&next), Some(n + 1), "the change after {version}"),
                other => panic!("expected the next patch, got {other:?}"),
            }
            watches += 1;
        }
        writer.await.unwrap();
        assert!(watches > 10, "only {watches} watches overlapped the writes");
    }
}
