//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it
//! for kube-scheduler and kube-controller-manager: the holder renews `renewTime` every retry
//! period; a candidate takes the lease once it has seen the same record, unrenewed, for a whole
//! lease duration (measured on its own clock, so clocks need not agree); a holder that cannot
//! renew within the renew deadline stops leading. Every write is conditional on the Lease's
//! resourceVersion, so two candidates never both win.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// The last record seen, and when it was first seen (this node's clock).
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    at: Instant,
}

impl Elector {
    /// Kubernetes' defaults: 15 s leases, renewed every 2 s, given up after 10 s of failures.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Runs `lead()` whenever this instance holds the lease, and stops it (aborting its task)
    /// when the lease is lost; never returns.
    pub async fn run<F, Fut>(self, lead: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut observed = Observed {
            record: None,
            at: Instant::now(),
        };
        loop {
            match self.try_acquire_or_renew(&mut observed).await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::time::sleep(self.retry_period).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, "leader election: {e}");
                    tokio::time::sleep(self.retry_period).await;
                    continue;
                }
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "leading");
            let task = tokio::spawn(lead());
            self.keep(&mut observed).await;
            task.abort();
            tracing::warn!(lease = %self.name, "lost the lease: stopped leading");
        }
    }

    /// Renews until a renewal has not succeeded for the renew deadline.
    async fn keep(&self, observed: &mut Observed) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period).await;
            match self.try_acquire_or_renew(observed).await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(lease = %self.name, "renewing the lease: {e}");
                    if last_renewal.elapsed() >= self.renew_deadline {
                        return;
                    }
                }
            }
        }
    }

    fn spec(&self, now: MicroTime, acquired: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Takes or renews the lease; false when someone else holds it (or won a race for it).
    async fn try_acquire_or_renew(&self, observed: &mut Observed) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Some((spec.holder_identity.clone(), spec.renew_time.clone()));
        if observed.record != record {
            observed.record = record;
            observed.at = Instant::now();
        }
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.lease_duration);
        if holder.is_some() && !mine && observed.at.elapsed() < duration {
            return Ok(false);
        }
        let (acquired, transitions) = if mine {
            (
                spec.acquire_time.clone().unwrap_or_else(|| now.clone()),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (now.clone(), spec.lease_transitions.unwrap_or(0) + 1)
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
