//! The node's image store, content-addressed under `--image-dir`:
//!
//! ```text
//! IMAGE_DIR/blobs/sha256/<hex>          verified layer blobs
//! IMAGE_DIR/unpacked/sha256-<hex>/      the tree of the image whose manifest has that digest
//! IMAGE_DIR/refs/<escaped ref>          JSON: manifest digest, layers, size
//! IMAGE_DIR/users/<escaped ref>/<uid>   VMIs started from the image
//! IMAGE_DIR/tmp/                        everything being written; renamed into place when complete
//! IMAGE_DIR/locks/<key>                 file locks (with an in-process lock per key)
//! ```
//!
//! Nothing is visible under its final name before it is complete: a crash
//! leaves only `tmp/` entries, which the next `Store::open` removes when no
//! other process uses the store (every open store holds a shared lock on
//! `tmp.lock`; cleaning needs it exclusively). The hand-made layout
//! (`IMAGE_DIR/REF/disk/…`) never collides: a REF always ends in `:tag` or `@digest`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::reference::ImageRef;

/// What the store knows of a pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image manifest's digest (`sha256:…`).
    pub digest: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// Bytes of the layers as stored (compressed).
    pub size: u64,
}

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Held (shared) while the store is open: `tmp/` is only cleaned when no one else holds it.
    _open: Arc<Flock<File>>,
}

/// A held per-key lock: in-process first, then the file lock.
pub struct KeyLock {
    _file: Flock<File>,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

fn hex_of(digest: &str) -> io::Result<&str> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{digest:?} is not a sha256 digest")))
    }
}

impl Store {
    pub fn open(dir: &Path) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        // Private: images may come from registries only this node's credentials open.
        for sub in ["blobs", "blobs/sha256", "unpacked", "refs", "users", "tmp", "locks"] {
            match fs::DirBuilder::new().mode(0o700).create(dir.join(sub)) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
        }
        let file =
            fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(dir.join("tmp.lock"))?;
        let open = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // Nobody else has the store open: what is in tmp/ is a crash's leftovers.
                for entry in fs::read_dir(dir.join("tmp"))?.flatten() {
                    let path = entry.path();
                    let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                    if let Err(e) = removed {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a half-written image file");
                    }
                }
                lock.relock(FlockArg::LockShared).map_err(io::Error::from)?;
                lock
            }
            Err((file, _)) => Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| io::Error::from(e))?,
        };
        Ok(Store { dir: dir.to_path_buf(), locks: Arc::default(), _open: Arc::new(open) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &str) -> io::Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub fn unpacked_path(&self, digest: &str) -> io::Result<PathBuf> {
        Ok(self.dir.join("unpacked").join(format!("sha256-{}", hex_of(digest)?)))
    }

    fn ref_path(&self, image: &ImageRef) -> PathBuf {
        self.dir.join("refs").join(image.file_name())
    }

    /// A new name under `tmp/`, for something that is renamed into place when complete.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.dir.join("tmp").join(format!("{what}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Locks `key` (a digest) for this process and every other.
    pub async fn lock(&self, key: &str) -> io::Result<KeyLock> {
        let local = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_string()).or_default().clone()
        };
        let local = local.lock_owned().await;
        let path = self.dir.join("locks").join(key.replace([':', '/'], "-"));
        let file = tokio::task::spawn_blocking(move || {
            let file = fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)?;
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
        })
        .await
        .map_err(io::Error::other)??;
        Ok(KeyLock { _file: file, _local: local })
    }

    /// The record of a pulled image, if the store has it (and its tree).
    pub fn lookup(&self, image: &ImageRef) -> Option<ImageRecord> {
        lookup_in(&self.dir, image)
    }

    /// Points `image` at a complete record (atomically).
    pub fn set_ref(&self, image: &ImageRef, record: &ImageRecord) -> io::Result<()> {
        let temp = self.temp_path("ref");
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temp)?;
        file.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&temp, self.ref_path(image))
    }

    /// Every image reference the store holds, with its record.
    pub fn images(&self) -> Vec<(ImageRef, ImageRecord)> {
        let Ok(entries) = fs::read_dir(self.dir.join("refs")) else { return Vec::new() };
        let mut images: Vec<_> = entries
            .flatten()
            .filter_map(|e| ImageRef::from_file_name(e.file_name().to_str()?))
            .filter_map(|image| Some((image.clone(), self.lookup(&image)?)))
            .collect();
        images.sort_by_key(|(image, _)| image.to_string());
        images
    }

    /// Notes that the VMI `uid` uses `image`.
    pub fn add_user(&self, image: &ImageRef, uid: &str) -> io::Result<()> {
        let dir = self.dir.join("users").join(image.file_name());
        fs::create_dir_all(&dir)?;
        File::create(dir.join(uid.replace('/', "_"))).map(drop)
    }

    /// UIDs recorded as users of `image`.
    pub fn users(&self, image: &ImageRef) -> Vec<String> {
        let dir = self.dir.join("users").join(image.file_name());
        let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
        let mut users: Vec<String> =
            entries.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect();
        users.sort();
        users
    }

    /// Forgets the users of `image` for which `alive` is false.
    pub fn drop_gone_users(&self, image: &ImageRef, alive: impl Fn(&str) -> bool) {
        let dir = self.dir.join("users").join(image.file_name());
        for uid in self.users(image) {
            if !alive(&uid) {
                let _ = fs::remove_file(dir.join(&uid));
            }
        }
    }

    /// Removes the images no VMI uses (per `alive`), then the trees and blobs
    /// no remaining image needs. Returns the references removed.
    pub fn prune(&self, alive: impl Fn(&str) -> bool) -> io::Result<Vec<ImageRef>> {
        let mut removed = Vec::new();
        for (image, _) in self.images() {
            self.drop_gone_users(&image, &alive);
            if self.users(&image).is_empty() {
                fs::remove_file(self.ref_path(&image))?;
                let _ = fs::remove_dir(self.dir.join("users").join(image.file_name()));
                removed.push(image);
            }
        }
        let kept = self.images();
        let trees: Vec<PathBuf> = kept.iter().filter_map(|(_, r)| self.unpacked_path(&r.digest).ok()).collect();
        let blobs: Vec<PathBuf> =
            kept.iter().flat_map(|(_, r)| r.layers.iter().filter_map(|l| self.blob_path(l).ok())).collect();
        for entry in fs::read_dir(self.dir.join("unpacked"))?.flatten() {
            if !trees.contains(&entry.path()) {
                fs::remove_dir_all(entry.path())?;
            }
        }
        for entry in fs::read_dir(self.dir.join("blobs/sha256"))?.flatten() {
            if !blobs.contains(&entry.path()) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(removed)
    }
}

