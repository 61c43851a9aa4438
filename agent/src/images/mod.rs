//! Container images for VMIs: `containerDisk.image` and
//! `kernelBoot.container.image`, pulled from registries into the node's
//! store (`store`) before the VMI is translated.
//!
//! - `reference`: image references, pull policies, mirrors and insecure registries.
//! - `registry`: one pull (OCI distribution via `oci-client`), credentials from a dockerconfigjson Secret.
//! - `unpack`: layers applied to a tree, hostile entries refused.
//! - `store`: content-addressed blobs and trees, references, users, prune.
//!
//! Which copy a VMI gets: the hand-made layout `IMAGE_DIR/REF/` wins when it
//! exists, whatever the policy (nothing is pulled for it); else the store,
//! as the pull policy says (KubeVirt's default: `Always` for `:latest` or no
//! tag, else `IfNotPresent`; `Never` only uses what the store has).
//!
//! Pulls run in tasks of their own, one per VMI and image (the store shares
//! blobs and trees between them, locked per digest); the task pokes the
//! VMI's reconcile when done. A failed pull is retried after 10 s·2^n, at
//! most 300 s, as the kubelet does; meanwhile the VMI stays `Scheduled` with
//! reason `ErrImagePull` / `ImagePullBackOff`.

pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use proto::kubevirt::VirtualMachineInstance;
use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use reference::{ImageRef, PullPolicy, RegistryConfig};
use registry::DockerConfig;
use store::Store;

/// First retry delay after a failed pull, and the most it grows to.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// One image a VMI needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The field holding `image`: `spec.volumes[0].containerDisk`.
    pub field: String,
    pub image: String,
    pub policy: Option<String>,
    pub secret: Option<String>,
}

/// The images a VMI needs, with the fields that name them.
pub fn wanted(vmi: &VirtualMachineInstance) -> Vec<Wanted> {
    let mut wanted = Vec::new();
    let firmware = vmi.spec.domain.firmware.as_ref();
    if let Some(c) = firmware.and_then(|f| f.kernel_boot.as_ref()).and_then(|k| k.container.as_ref()) {
        wanted.push(Wanted {
            field: "spec.domain.firmware.kernelBoot.container".into(),
            image: c.image.clone(),
            policy: c.image_pull_policy.clone(),
            secret: c.image_pull_secret.clone(),
        });
    }
    for (index, volume) in vmi.spec.volumes.iter().enumerate() {
        if let Some(c) = &volume.container_disk {
            wanted.push(Wanted {
                field: format!("spec.volumes[{index}].containerDisk"),
                image: c.image.clone(),
                policy: c.image_pull_policy.clone(),
                secret: c.image_pull_secret.clone(),
            });
        }
    }
    wanted
}

/// Where a VMI's images stand.
#[derive(Debug)]
pub enum Ensure {
    /// Every image is on the node; `Pulled` events to record.
    Ready(Vec<Notice>),
    /// A pull runs or waits for its retry.
    Waiting(Waiting),
    /// The VMI cannot get its image here (a bad reference, `Never` and absent).
    Failed { field: String, message: String },
}

#[derive(Debug)]
pub struct Waiting {
    /// `status.reason` and the Ready condition's reason: `PullingImage`, `ErrImagePull`, `ImagePullBackOff`.
    pub reason: &'static str,
    pub message: String,
    /// Events to record now.
    pub events: Vec<Notice>,
    /// When to look again (a retry); `None`: the pull task pokes.
    pub retry_in: Option<Duration>,
}

/// An event for the VMI, in the kubelet's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

#[derive(Debug, Clone)]
enum PullState {
    Running { attempts: u32 },
    Pulled { size: u64, took: Duration, reported: bool },
    Failed { error: String, attempts: u32, retry_at: Instant, reported: bool, backoff_reported: bool },
}

/// The node's images: the store and the pulls under way.
#[derive(Clone)]
pub struct Images {
    store: Store,
    registry: RegistryConfig,
    limits: unpack::Limits,
    image_dir: PathBuf,
    client: kube::Client,
    poke: UnboundedSender<ObjectRef<VirtualMachineInstance>>,
    /// (VMI uid, image) → pull.
    pulls: Arc<Mutex<HashMap<(String, String), PullState>>>,
}

