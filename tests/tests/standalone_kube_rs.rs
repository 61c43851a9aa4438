//! kube-rs, the client kvmlet's own controllers use, against `kvmlet
//! standalone`: a watcher across forced reconnects and a server restart,
//! optimistic concurrency, finalizers holding deletion.

use std::time::Duration;

use e2e::standalone::Standalone;
use futures::StreamExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use proto::{VirtualMachine, VirtualMachineSpec};

async fn client(api: &Standalone) -> Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

fn vm(name: &str) -> VirtualMachine {
    let mut vm = VirtualMachine::new(name, VirtualMachineSpec { running: Some(false), ..Default::default() });
    // Admission checks the template as the node would: it needs memory.
    let memory = k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into());
    vm.spec.template.spec.domain.memory = Some(proto::kubevirt::Memory { guest: Some(memory) });
    vm.metadata.annotations = Some([("step".to_string(), "0".to_string())].into());
    vm
}

async fn set_step(vms: &Api<VirtualMachine>, name: &str, step: u32) {
    let patch = serde_json::json!({"metadata": {"annotations": {"step": step.to_string()}}});
    vms.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_every_change_in_order_across_reconnects_and_a_restart() {
    let mut api = Standalone::start();
    let vms: Api<VirtualMachine> = Api::namespaced(client(&api).await, "default");
    vms.create(&PostParams::default(), &vm("watched")).await.unwrap();

    // timeoutSeconds=1: the server ends each watch after a second and the
    // watcher resumes from the last resourceVersion it saw.
    let config = watcher::Config::default().timeout(1);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = watcher(vms.clone(), config).boxed();
    let watching = tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(vm) | watcher::Event::InitApply(vm)) = event {
                let step: u32 = vm.metadata.annotations.unwrap_or_default()["step"].parse().unwrap();
                let _ = seen_tx.send(step);
            }
        }
    });

    for step in 1..=5 {
        set_step(&vms, "watched", step).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    api.restart();
    for step in 6..=10 {
        set_step(&vms, "watched", step).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    let mut steps = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while steps.last() != Some(&10) {
        let step = tokio::time::timeout_at(deadline, seen.recv()).await.expect("the watcher saw step 10").unwrap();
        steps.push(step);
    }
    watching.abort();
    // Every step, in order; a step may repeat only if the watcher relisted.
    let mut distinct = steps.clone();
    distinct.dedup();
    assert!(distinct.windows(2).all(|w| w[0] < w[1]), "out of order: {steps:?}");
    for step in 1..=10 {
        assert!(steps.contains(&step), "step {step} missing from {steps:?}");
    }
}

#[tokio::test]
async fn stale_updates_get_409() {
    let api = Standalone::start();
    let vms: Api<VirtualMachine> = Api::namespaced(client(&api).await, "default");
    let created = vms.create(&PostParams::default(), &vm("contended")).await.unwrap();
    let mut first = created.clone();
    first.spec.running = Some(true);
    vms.replace("contended", &PostParams::default(), &first).await.unwrap();
    let mut stale = created;
    stale.spec.running = Some(false);
    match vms.replace("contended", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a stale update was not refused: {other:?}"),
    }
    assert_eq!(vms.get("contended").await.unwrap().spec.running, Some(true));
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let api = Standalone::start();
    let vms: Api<VirtualMachine> = Api::namespaced(client(&api).await, "default");
    let mut held = vm("held");
    held.metadata.finalizers = Some(vec!["kvmlet.test/hold".into()]);
    vms.create(&PostParams::default(), &held).await.unwrap();
    vms.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = vms.get("held").await.expect("a finalizer keeps the object");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let release = serde_json::json!([
        {"op": "test", "path": "/metadata/finalizers", "value": ["kvmlet.test/hold"]},
        {"op": "remove", "path": "/metadata/finalizers"}
    ]);
    let patch: json_patch::Patch = serde_json::from_value(release).unwrap();
    vms.patch("held", &PatchParams::default(), &Patch::<()>::Json(patch)).await.unwrap();
    match vms.get("held").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("the object outlived its last finalizer: {other:?}"),
    }
}

/// Writes acknowledged to a client survive the server being SIGKILLed between
/// them: every object created before the kill is there after the restart,
/// with the resourceVersion it was acknowledged with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let mut api = Standalone::start();
    let vms: Api<VirtualMachine> = Api::namespaced(client(&api).await, "default");
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let created = vms.create(&PostParams::default(), &vm(&format!("durable-{i}"))).await.unwrap();
        acknowledged.push((created.metadata.name.unwrap(), created.metadata.resource_version.unwrap()));
    }
    api.restart(); // SIGKILL, then start on the same data directory
    let vms: Api<VirtualMachine> = Api::namespaced(client(&api).await, "default");
    for (name, version) in acknowledged {
        let found = vms.get(&name).await.unwrap_or_else(|e| panic!("{name} was lost: {e}"));
        assert_eq!(found.metadata.resource_version.as_deref(), Some(version.as_str()));
    }
}

/// kube-rs's event `Recorder` writes events.k8s.io/v1 Events (and merge-patches
/// a repeated one into a series); `kubectl describe` reads core v1 Events
/// about the object. Both must see the same Events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_events_show_in_kubectl_describe() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::Resource;

    let api = Standalone::start();
    let client = client(&api).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let created = vms.create(&PostParams::default(), &vm("recorded")).await.unwrap();
    let reporter = Reporter { controller: "kvmlet-test".into(), instance: Some("node-1".into()) };
    let recorder = Recorder::new(client, reporter);
    let event = Event {
        type_: EventType::Normal,
        reason: "SuccessfulCreate".into(),
        note: Some("Started the virtual machine by creating the new virtual machine instance".into()),
        action: "Create".into(),
        secondary: None,
    };
    let reference = created.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap(); // the same again: a series of 2

    let kubectl = e2e::require_tool("kubectl", "kubectl");
    let out = e2e::kubectl(&kubectl, &api.kubeconfig(), &["describe", "vm", "recorded"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let described = String::from_utf8_lossy(&out.stdout);
    let events = described.split("Events:").nth(1).unwrap_or_default();
    assert!(
        events.contains("SuccessfulCreate")
            && events.contains("Started the virtual machine by creating the new virtual machine instance"),
        "{described}"
    );
    assert_eq!(events.matches("SuccessfulCreate").count(), 1, "a repeated event is one series: {described}");
}