fn lookup_in(dir: &Path, image: &ImageRef) -> Option<ImageRecord> {
    let record: ImageRecord = serde_json::from_slice(&fs::read(dir.join("refs").join(image.file_name())).ok()?).ok()?;
    let tree = dir.join("unpacked").join(format!("sha256-{}", hex_of(&record.digest).ok()?));
    tree.is_dir().then_some(record)
}

/// The unpacked tree of `image` pulled into the store under `image_dir`, if any.
pub fn pulled_tree(image_dir: &Path, image: &str) -> Option<PathBuf> {
    let record = lookup_in(image_dir, &ImageRef::parse(image).ok()?)?;
    Some(image_dir.join("unpacked").join(format!("sha256-{}", hex_of(&record.digest).ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> ImageRef {
        ImageRef::parse(name).unwrap()
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn a_reference_is_only_visible_with_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = ImageRecord { digest: digest('a'), layers: vec![digest('b')], size: 3 };
        store.set_ref(&image("busybox:1"), &record).unwrap();
        assert_eq!(store.lookup(&image("busybox:1")), None, "no tree yet");
        fs::create_dir(store.unpacked_path(&record.digest).unwrap()).unwrap();
        assert_eq!(store.lookup(&image("busybox:1")), Some(record));
        assert_eq!(store.lookup(&image("busybox:2")), None);
        assert!(fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none(), "no temporary left");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dir.path().join("blobs")).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_when_no_one_else_has_the_store_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        fs::write(first.temp_path("blob"), b"half").unwrap();
        fs::create_dir(first.temp_path("unpack")).unwrap();
        let second = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 2, "the first store may be writing them");
        drop((first, second));
        let _third = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn prune_keeps_what_live_vmis_use_and_the_blobs_they_share() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shared = digest('c');
        for (name, d, layers) in [("a:1", 'a', vec![shared.clone()]), ("b:1", 'b', vec![shared.clone(), digest('d')])] {
            let record = ImageRecord { digest: digest(d), layers: layers.clone(), size: 1 };
            fs::create_dir(store.unpacked_path(&record.digest).unwrap()).unwrap();
            for layer in &layers {
                fs::write(store.blob_path(layer).unwrap(), b"x").unwrap();
            }
            store.set_ref(&image(name), &record).unwrap();
        }
        store.add_user(&image("a:1"), "uid-live").unwrap();
        store.add_user(&image("b:1"), "uid-gone").unwrap();
        let removed = store.prune(|uid| uid == "uid-live").unwrap();
        assert_eq!(removed, vec![image("b:1")]);
        assert!(store.lookup(&image("a:1")).is_some());
        assert!(store.blob_path(&shared).unwrap().exists());
        assert!(!store.blob_path(&digest('d')).unwrap().exists());
        assert!(!store.unpacked_path(&digest('b')).unwrap().exists());
    }

    #[tokio::test]
    async fn a_key_lock_excludes_other_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.lock("sha256:x").await.unwrap();
        let other = store.clone();
        let mut waiter = tokio::spawn(async move { other.lock("sha256:x").await.map(drop) });
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), &mut waiter).await;
        assert!(early.is_err(), "the second lock was granted while the first was held");
        drop(held);
        waiter.await.unwrap().unwrap();
    }
}
