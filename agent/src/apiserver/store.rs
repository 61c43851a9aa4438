//! The embedded API's durable store: one redb file holding every object, a
//! global revision (the `resourceVersion` clients see) and a bounded log of
//! recent changes that watches resume from.
//!
//! Every write is one redb transaction committed with `Durability::Immediate`
//! (fsync) before it returns, so a write acknowledged to a client survives a
//! crash. Objects are JSON as clients sent them; the store only owns
//! `metadata.resourceVersion`.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Changes kept for watches; a watch from before the oldest gets 410 Gone.
/// redb's own page cache, in bytes.
const PAGE_CACHE_BYTES: usize = 16 << 20;
pub const EVENT_HISTORY: u64 = 10_000;

/// Where an object lives: resource (`kubevirt.io/virtualmachines`, `namespaces`),
/// namespace (empty for cluster-scoped resources) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(resource: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectKey { resource: resource.into(), namespace: namespace.unwrap_or_default().into(), name: name.into() }
    }

    fn encode(&self) -> String {
        format!("{}|{}|{}", self.resource, self.namespace, self.name)
    }

    fn decode(raw: &str) -> Option<ObjectKey> {
        let mut parts = raw.splitn(3, '|');
        Some(ObjectKey { resource: parts.next()?.into(), namespace: parts.next()?.into(), name: parts.next()?.into() })
    }
}

/// Which objects a list or watch covers: a resource, optionally one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource: String,
    pub namespace: Option<String>,
}

impl Scope {
    fn prefix(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}|{}|", self.resource, ns),
            None => format!("{}|", self.resource),
        }
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        key.resource == self.resource && self.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as watches deliver it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub revision: u64,
    pub kind: EventType,
    pub key: ObjectKey,
    pub object: Value,
    /// The object before a `Modified` change (none otherwise): a watch with a
    /// selector turns an object that stops or starts matching into
    /// `DELETED` or `ADDED`, as Kubernetes' watch cache does.
    pub previous: Option<Value>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEvent {
    kind: EventType,
    key: String,
    object: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    #[error("the object has been modified; expected resourceVersion {expected}, found {found}")]
    Conflict { expected: u64, found: u64 },
    #[error("resourceVersion {requested} is too old; the oldest available is {oldest}")]
    Expired { requested: u64, oldest: u64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(e.to_string())
            }
        }
    )*};
}
db_err!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A change to apply to one object: given its current value, what to write.
type Change = Box<dyn FnOnce(Option<Value>) -> Result<(EventType, Option<Value>, Value), StoreError> + Send>;

struct WriteRequest {
    key: ObjectKey,
    change: Change,
    reply: std::sync::mpsc::SyncSender<Result<Value, StoreError>>,
}

/// Most writes committed by one transaction (and one fsync).
const MAX_BATCH: usize = 256;

pub struct Store {
    db: Arc<Database>,
    changes: broadcast::Sender<Arc<Event>>,
    writer: Option<std::sync::mpsc::Sender<WriteRequest>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue ends the writer; joining it releases the database file.
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

fn parse(bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_history(path, EVENT_HISTORY)
    }

    /// Like `open`, keeping `history` changes for watches.
    pub fn open_with_history(path: &Path, history: u64) -> Result<Store, StoreError> {
        // Born 0600: the objects include Secrets.
        let file = super::private_files::open_private(path).map_err(|e| StoreError::Database(e.to_string()))?;
        // redb caches up to 1 GiB of pages by default, growing the agent's
        // RSS with every object written; the kernel's page cache keeps the
        // file's hot pages anyway.
        let db = Database::builder()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create_with_backend(redb::backends::FileBackend::new(file)?)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(OBJECTS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let (changes, _) = broadcast::channel(4096);
        let db = Arc::new(db);
        let (writer, queue) = std::sync::mpsc::channel();
        let committer = Committer { db: db.clone(), changes: changes.clone(), history: history.max(1) };
        let writer_thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || committer.run(queue))
            .map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(Store { db, changes, writer: Some(writer), writer_thread: Some(writer_thread) })
    }

