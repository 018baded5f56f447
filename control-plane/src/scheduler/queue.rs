//! kube-scheduler's scheduling queue: activeQ (higher priority first, then the longest
//! waiting), backoffQ (1 s doubling to 10 s per failed attempt), the unschedulable pool (pods
//! wait there until a cluster event that could help them, by the plugins that rejected them,
//! or 5 minutes), and gated pods (`schedulingGates`, never tried until they are removed).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::PodInfo;
use super::plugins::Plugin;

/// How long a pod stays in the unschedulable pool without an event before it is retried.
pub const MAX_IN_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// Cluster events that can make a pod schedulable, and the plugins each concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    NodeAdd,
    NodeDelete,
    /// A node's spec.unschedulable or taints changed.
    NodeTaint,
    NodeLabel,
    NodeAllocatable,
    AssignedPodAdd,
    AssignedPodLabel,
    AssignedPodDelete,
}

impl Event {
    /// Whether a pod rejected by `p` could now pass it.
    fn concerns(self, p: Plugin) -> bool {
        use Plugin::*;
        match self {
            Event::NodeAdd => true,
            Event::NodeDelete => p == PodTopologySpread,
            Event::NodeTaint => {
                matches!(p, NodeUnschedulable | TaintToleration | PodTopologySpread)
            }
            Event::NodeLabel => matches!(p, NodeAffinity | PodTopologySpread | InterPodAffinity),
            Event::NodeAllocatable => p == NodeResourcesFit,
            Event::AssignedPodAdd | Event::AssignedPodLabel => {
                matches!(p, PodTopologySpread | InterPodAffinity)
            }
            Event::AssignedPodDelete => {
                matches!(
                    p,
                    NodePorts | NodeResourcesFit | PodTopologySpread | InterPodAffinity
                )
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    Gated,
    InFlight,
}

/// A pod waiting to be scheduled.
#[derive(Debug, Clone)]
pub struct Queued {
    pub info: Arc<PodInfo>,
    /// When it entered or last moved inside the queue (orders pods of equal priority).
    pub timestamp: Instant,
    pub attempts: u32,
    pub failures: u32,
    /// The plugins that rejected it last (empty after an error: any event moves it).
    pub plugins: HashSet<Plugin>,
    seq: u64,
    place: Place,
    /// An event that could help it came while it was being scheduled.
    moved_in_flight: bool,
}

type ActiveKey = (Reverse<i32>, Instant, u64);

pub struct Queue {
    pods: HashMap<String, Queued>,
    active: BTreeSet<(ActiveKey, String)>,
    backoff: BTreeSet<(Instant, u64, String)>,
    initial_backoff: Duration,
    max_backoff: Duration,
    seq: u64,
}

fn gated(info: &PodInfo) -> bool {
    info.spec()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

impl Queue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Queue {
        Queue {
            pods: HashMap::new(),
            active: BTreeSet::new(),
            backoff: BTreeSet::new(),
            initial_backoff,
            max_backoff,
            seq: 0,
        }
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    fn key(q: &Queued) -> ActiveKey {
        (Reverse(q.info.priority), q.timestamp, q.seq)
    }

    /// Takes the pod out of whichever structure holds it (it stays known).
    fn detach(&mut self, uid: &str) {
        let Some(q) = self.pods.get(uid) else { return };
        match q.place {
            Place::Active => {
                self.active.remove(&(Self::key(q), uid.to_string()));
            }
            Place::Backoff(at) => {
                self.backoff.remove(&(at, q.seq, uid.to_string()));
            }
            _ => {}
        }
    }

    fn place(&mut self, uid: &str, place: Place) {
        self.detach(uid);
        let Some(q) = self.pods.get_mut(uid) else {
            return;
        };
        q.place = place;
        match place {
            Place::Active => {
                self.active.insert((Self::key(q), uid.to_string()));
            }
            Place::Backoff(at) => {
                self.backoff.insert((at, q.seq, uid.to_string()));
            }
            _ => {}
        }
    }

    fn backoff_until(&self, q: &Queued) -> Instant {
        let n = q.failures.max(1) - 1;
        let d = self
            .initial_backoff
            .checked_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        q.timestamp + d
    }

    /// To backoffQ while its back-off lasts, else to activeQ (gates checked first).
    fn requeue(&mut self, uid: &str, now: Instant) {
        let Some(q) = self.pods.get(uid) else { return };
        if gated(&q.info) {
            self.place(uid, Place::Gated);
            return;
        }
        let until = self.backoff_until(q);
        let place = if q.failures > 0 && until > now {
            Place::Backoff(until)
        } else {
            Place::Active
        };
        if place == Place::Active {
            self.touch(uid, now);
        }
        self.place(uid, place);
    }

    fn touch(&mut self, uid: &str, now: Instant) {
        self.detach(uid);
        self.seq += 1;
        if let Some(q) = self.pods.get_mut(uid) {
            q.seq = self.seq;
            q.timestamp = now;
        }
    }

    /// A pod to schedule, new or changed.
    pub fn upsert(&mut self, info: Arc<PodInfo>, now: Instant) {
        let uid = info.uid.clone();
        let Some(q) = self.pods.get(&uid) else {
            self.seq += 1;
            let q = Queued {
                info,
                timestamp: now,
                attempts: 0,
                failures: 0,
                plugins: HashSet::new(),
                seq: self.seq,
                place: Place::Gated,
                moved_in_flight: false,
            };
            self.pods.insert(uid.clone(), q);
            self.requeue(&uid, now);
            return;
        };
        // What the scheduler reacts to: the spec and labels, not status writes.
        let changed = q.info.pod.spec != info.pod.spec || q.info.labels() != info.labels();
        let place = q.place;
        self.detach(&uid);
        let q = self.pods.get_mut(&uid).expect("known pod");
        q.info = info;
        match place {
            Place::InFlight => q.moved_in_flight |= changed,
            Place::Gated => self.requeue(&uid, now),
            Place::Unschedulable(_) if changed => self.requeue(&uid, now),
            p => self.place(&uid, p),
        }
    }

    pub fn remove(&mut self, uid: &str) {
        self.detach(uid);
        self.pods.remove(uid);
    }

    pub fn uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// A pod whose binding failed: back in the queue, after its back-off.
    pub fn retry_later(&mut self, info: Arc<PodInfo>, now: Instant) {
        let uid = info.uid.clone();
        self.upsert(info, now);
        self.detach(&uid);
        if let Some(q) = self.pods.get_mut(&uid) {
            q.place = Place::InFlight;
        }
        self.failed(&uid, HashSet::new(), now);
    }

    /// The next pod to try (highest priority, then longest waiting), marked in flight.
    pub fn pop(&mut self) -> Option<Queued> {
        let (_, uid) = self.active.pop_first()?;
        let q = self.pods.get_mut(&uid)?;
        q.place = Place::InFlight;
        q.attempts += 1;
        q.moved_in_flight = false;
        Some(q.clone())
    }

    /// The pod was placed: it leaves the queue.
    pub fn done(&mut self, uid: &str) {
        self.remove(uid);
    }

    /// The pod fits nowhere for `plugins` (empty: an error). It waits for an event that
    /// could help, unless one came while it was tried.
    pub fn failed(&mut self, uid: &str, plugins: HashSet<Plugin>, now: Instant) {
        let Some(q) = self.pods.get_mut(uid) else {
            return;
        };
        if q.place != Place::InFlight {
            return;
        }
        q.failures += 1;
        q.timestamp = now;
        let retry = q.moved_in_flight || plugins.is_empty();
        q.plugins = plugins;
        if retry {
            let until = self.backoff_until(self.pods.get(uid).expect("known"));
            self.place(uid, Place::Backoff(until));
        } else {
            self.place(uid, Place::Unschedulable(now));
        }
    }

    /// Moves the pods that `event` could help out of the unschedulable pool.
    pub fn on_event(&mut self, event: Event, now: Instant) {
        let mut moved = Vec::new();
        for (uid, q) in self.pods.iter_mut() {
            let helps = q.plugins.is_empty() || q.plugins.iter().any(|p| event.concerns(*p));
            match q.place {
                Place::Unschedulable(_) if helps => moved.push(uid.clone()),
                Place::InFlight => q.moved_in_flight = true,
                _ => {}
            }
        }
        for uid in moved {
            self.requeue(&uid, now);
        }
    }

    /// Back-offs that ended go to activeQ; pods parked longer than five minutes are retried.
    pub fn flush(&mut self, now: Instant) {
        while let Some((at, _, uid)) = self.backoff.first().cloned() {
            if at > now {
                break;
            }
            self.touch(&uid, now);
            self.place(&uid, Place::Active);
        }
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, q)| {
                matches!(q.place, Place::Unschedulable(since) if now.duration_since(since) >= MAX_IN_UNSCHEDULABLE)
            })
            .map(|(u, _)| u.clone())
            .collect();
        for uid in stale {
            self.requeue(&uid, now);
        }
    }

    /// When the next back-off ends.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.first().map(|(at, _, _)| *at)
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