fn backoff(attempts: u32) -> Duration {
    BACKOFF_START.saturating_mul(1 << attempts.saturating_sub(1).min(10)).min(BACKOFF_MAX)
}

impl Images {
    pub fn new(
        image_dir: PathBuf,
        registry: RegistryConfig,
        limits: unpack::Limits,
        client: kube::Client,
        poke: UnboundedSender<ObjectRef<VirtualMachineInstance>>,
    ) -> std::io::Result<Images> {
        // reqwest is built without a TLS provider of its own: use ring, as the rest of kvmlet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::open(&image_dir)?;
        Ok(Images { store, registry, limits, image_dir, client, poke, pulls: Arc::default() })
    }

    fn pulls(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), PullState>> {
        self.pulls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the pulls of a VMI that is going away.
    pub fn forget(&self, uid: &str) {
        self.pulls().retain(|(u, _), _| u != uid);
    }

    /// Brings the VMI's images onto the node, or says why not yet.
    pub fn ensure(&self, vmi: &VirtualMachineInstance) -> Ensure {
        let uid = vmi.metadata.uid.clone().unwrap_or_default();
        let mut events = Vec::new();
        let mut waiting: Option<Waiting> = None;
        let mut present = Vec::new();
        for wanted in wanted(vmi) {
            let hand_made = crate::vmi::validate::image_reference(&wanted.image).map(|r| self.image_dir.join(r));
            if hand_made.is_ok_and(|dir| dir.is_dir()) {
                continue; // the hand-made layout IMAGE_DIR/REF
            }
            let image = match ImageRef::parse(&wanted.image) {
                Ok(image) => image,
                Err(e) => return Ensure::Failed { field: format!("{}.image", wanted.field), message: e.to_string() },
            };
            let policy = match PullPolicy::of(wanted.policy.as_deref(), &image) {
                Ok(policy) => policy,
                Err(message) => return Ensure::Failed { field: format!("{}.imagePullPolicy", wanted.field), message },
            };
            let key = (uid.clone(), image.to_string());
            if policy != PullPolicy::Always && self.store.lookup(&image).is_some() && !self.pulls().contains_key(&key) {
                present.push(image);
                continue;
            }
            if policy == PullPolicy::Never {
                let message = format!(
                    "image {:?} is not on this node and its pull policy is Never (ErrImageNeverPull)",
                    wanted.image
                );
                return Ensure::Failed { field: format!("{}.image", wanted.field), message };
            }
            let now = Instant::now();
            let mut pulls = self.pulls();
            let state = pulls.get(&key).cloned();
            let quoted = &wanted.image;
            let due = match &state {
                None => true,
                Some(PullState::Failed { retry_at, .. }) => now >= *retry_at,
                Some(_) => false,
            };
            match state {
                _ if due => {
                    let attempts = match state {
                        Some(PullState::Failed { attempts, .. }) => attempts,
                        _ => 0,
                    };
                    pulls.insert(key, PullState::Running { attempts });
                    drop(pulls);
                    self.spawn_pull(vmi, image, wanted.secret.clone());
                    events.push(Notice {
                        warning: false,
                        reason: "Pulling",
                        note: format!("Pulling image {quoted:?}"),
                    });
                    waiting.get_or_insert(Waiting {
                        reason: "PullingImage",
                        message: format!("Pulling image {quoted:?}"),
                        events: Vec::new(),
                        retry_in: None,
                    });
                }
                None | Some(PullState::Running { .. }) => {
                    waiting.get_or_insert(Waiting {
                        reason: "PullingImage",
                        message: format!("Pulling image {quoted:?}"),
                        events: Vec::new(),
                        retry_in: None,
                    });
                }
                Some(PullState::Pulled { size, took, reported }) => {
                    if !reported {
                        let note = format!(
                            "Successfully pulled image {quoted:?} in {:.1}s. Image size: {size} bytes.",
                            took.as_secs_f64()
                        );
                        events.push(Notice { warning: false, reason: "Pulled", note });
                        pulls.insert(key, PullState::Pulled { size, took, reported: true });
                    }
                    present.push(image);
                }
                Some(PullState::Failed { error, attempts, retry_at, reported, backoff_reported }) => {
                    let retry_in = Some(retry_at.saturating_duration_since(now));
                    if !reported {
                        let note = format!("Failed to pull image {quoted:?}: {error}");
                        events.push(Notice { warning: true, reason: "Failed", note: note.clone() });
                        pulls.insert(
                            key,
                            PullState::Failed { error, attempts, retry_at, reported: true, backoff_reported },
                        );
                        waiting = Some(Waiting { reason: "ErrImagePull", message: note, events: Vec::new(), retry_in });
                    } else {
                        let note = format!("Back-off pulling image {quoted:?}");
                        if !backoff_reported {
                            events.push(Notice { warning: false, reason: "BackOff", note: note.clone() });
                            let state = PullState::Failed {
                                error: error.clone(),
                                attempts,
                                retry_at,
                                reported,
                                backoff_reported: true,
                            };
                            pulls.insert(key, state);
                        }
                        let message = format!("{note}: {error}");
                        waiting.get_or_insert(Waiting {
                            reason: "ImagePullBackOff",
                            message,
                            events: Vec::new(),
                            retry_in,
                        });
                    }
                }
            }
        }
        match waiting {
            Some(waiting) => Ensure::Waiting(Waiting { events, ..waiting }),
            None => {
                for image in &present {
                    if let Err(e) = self.store.add_user(image, &uid) {
                        tracing::warn!(%image, error = %e, "cannot record the image's user");
                    }
                }
                self.forget(&uid);
                Ensure::Ready(events)
            }
        }
    }

    fn spawn_pull(&self, vmi: &VirtualMachineInstance, image: ImageRef, secret: Option<String>) {
        let this = self.clone();
        let namespace = vmi.namespace().unwrap_or_default();
        let name = vmi.name_any();
        let uid = vmi.metadata.uid.clone().unwrap_or_default();
        let span = tracing::info_span!("vmi", %namespace, vmi = %name, %uid);
        let task = async move {
            let started = Instant::now();
            tracing::info!(%image, "pulling image");
            let result = match this.credentials(&namespace, secret.as_deref()).await {
                Ok(credentials) => registry::pull(&this.store, &this.registry, this.limits, &image, &credentials)
                    .await
                    .map_err(|e| crate::errors::with_causes(&e)),
                Err(e) => Err(e),
            };
            let key = (uid.clone(), image.to_string());
            let mut pulls = this.pulls();
            let attempts = match pulls.get(&key) {
                Some(PullState::Running { attempts }) => *attempts,
                _ => 0,
            };
            let state = match result {
                Ok(record) => {
                    tracing::info!(%image, digest = record.digest, size = record.size, "image pulled");
                    PullState::Pulled { size: record.size, took: started.elapsed(), reported: false }
                }
                Err(error) => {
                    let attempts = attempts + 1;
                    let delay = backoff(attempts);
                    tracing::warn!(%image, %error, retry_in_s = delay.as_secs(), "image pull failed");
                    PullState::Failed {
                        error,
                        attempts,
                        retry_at: Instant::now() + delay,
                        reported: false,
                        backoff_reported: false,
                    }
                }
            };
            pulls.insert(key, state);
            drop(pulls);
            let _ = this.poke.send(ObjectRef::new(&name).within(&namespace));
        };
        tokio::spawn(task.instrument(span));
    }

    async fn credentials(&self, namespace: &str, secret: Option<&str>) -> Result<DockerConfig, String> {
        let Some(name) = secret else { return Ok(DockerConfig::default()) };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| format!("imagePullSecret {name:?}: {e}"))?
            .ok_or_else(|| format!("imagePullSecret {name:?} not found"))?;
        let json = secret.data.unwrap_or_default().remove(".dockerconfigjson").map(|b| b.0).unwrap_or_default();
        DockerConfig::parse(name, &json).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_10s_up_to_300s() {
        let delays: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
