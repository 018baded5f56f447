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

    /// Other timings than Kubernetes' (tests elect in seconds, not tens of them). The Lease
    /// records its duration in whole seconds, so `lease_duration` is rounded up to one.
    pub fn with_timing(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = renew_deadline;
        self.retry_period = retry_period;
        self
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
            lease_duration_seconds: Some(self.lease_duration.as_secs_f64().ceil() as i32),
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::reconcile::rbac::{CONTROLLER_MANAGER_USER, SCHEDULER_USER};
    use crate::testing::cluster::{eventually, Cluster, Link, Task};

    /// Who leads, as the candidates' `lead` tasks report it.
    #[derive(Default)]
    struct Leadership {
        leading: Vec<&'static str>,
        /// Every start of leading, in order.
        started: Vec<&'static str>,
        /// Starts while another candidate still led.
        overlaps: Vec<String>,
    }

    type Log = Arc<Mutex<Leadership>>;

    /// Held by a `lead` task while it runs: the elector aborting the task drops it.
    struct Leading(&'static str, Log);

    impl Leading {
        fn start(name: &'static str, log: &Log) -> Self {
            let mut l = log.lock().unwrap();
            if !l.leading.is_empty() {
                let others = format!("{name} started leading while {:?} led", l.leading);
                l.overlaps.push(others);
            }
            l.leading.push(name);
            l.started.push(name);
            Leading(name, log.clone())
        }
    }

    impl Drop for Leading {
        fn drop(&mut self) {
            self.1.lock().unwrap().leading.retain(|n| *n != self.0);
        }
    }

    /// A component's user, and the Lease it elects on.
    type Component = (&'static str, &'static str);

    const SCHEDULER: Component = (SCHEDULER_USER, "kube-scheduler");
    const CONTROLLER_MANAGER: Component = (CONTROLLER_MANAGER_USER, "kube-controller-manager");

    /// One apiserver's elector for a component's Lease, acting as the component's user.
    struct Candidate {
        name: &'static str,
        identity: &'static str,
        link: Link,
        /// Set when the process dies: whatever it was leading stops with it.
        dead: tokio::sync::watch::Sender<bool>,
        _elector: Task,
    }

    type Timing = (Duration, Duration, Duration);

    /// 1 s leases renewed every 50 ms, given up after 300 ms without a renewal.
    const FAST: Timing = (
        Duration::from_secs(1),
        Duration::from_millis(300),
        Duration::from_millis(50),
    );

    fn candidate(
        c: &Cluster,
        (user, lease): Component,
        name: &'static str,
        identity: &'static str,
        (duration, renew, retry): Timing,
        log: &Log,
    ) -> Candidate {
        let link = Link::default();
        let client = c.client_on(user, &[], link.clone());
        let (dead, dead_rx) = tokio::sync::watch::channel(false);
        let elector = Elector::new(client, "kube-system", lease, identity)
            .with_timing(duration, renew, retry);
        let log = log.clone();
        let task = Task::spawn(elector.run(move || {
            let (log, mut dead) = (log.clone(), dead_rx.clone());
            async move {
                let _leading = Leading::start(name, &log);
                let _ = dead.wait_for(|d| *d).await;
            }
        }));
        Candidate {
            name,
            identity,
            link,
            dead,
            _elector: task,
        }
    }

    impl Candidate {
        /// Ends the process: no more renewals, and what it led stops.
        fn kill(self) {
            self.link.cut();
            let _ = self.dead.send(true);
        }
    }

    async fn lease(c: &Cluster, (_, name): Component) -> LeaseSpec {
        Api::<Lease>::namespaced(c.admin(), "kube-system")
            .get(name)
            .await
            .expect("the component's Lease")
            .spec
            .unwrap_or_default()
    }

    fn secs(t: &Option<MicroTime>) -> f64 {
        t.as_ref()
            .map_or(0.0, |t| t.0.as_millisecond() as f64 / 1000.0)
    }

    /// The `n`th candidate to start leading.
    async fn nth_leader(log: &Log, n: usize) -> &'static str {
        eventually(
            &format!("leader #{}", n + 1),
            Duration::from_secs(10),
            || {
                let started = log.lock().unwrap().started.get(n).copied();
                async move { started }
            },
        )
        .await
    }

    #[tokio::test]
    async fn one_candidate_leads_and_another_takes_over_when_it_stops_renewing() {
        let c = Cluster::new().await;
        let log = Log::default();
        let a = candidate(&c, SCHEDULER, "a", "host-a_1", FAST, &log);
        let b = candidate(&c, SCHEDULER, "b", "host-b_1", FAST, &log);
        let first = nth_leader(&log, 0).await;
        let (holder, other) = if first == a.name { (&a, &b) } else { (&b, &a) };
        let spec = lease(&c, SCHEDULER).await;
        assert_eq!(spec.holder_identity.as_deref(), Some(holder.identity));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(1));

        // While the holder renews, the other never takes over, however long that lasts.
        let held = eventually(
            "the holder to renew past one lease duration",
            Duration::from_secs(10),
            || async {
                let s = lease(&c, SCHEDULER).await;
                (secs(&s.renew_time) - secs(&s.acquire_time) > 1.5).then_some(s)
            },
        )
        .await;
        assert_eq!(held.holder_identity.as_deref(), Some(holder.identity));
        assert_eq!(log.lock().unwrap().started, [holder.name]);

        // Cut off, the holder stops leading within its renew deadline; the other takes over
        // once the record went unrenewed for a lease duration.
        holder.link.cut();
        assert_eq!(nth_leader(&log, 1).await, other.name);
        let spec = lease(&c, SCHEDULER).await;
        assert_eq!(spec.holder_identity.as_deref(), Some(other.identity));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(log.lock().unwrap().leading, [other.name]);

        // Back, the first holder waits its turn; it gets it when the new holder is cut off.
        holder.link.restore();
        other.link.cut();
        assert_eq!(nth_leader(&log, 2).await, holder.name);
        let spec = lease(&c, SCHEDULER).await;
        assert_eq!(spec.holder_identity.as_deref(), Some(holder.identity));
        assert_eq!(
            spec.lease_transitions,
            Some(2),
            "each change of holder counts"
        );
        let l = log.lock().unwrap();
        assert!(l.overlaps.is_empty(), "{:?}", l.overlaps);
    }

    #[tokio::test]
    async fn a_restarted_holder_takes_its_lease_back_at_once() {
        let c = Cluster::new().await;
        let log = Log::default();
        // Leases long enough that only their holder can get them back within the test.
        let slow = (
            Duration::from_secs(30),
            Duration::from_secs(10),
            Duration::from_millis(50),
        );
        let a = candidate(&c, CONTROLLER_MANAGER, "a", "host-a_1", slow, &log);
        assert_eq!(nth_leader(&log, 0).await, "a");
        let before = lease(&c, CONTROLLER_MANAGER).await;
        let b = candidate(&c, CONTROLLER_MANAGER, "b", "host-b_1", slow, &log);
        a.kill();
        eventually(
            "the dead holder to stop leading",
            Duration::from_secs(5),
            || {
                let idle = log.lock().unwrap().leading.is_empty();
                async move { idle.then_some(()) }
            },
        )
        .await;

        // The same identity (kept in the apiserver's data dir) comes back.
        let restarted = candidate(&c, CONTROLLER_MANAGER, "a again", "host-a_1", slow, &log);
        assert_eq!(nth_leader(&log, 1).await, restarted.name);
        let after = lease(&c, CONTROLLER_MANAGER).await;
        assert_eq!(after.holder_identity.as_deref(), Some("host-a_1"));
        assert_eq!(
            after.lease_transitions,
            Some(0),
            "the holder did not change"
        );
        assert_eq!(after.acquire_time, before.acquire_time);
        assert!(secs(&after.renew_time) > secs(&before.renew_time));
        assert!(!log.lock().unwrap().started.contains(&b.name));
    }
}
