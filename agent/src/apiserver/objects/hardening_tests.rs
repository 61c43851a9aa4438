//! The API's answers to bad input (invalid names and labels, malformed
//! selectors, oversized bodies, too-new resourceVersions) and its status
//! subresource rules, through the same router kubectl reaches.

use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::apiserver::embedded::EmbeddedApi;
use crate::apiserver::objects::MAX_REQUEST_BODY;
use crate::apiserver::store::ObjectKey;

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

async fn call(api: &EmbeddedApi, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body))
        .unwrap();
    let response = api.client().send(request).await.unwrap();
    let code = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn post(api: &EmbeddedApi, path: &str, object: &Value) -> (StatusCode, Value) {
    call(api, Method::POST, path, serde_json::to_vec(object).unwrap()).await
}

fn vm(name: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
           "spec": {"running": false, "template": {"spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {}}}}}})
}

#[tokio::test]
async fn invalid_names_and_labels_are_a_422_worded_as_kube_apiserver() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();

    let (code, status) = post(&api, VMS, &vm("Bad_Name")).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["message"],
        "VirtualMachine.kubevirt.io \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    assert_eq!(status["details"]["causes"][0]["reason"], "FieldValueInvalid");
    assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(
        (status["details"]["kind"].as_str(), status["details"]["group"].as_str()),
        (Some("VirtualMachine"), Some("kubevirt.io"))
    );

    for name in ["..", "a/b", "a\u{0}b", &"a".repeat(300)] {
        let (code, _) = post(&api, VMS, &vm(name)).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}");
    }
    let mut labelled = vm("labelled");
    labelled["metadata"]["labels"] = json!({"a/b/c!!": "x", "big": "v".repeat(100_000)});
    let (code, status) = post(&api, VMS, &labelled).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with("VirtualMachine.kubevirt.io \"labelled\" is invalid: [metadata.labels: Invalid value: \"a/b/c!!\": a qualified name must consist"), "{message}");
    assert!(message.contains(": must be no more than 63 characters"), "{message}");
    assert_eq!(status["details"]["causes"].as_array().unwrap().len(), 2);

    let (code, status) = post(&api, "/api/v1/namespaces", &json!({"metadata": {"name": "a.b"}})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        status["message"],
        "Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": must not contain dots"
    );

    // Updates are checked too: a patch adding a bad label is refused.
    assert_eq!(post(&api, VMS, &vm("fine")).await.0, StatusCode::CREATED);
    let patch = serde_json::to_vec(&json!({"metadata": {"labels": {"k": "x y"}}})).unwrap();
    let request = Request::builder()
        .method(Method::PATCH)
        .uri(format!("{VMS}/fine"))
        .header("content-type", "application/merge-patch+json")
        .body(kube::client::Body::from(patch))
        .unwrap();
    assert_eq!(api.client().send(request).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A name with '/' reaches no object through any path.
    let (code, _) = call(&api, Method::GET, &format!("{VMS}/fine/extra"), vec![]).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = call(&api, Method::PUT, &format!("{VMS}/a%2Fb"), serde_json::to_vec(&vm("a/b")).unwrap()).await;
    assert_ne!(code.as_u16() / 100, 2);
}

#[tokio::test]
async fn objects_stored_under_names_now_refused_are_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    assert_eq!(post(&api, "/api/v1/namespaces", &json!({"metadata": {"name": "old"}})).await.0, StatusCode::CREATED);
    let store = api.store();
    for name in ["Legacy_One", "Legacy_Two", "Legacy_Free"] {
        let mut object = vm(name);
        object["metadata"]["namespace"] = json!("old");
        object["metadata"]["labels"] = json!({"bad key!": "x"});
        if name != "Legacy_Free" {
            object["metadata"]["finalizers"] = json!(["example.com/hold"]);
        }
        store.create(&ObjectKey::new("kubevirt.io/virtualmachines", Some("old"), name), object).unwrap();
    }
    let old = "/apis/kubevirt.io/v1/namespaces/old/virtualmachines";
    let (code, list) = call(&api, Method::GET, old, vec![]).await;
    assert_eq!((code, list["items"].as_array().unwrap().len()), (StatusCode::OK, 3));

    // Its finalizer can be removed (labels untouched) and then it is deleted by name.
    let remove = serde_json::to_vec(&json!({"metadata": {"finalizers": null}})).unwrap();
    let request = Request::builder()
        .method(Method::PATCH)
        .uri(format!("{old}/Legacy_One"))
        .header("content-type", "application/merge-patch+json")
        .body(kube::client::Body::from(remove))
        .unwrap();
    assert_eq!(api.client().send(request).await.unwrap().status(), StatusCode::OK);
    assert_eq!(call(&api, Method::DELETE, &format!("{old}/Legacy_One"), vec![]).await.0, StatusCode::OK);
    assert_eq!(call(&api, Method::GET, &format!("{old}/Legacy_One"), vec![]).await.0, StatusCode::NOT_FOUND);

    // Deleting the namespace deletes what is in it (the finalizer holds the other until removed).
    assert_eq!(call(&api, Method::DELETE, "/api/v1/namespaces/old", vec![]).await.0, StatusCode::OK);
    let key = ObjectKey::new("kubevirt.io/virtualmachines", Some("old"), "Legacy_Two");
    let free = ObjectKey::new("kubevirt.io/virtualmachines", Some("old"), "Legacy_Free");
    for _ in 0..200 {
        let marked = store.get(&key).unwrap().is_some_and(|o| o["metadata"].get("deletionTimestamp").is_some());
        if marked && store.get(&free).unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let held = store.get(&key).unwrap().unwrap();
    assert!(held["metadata"].get("deletionTimestamp").is_some(), "marked for deletion: {held}");
    assert!(store.get(&free).unwrap().is_none(), "an object without finalizers goes with its namespace");
}

