//! Writes that race stay whole: deletes and updates are conditional on the
//! revision they read, a UID precondition protects a successor, an object
//! being deleted takes no new finalizers, and a watch with a selector hears
//! of an object leaving or entering it (as kube-apiserver's watch cache).

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::apiserver::embedded::EmbeddedApi;
use crate::apiserver::test_requests::send;

const VMIS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";

async fn call(api: &EmbeddedApi, method: Method, path: &str, content_type: &str, body: &Value) -> (StatusCode, Value) {
    send(&api.client(), method, path, content_type, "application/json", body).await
}

async fn merge(api: &EmbeddedApi, name: &str, patch: Value) -> (StatusCode, Value) {
    call(api, Method::PATCH, &format!("{VMIS}/{name}"), "application/merge-patch+json", &patch).await
}

async fn create(api: &EmbeddedApi, name: &str, finalizers: &[&str]) -> Value {
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {"domain": {"resources": {"requests": {"memory": "64Mi"}}, "devices": {}}}});
    let (code, created) = call(api, Method::POST, VMIS, "application/json", &vmi).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    created
}

#[tokio::test]
async fn a_uid_precondition_protects_a_successor_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    let vmi = create(&api, "v", &[]).await;
    let stale = json!({"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}});
    let (code, status) = call(&api, Method::DELETE, &format!("{VMIS}/v"), "application/json", &stale).await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    let uid = vmi["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        status["message"],
        format!(
            "Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000, UID in object meta: {uid}"
        )
    );
    let exact = json!({"preconditions": {"uid": uid}});
    assert_eq!(call(&api, Method::DELETE, &format!("{VMIS}/v"), "application/json", &exact).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_object_being_deleted_takes_no_new_finalizers_but_loses_them() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    create(&api, "held", &["example.com/a"]).await;
    let (code, marked) = call(&api, Method::DELETE, &format!("{VMIS}/held"), "application/json", &Value::Null).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{marked}");
    let (code, status) =
        merge(&api, "held", json!({"metadata": {"finalizers": ["example.com/a", "example.com/b"]}})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("no new finalizers can be added if the object is being deleted"), "{message}");
    assert!(message.contains("example.com/b"), "{message}");
    let (code, _) = merge(&api, "held", json!({"metadata": {"finalizers": []}})).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&api, Method::GET, &format!("{VMIS}/held"), "application/json", &Value::Null).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "the last finalizer gone, the object goes");
}

/// A delete racing label writes: every label written before or during the
/// delete is on the object marked for deletion (the delete used to write
/// back the object it read, dropping a write that landed in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_racing_writes_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    for round in 0..10 {
        let name = format!("r{round}");
        create(&api, &name, &["example.com/hold"]).await;
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let (client, path) = (api.client(), format!("{VMIS}/{name}"));
                let patch = json!({"metadata": {"labels": {format!("l{i}"): "x"}}});
                tokio::spawn(async move {
                    send(&client, Method::PATCH, &path, "application/merge-patch+json", "application/json", &patch)
                        .await
                })
            })
            .collect();
        let (code, _) = call(&api, Method::DELETE, &format!("{VMIS}/{name}"), "application/json", &Value::Null).await;
        assert_eq!(code, StatusCode::ACCEPTED);
        for writer in writers {
            assert_eq!(writer.await.unwrap().0, StatusCode::OK);
        }
        let (_, object) = call(&api, Method::GET, &format!("{VMIS}/{name}"), "application/json", &Value::Null).await;
        assert!(object["metadata"]["deletionTimestamp"].is_string(), "{object}");
        for i in 0..8 {
            assert_eq!(object["metadata"]["labels"][format!("l{i}")], "x", "label l{i} lost: {object}");
        }
    }
}

/// The events a watch sends, read until its timeout ends it.
async fn watch_events(api: &EmbeddedApi, query: &str) -> Vec<(String, Value)> {
    let (code, body) =
        call(api, Method::GET, &format!("{VMIS}?watch=true&timeoutSeconds=1&{query}"), "", &Value::Null).await;
    assert_eq!(code, StatusCode::OK);
    let text = body.as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["object"].clone()))
        .collect()
}

#[tokio::test]
async fn a_selecting_watch_hears_an_object_enter_and_leave_its_selection() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    let start = create(&api, "w", &[]).await["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    merge(&api, "w", json!({"metadata": {"labels": {"node": "a"}}})).await;
    merge(&api, "w", json!({"metadata": {"annotations": {"seen": "yes"}}})).await;
    let (_, left) = merge(&api, "w", json!({"metadata": {"labels": {"node": "b"}}})).await;
    merge(&api, "w", json!({"metadata": {"labels": {"node": "a"}}})).await;
    call(&api, Method::DELETE, &format!("{VMIS}/w"), "application/json", &Value::Null).await;

    let events = watch_events(&api, &format!("resourceVersion={start}&labelSelector=node%3Da")).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED", "ADDED", "DELETED"], "{events:?}");
    // Leaving: its last state that matched, at the revision of the change.
    let (_, gone) = &events[2];
    assert_eq!(gone["metadata"]["labels"]["node"], "a");
    assert_eq!(gone["metadata"]["resourceVersion"], left["metadata"]["resourceVersion"]);
    // Without a selector every change is a plain modification.
    let all = watch_events(&api, &format!("resourceVersion={start}")).await;
    let kinds: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["MODIFIED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"], "{all:?}");
}
