//! Leader election over a coordination.k8s.io/v1 Lease, as Kubernetes
//! controllers do it: the holder renews `renewTime` every few seconds; a
//! lease not renewed within its duration may be taken over. Every write
//! replaces the Lease at the resourceVersion that was read, so two
//! candidates never both win. A leader that cannot renew in time stops
//! its work before another replica may take over.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (host name and process id).
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str) -> LeaseConfig {
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: format!("{host}_{}", std::process::id()),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Whether `lease` is held by someone (else than `me`) whose renewal is still valid.
fn held_by_other(lease: &Lease, me: &str, at: Timestamp) -> bool {
    let spec = lease.spec.clone().unwrap_or_default();
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else { return false };
    if holder == me {
        return false;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    spec.renew_time.is_some_and(|renewed| renewed.0.checked_add(duration).is_ok_and(|expiry| expiry > at))
}

/// One attempt to acquire or renew: Ok(true) when this candidate holds the lease.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> kube::Result<bool> {
    let at = now();
    let seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(config.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(at)),
                renew_time: Some(MicroTime(at)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    if held_by_other(&lease, &config.identity, at) {
        return Ok(false);
    }
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(at));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(at));
    lease.spec = Some(spec);
    // The resourceVersion read makes this a compare-and-swap.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up (on a clean shutdown) so another replica need not
/// wait for it to expire.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else { return };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(e) = api.replace(&config.name, &PostParams::default(), &lease).await {
        tracing::warn!(error = %e, "cannot release the lease");
    }
}

/// Runs `work` while this candidate leads, until `shutdown` resolves. Lost
/// leadership stops the work and makes this a candidate again.
pub async fn run_as_leader<W, F>(client: Client, config: LeaseConfig, work: W, shutdown: impl Future<Output = ()>)
where
    W: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_renewal = std::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        let held = match try_acquire(&api, &config).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = %config.name, error = %e, "cannot reach the lease");
                false
            }
        };
        if running.as_ref().is_some_and(|task| task.is_finished()) {
            // The work ended (a panic): a leader that does nothing must not keep the lease idle.
            tracing::error!(lease = %config.name, "the leader's work ended; starting it again");
            running = None;
        }
        if held {
            last_renewal = std::time::Instant::now();
            if running.is_none() {
                tracing::info!(lease = %config.name, identity = %config.identity, "became the leader");
                running = Some(tokio::spawn(work()));
            }
        } else if running.is_some() && last_renewal.elapsed() + config.renew_every >= config.duration {
            // Stop before the lease can expire, so two leaders never overlap.
            tracing::warn!(lease = %config.name, "lost the lease; stopping");
            if let Some(task) = running.take() {
                task.abort();
            }
        }
        // A candidate polls more often than a leader renews, to take over soon after expiry.
        let pause = if running.is_some() { config.renew_every } else { config.renew_every.min(Duration::from_secs(2)) };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if let Some(task) = running.take() {
        task.abort();
        release(&api, &config).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_ago_s: i64) -> Lease {
        let renewed = now().checked_sub(SignedDuration::from_secs(renewed_ago_s)).unwrap();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_held_until_it_expires() {
        assert!(held_by_other(&lease(Some("a"), 3), "b", now()));
        assert!(!held_by_other(&lease(Some("a"), 3), "a", now()), "our own lease");
        assert!(!held_by_other(&lease(Some("a"), 16), "b", now()), "expired");
        assert!(!held_by_other(&lease(None, 1), "b", now()), "released");
    }
}