#[tokio::test]
async fn status_is_ignored_on_create_and_update_of_the_main_resource() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    let mut submitted = vm("with-status");
    submitted["status"] = json!({"printableStatus": "Running", "ready": true});
    let (code, created) = post(&api, VMS, &submitted).await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(created.get("status").is_none(), "the submitted status is dropped: {created}");

    let (code, namespace) =
        post(&api, "/api/v1/namespaces", &json!({"metadata": {"name": "fresh"}, "status": {"phase": "Terminating"}}))
            .await;
    assert_eq!((code, &namespace["status"]), (StatusCode::CREATED, &json!({"phase": "Active"})));

    let status = serde_json::to_vec(&json!({"status": {"printableStatus": "Stopped"}})).unwrap();
    let request = Request::builder()
        .method(Method::PATCH)
        .uri(format!("{VMS}/with-status/status"))
        .header("content-type", "application/merge-patch+json")
        .body(kube::client::Body::from(status))
        .unwrap();
    assert_eq!(api.client().send(request).await.unwrap().status(), StatusCode::OK);

    let mut replaced = created.clone();
    replaced["status"] = json!({"printableStatus": "Running"});
    replaced["metadata"]["labels"] = json!({"tier": "web"});
    replaced["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let (code, stored) =
        call(&api, Method::PUT, &format!("{VMS}/with-status"), serde_json::to_vec(&replaced).unwrap()).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(stored["metadata"]["labels"]["tier"], "web", "the rest of the update applies");
    assert_eq!(stored["status"], json!({"printableStatus": "Stopped"}), "the stored status is kept");
}

#[tokio::test]
async fn malformed_selectors_are_a_400_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    let (code, status) = call(&api, Method::GET, &format!("{VMS}?labelSelector=a%2Fb%2Fc!!"), vec![]).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::BAD_REQUEST, Some("BadRequest")));
    assert!(status["message"].as_str().unwrap().starts_with("unable to parse requirement: "), "{status}");
    let (code, status) = call(&api, Method::GET, &format!("{VMS}?fieldSelector=metadata.name"), vec![]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(status["message"], "invalid selector: 'metadata.name'; can't understand 'metadata.name'");
    let (code, _) = call(&api, Method::GET, &format!("{VMS}?watch=true&labelSelector=x%20in%20y"), vec![]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "watches check their selectors too");
    let (code, _) = call(&api, Method::DELETE, &format!("{VMS}?labelSelector=!"), vec![]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "and so does deletecollection");
}

#[tokio::test]
async fn an_oversized_body_is_a_413_status() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    let mut huge = vm("huge");
    huge["metadata"]["annotations"] = json!({"x": "y".repeat(MAX_REQUEST_BODY)});
    let (code, status) = post(&api, VMS, &huge).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    assert_eq!(status["message"], format!("Request entity too large: limit is {MAX_REQUEST_BODY}"));
}

#[tokio::test]
async fn a_watch_from_a_future_resource_version_times_out_as_kube_apiserver() {
    let dir = tempfile::tempdir().unwrap();
    let api = EmbeddedApi::open(dir.path()).unwrap();
    let current = api.store().revision().unwrap();
    let ahead = current + 1000;
    let (code, status) = call(&api, Method::GET, &format!("{VMS}?watch=true&resourceVersion={ahead}"), vec![]).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(status["message"], format!("Timeout: Too large resource version: {ahead}, current: {current}"));
    assert_eq!(status["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
    assert_eq!(status["details"]["retryAfterSeconds"], 1);

    // One revision ahead, and a write arrives meanwhile: the watch starts.
    let next = current + 1;
    let writer = {
        let store = api.store();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let key = ObjectKey::new("kubevirt.io/virtualmachines", Some("default"), "late");
            tokio::task::spawn_blocking(move || store.create(&key, vm("late")).unwrap()).await.unwrap();
        })
    };
    let request = Request::get(format!("{VMS}?watch=true&resourceVersion={current}&timeoutSeconds=1"))
        .body(kube::client::Body::empty())
        .unwrap();
    let waited = Request::get(format!("{VMS}?watch=true&resourceVersion={next}&timeoutSeconds=1"))
        .body(kube::client::Body::empty())
        .unwrap();
    let client = api.client();
    let (early, late) = tokio::join!(client.send(request), client.send(waited));
    writer.await.unwrap();
    assert_eq!(early.unwrap().status(), StatusCode::OK);
    assert_eq!(late.unwrap().status(), StatusCode::OK, "the store caught up within the wait");
}