    /// The revision of the last committed write.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(REVISION)?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let txn = self.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        objects.get(key.encode().as_str())?.map(|v| parse(v.value())).transpose()
    }

    /// Every object in `scope` and the revision they were read at (one snapshot).
    pub fn list(&self, scope: &Scope) -> Result<(Vec<(ObjectKey, Value)>, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        let revision = txn.open_table(META)?.get(REVISION)?.map(|v| v.value()).unwrap_or(0);
        let prefix = scope.prefix();
        let mut items = Vec::new();
        for entry in objects.range(prefix.as_str()..)? {
            let (raw_key, value) = entry?;
            let raw_key = raw_key.value();
            if !raw_key.starts_with(&prefix) {
                break;
            }
            let key = ObjectKey::decode(raw_key).ok_or_else(|| StoreError::Corrupt(format!("key {raw_key}")))?;
            items.push((key, parse(value.value())?));
        }
        Ok((items, revision))
    }

    /// One write, queued to the writer thread, which commits concurrent
    /// writes together (group commit: one fsync for the batch) and answers
    /// only once the batch is on disk.
    fn write(
        &self,
        key: &ObjectKey,
        change: impl FnOnce(Option<Value>) -> Result<(EventType, Option<Value>, Value), StoreError> + Send + 'static,
    ) -> Result<Value, StoreError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let request = WriteRequest { key: key.clone(), change: Box::new(change), reply };
        let closed = || StoreError::Database("the store is shutting down".into());
        self.writer.as_ref().ok_or_else(closed)?.send(request).map_err(|_| closed())?;
        answer.recv().map_err(|_| closed())?
    }

    pub fn create(&self, key: &ObjectKey, object: Value) -> Result<Value, StoreError> {
        self.write(key, move |current| match current {
            Some(_) => Err(StoreError::AlreadyExists),
            None => Ok((EventType::Added, Some(object), Value::Null)),
        })
    }

    /// Replaces the object; with `precondition`, only if its resourceVersion matches.
    pub fn update(&self, key: &ObjectKey, object: Value, precondition: Option<u64>) -> Result<Value, StoreError> {
        self.write(key, move |current| {
            let current = current.ok_or(StoreError::NotFound)?;
            check(&current, precondition)?;
            Ok((EventType::Modified, Some(object), Value::Null))
        })
    }

    pub fn delete(&self, key: &ObjectKey, precondition: Option<u64>) -> Result<Value, StoreError> {
        self.write(key, move |current| {
            let current = current.ok_or(StoreError::NotFound)?;
            check(&current, precondition)?;
            Ok((EventType::Deleted, None, current))
        })
    }

    /// Changes after `revision` in `scope`, oldest first, and the revision
    /// they were read at (one snapshot: a watch goes on live from exactly
    /// there); `Expired` when the history no longer reaches back that far.
    pub fn events_after(&self, revision: u64, scope: &Scope) -> Result<(Vec<Event>, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let current = txn.open_table(META)?.get(REVISION)?.map(|v| v.value()).unwrap_or(0);
        let oldest = events.first()?.map(|(k, _)| k.value()).unwrap_or(current + 1);
        if revision + 1 < oldest && revision < current {
            return Err(StoreError::Expired { requested: revision, oldest });
        }
        let mut out = Vec::new();
        for entry in events.range(revision + 1..)? {
            let (rev, bytes) = entry?;
            let stored: StoredEvent =
                serde_json::from_slice(bytes.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let key = ObjectKey::decode(&stored.key).ok_or_else(|| StoreError::Corrupt(stored.key.clone()))?;
            if scope.contains(&key) {
                out.push(Event {
                    revision: rev.value(),
                    kind: stored.kind,
                    key,
                    object: stored.object,
                    previous: stored.previous,
                });
            }
        }
        Ok((out, current.max(revision)))
    }

    /// Changes as they commit (subscribe before reading history to miss none).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.changes.subscribe()
    }
}

/// A committed batch: each request's answer, and the events to broadcast.
type Committed = (Vec<Result<Value, StoreError>>, Vec<Event>);

/// The writer thread's state.
struct Committer {
    db: Arc<Database>,
    changes: broadcast::Sender<Arc<Event>>,
    history: u64,
}

impl Committer {
    fn run(self, queue: std::sync::mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            batch.extend(queue.try_iter().take(MAX_BATCH - 1));
            let replies: Vec<_> = batch.iter().map(|r| r.reply.clone()).collect();
            match self.commit(batch) {
                Ok((results, events)) => {
                    for event in events {
                        let _ = self.changes.send(Arc::new(event));
                    }
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Database(error.to_string())));
                    }
                }
            }
        }
    }

    /// Applies every request in one transaction. A request whose change is
    /// refused (conflict, not found) gets its error and writes nothing; a
    /// storage error aborts the whole batch.
    fn commit(&self, batch: Vec<WriteRequest>) -> Result<Committed, StoreError> {
        let txn = self.db.begin_write()?;
        let mut results = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        {
            let mut objects = txn.open_table(OBJECTS)?;
            let mut log = txn.open_table(EVENTS)?;
            let mut meta = txn.open_table(META)?;
            let mut revision = meta.get(REVISION)?.map(|v| v.value()).unwrap_or(0);
            for request in batch {
                let raw_key = request.key.encode();
                let current = objects.get(raw_key.as_str())?.map(|v| parse(v.value())).transpose()?;
                let previous = current.clone();
                let (kind, new, mut reported) = match (request.change)(current) {
                    Ok(change) => change,
                    Err(refused) => {
                        results.push(Err(refused));
                        continue;
                    }
                };
                // A deleted object's last state is the event's object already.
                let previous = previous.filter(|_| kind == EventType::Modified);
                revision += 1;
                match new {
                    Some(mut object) => {
                        set_resource_version(&mut object, revision);
                        reported = object.clone();
                        let bytes = serde_json::to_vec(&object).expect("JSON values serialize");
                        objects.insert(raw_key.as_str(), bytes.as_slice())?;
                    }
                    None => {
                        set_resource_version(&mut reported, revision);
                        objects.remove(raw_key.as_str())?;
                    }
                }
                let stored = StoredEvent { kind, key: raw_key, object: reported.clone(), previous };
                log.insert(revision, serde_json::to_vec(&stored).expect("events serialize").as_slice())?;
                results.push(Ok(reported.clone()));
                let StoredEvent { previous, .. } = stored;
                events.push(Event { revision, kind, key: request.key, object: reported, previous });
            }
            if revision > self.history {
                log.retain_in(..=revision - self.history, |_, _| false)?;
            }
            meta.insert(REVISION, revision)?;
        }
        txn.commit()?;
        Ok((results, events))
    }
}

fn check(current: &Value, precondition: Option<u64>) -> Result<(), StoreError> {
    match precondition {
        Some(expected) if expected != resource_version(current) => {
            Err(StoreError::Conflict { expected, found: resource_version(current) })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
