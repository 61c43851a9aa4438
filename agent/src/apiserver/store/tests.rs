use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

use super::*;

fn object(name: &str, value: u32) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "namespace": "default"}, "spec": {"value": value}})
}

fn vm(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new("kubevirt.io/virtualmachines", Some(namespace), name)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

#[test]
fn writes_get_increasing_resource_versions() {
    let (_dir, store) = store();
    let a = store.create(&vm("default", "a"), object("a", 1)).unwrap();
    let b = store.create(&vm("default", "b"), object("b", 1)).unwrap();
    assert_eq!(a["metadata"]["resourceVersion"], "1");
    assert_eq!(b["metadata"]["resourceVersion"], "2");
    assert!(matches!(store.create(&vm("default", "a"), object("a", 2)), Err(StoreError::AlreadyExists)));
    assert_eq!(store.get(&vm("default", "a")).unwrap().unwrap()["spec"]["value"], 1);
    assert_eq!(store.revision().unwrap(), 2);
}

#[test]
fn lists_are_scoped_by_resource_and_namespace() {
    let (_dir, store) = store();
    store.create(&vm("default", "a"), object("a", 1)).unwrap();
    store.create(&vm("other", "b"), object("b", 1)).unwrap();
    store.create(&ObjectKey::new("kubevirt.io/virtualmachineinstances", Some("default"), "a"), object("a", 1)).unwrap();
    let all = Scope { resource: "kubevirt.io/virtualmachines".into(), namespace: None };
    let (items, revision) = store.list(&all).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(revision, 3);
    let default = Scope { namespace: Some("default".into()), ..all };
    let (items, _) = store.list(&default).unwrap();
    assert_eq!(items.iter().map(|(k, _)| k.name.as_str()).collect::<Vec<_>>(), ["a"]);
}

#[test]
fn stale_updates_and_deletes_conflict() {
    let (_dir, store) = store();
    store.create(&vm("default", "a"), object("a", 1)).unwrap();
    let updated = store.update(&vm("default", "a"), object("a", 2), Some(1)).unwrap();
    assert_eq!(updated["metadata"]["resourceVersion"], "2");
    match store.update(&vm("default", "a"), object("a", 3), Some(1)) {
        Err(StoreError::Conflict { expected: 1, found: 2 }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(store.delete(&vm("default", "a"), Some(1)), Err(StoreError::Conflict { .. })));
    assert!(matches!(store.update(&vm("default", "zzz"), object("zzz", 1), None), Err(StoreError::NotFound)));
    let deleted = store.delete(&vm("default", "a"), Some(2)).unwrap();
    assert_eq!(deleted["metadata"]["resourceVersion"], "3", "a deletion is a new revision");
    assert_eq!(store.get(&vm("default", "a")).unwrap(), None);
}

#[test]
fn history_replays_in_order_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_history(&dir.path().join("state.redb"), 3).unwrap();
    let scope = Scope { resource: "kubevirt.io/virtualmachines".into(), namespace: Some("default".into()) };
    store.create(&vm("default", "a"), object("a", 1)).unwrap(); // 1
    store.create(&vm("other", "x"), object("x", 1)).unwrap(); // 2, out of scope
    store.update(&vm("default", "a"), object("a", 2), None).unwrap(); // 3
    store.delete(&vm("default", "a"), None).unwrap(); // 4
    let (events, snapshot) = store.events_after(1, &scope).unwrap();
    let kinds: Vec<(u64, EventType)> = events.iter().map(|e| (e.revision, e.kind)).collect();
    assert_eq!((kinds.as_slice(), snapshot), ([(3, EventType::Modified), (4, EventType::Deleted)].as_slice(), 4));
    assert_eq!(store.events_after(4, &scope).unwrap(), (vec![], 4));
    // Out-of-scope changes still move the snapshot on: a watch resumes after them.
    store.create(&vm("other", "y"), object("y", 1)).unwrap(); // 5
    assert_eq!(store.events_after(4, &scope).unwrap(), (vec![], 5));
    match store.events_after(0, &scope) {
        Err(StoreError::Expired { requested: 0, oldest: 3 }) => {}
        other => panic!("expected 410-style expiry, got {other:?}"),
    }
}

#[test]
fn subscribers_see_committed_changes() {
    let (_dir, store) = store();
    let mut changes = store.subscribe();
    store.create(&vm("default", "a"), object("a", 1)).unwrap();
    let event = changes.try_recv().unwrap();
    assert_eq!((event.revision, event.kind, event.key.name.as_str()), (1, EventType::Added, "a"));
    assert_eq!(event.object["metadata"]["resourceVersion"], "1");
}

#[test]
fn reopening_keeps_objects_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path).unwrap();
        store.create(&vm("default", "a"), object("a", 1)).unwrap();
        store.update(&vm("default", "a"), object("a", 2), None).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.revision().unwrap(), 2);
    assert_eq!(store.get(&vm("default", "a")).unwrap().unwrap()["spec"]["value"], 2);
    assert_eq!(store.create(&vm("default", "b"), object("b", 1)).unwrap()["metadata"]["resourceVersion"], "3");
}

/// The child half of `acknowledged_writes_survive_sigkill`: writes objects as
/// fast as it can and prints each one's name once `create` returned.
#[test]
#[ignore = "runs only as the child of acknowledged_writes_survive_sigkill"]
fn crash_writer_child() {
    let path = std::env::var("KVMLET_STORE_CRASH_PATH").expect("run by the crash test");
    let store = Store::open(Path::new(&path)).unwrap();
    for i in 0.. {
        let name = format!("vm-{i}");
        store.create(&vm("default", &name), object(&name, i)).unwrap();
        println!("ack {name}");
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "apiserver::store::tests::crash_writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVMLET_STORE_CRASH_PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acknowledged.len() < 200 {
        let line = lines.next().expect("the writer acknowledges writes").unwrap();
        // The test harness prints "test ... " before the first line of output.
        if let Some((_, name)) = line.split_once("ack ") {
            acknowledged.push(name.to_string());
        }
    }
    // SIGKILL mid-stream: the writer is between (or inside) transactions.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(&path).unwrap();
    for (i, name) in acknowledged.iter().enumerate() {
        let object = store.get(&vm("default", name)).unwrap().unwrap_or_else(|| panic!("{name} was lost"));
        assert_eq!(object["metadata"]["resourceVersion"], (i + 1).to_string());
    }
    assert!(store.revision().unwrap() >= acknowledged.len() as u64);
}

#[test]
fn concurrent_writers_are_committed_together_without_losing_any() {
    let (_dir, store) = store();
    let store = Arc::new(store);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store.create(&vm("default", &format!("t{t}-{i}")), object("x", i)).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let scope = Scope { resource: "kubevirt.io/virtualmachines".into(), namespace: None };
    let (items, revision) = store.list(&scope).unwrap();
    assert_eq!((items.len(), revision), (400, 400));
    let mut versions: Vec<u64> = items.iter().map(|(_, o)| resource_version(o)).collect();
    versions.sort();
    assert_eq!(versions, (1..=400).collect::<Vec<_>>(), "every write has its own revision");
}

#[test]
fn racing_conditional_updates_let_exactly_one_win() {
    let (_dir, store) = store();
    let store = Arc::new(store);
    store.create(&vm("default", "contended"), object("contended", 0)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                store.update(&vm("default", "contended"), object("contended", t), Some(1)).is_ok()
            })
        })
        .collect();
    let winners = threads.into_iter().map(|t| t.join().unwrap()).filter(|won| *won).count();
    assert_eq!(winners, 1);
    assert_eq!(store.revision().unwrap(), 2);
}
