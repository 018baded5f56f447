//! Zones and the rate of NoExecute tainting in each (upstream's `handleDisruption`,
//! `ComputeZoneState` and `RateLimitedTimedQueue`): a zone is Normal, PartiallyDisrupted (more
//! than two nodes not Ready and at least `--unhealthy-zone-threshold` of them) or FullyDisrupted
//! (none Ready). Nodes are tainted at `--node-eviction-rate` per second in a Normal or fully
//! disrupted zone, at `--secondary-node-eviction-rate` in a partially disrupted zone of more than
//! `--large-cluster-size-threshold` nodes, not at all in a smaller one, and not at all anywhere
//! while every zone is fully disrupted (the control plane, not the nodes, is then the likely
//! culprit).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;

/// Upstream's `EvictionRateLimiterBurst`.
const BURST: f64 = 1.0;

/// `nodetopology.GetZoneKey`: region and zone from the topology labels (or their deprecated
/// beta names), "" when the node has neither.
pub fn zone_key(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str, beta: &str| {
        labels
            .and_then(|l| l.get(k).or_else(|| l.get(beta)))
            .cloned()
            .unwrap_or_default()
    };
    let region = get(
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/region",
    );
    let zone = get(
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/zone",
    );
    if region.is_empty() && zone.is_empty() {
        return String::new();
    }
    format!("{region}:\x00:{zone}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    Initial,
    Normal,
    FullDisruption,
    PartialDisruption,
}

/// `ComputeZoneState`: how many nodes of a zone are not Ready (`ready[i]` false) and its state.
pub fn zone_state(ready: &[bool], unhealthy_threshold: f32) -> (usize, ZoneState) {
    let up = ready.iter().filter(|r| **r).count();
    let down = ready.len() - up;
    let state = if up == 0 && down > 0 {
        ZoneState::FullDisruption
    } else if down > 2 && down as f32 / (down + up) as f32 >= unhealthy_threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    };
    (down, state)
}

/// client-go's token bucket: `qps` tokens a second up to a burst of one; a rate of 0 (or less)
/// never lets anything through.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(qps: f32, now: Instant) -> TokenBucket {
        TokenBucket {
            qps: f64::from(qps),
            tokens: BURST,
            last: now,
        }
    }

    pub fn qps(&self) -> f32 {
        self.qps as f32
    }

    pub fn try_accept(&mut self, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A zone's nodes waiting to be tainted, in order, and its limiter.
#[derive(Debug)]
pub struct RateLimitedQueue {
    queue: VecDeque<String>,
    limiter: TokenBucket,
}

impl RateLimitedQueue {
    pub fn new(qps: f32, now: Instant) -> RateLimitedQueue {
        RateLimitedQueue {
            queue: VecDeque::new(),
            limiter: TokenBucket::new(qps, now),
        }
    }

    /// Queues `node`; false when it is queued already.
    pub fn add(&mut self, node: &str) -> bool {
        if self.queue.iter().any(|n| n == node) {
            return false;
        }
        self.queue.push_back(node.to_string());
        true
    }

    pub fn remove(&mut self, node: &str) -> bool {
        let before = self.queue.len();
        self.queue.retain(|n| n != node);
        before != self.queue.len()
    }

    /// A new rate (`SwapLimiter`), only when it differs.
    pub fn swap_limiter(&mut self, qps: f32, now: Instant) {
        if self.limiter.qps() != qps {
            self.limiter = TokenBucket::new(qps, now);
        }
    }

    /// The nodes the limiter lets through now, in queue order (taken off the queue; the
    /// caller adds back those it could not taint).
    pub fn take_ready(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while !self.queue.is_empty() && self.limiter.try_accept(now) {
            out.extend(self.queue.pop_front());
        }
        out
    }
}

/// The rates of `--node-eviction-rate` and friends.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub eviction: f32,
    pub secondary: f32,
    pub large_cluster: i32,
    pub unhealthy_threshold: f32,
}

impl Rates {
    /// `setLimiterInZone`'s rate for a zone of `size` nodes in `state`.
    pub fn for_state(&self, state: ZoneState, size: usize) -> f32 {
        match state {
            ZoneState::PartialDisruption if size as i64 > i64::from(self.large_cluster) => {
                self.secondary
            }
            ZoneState::PartialDisruption => 0.0,
            _ => self.eviction,
        }
    }
}

/// Every zone's queue and state.
#[derive(Debug, Default)]
pub struct Zones {
    pub queues: BTreeMap<String, RateLimitedQueue>,
    pub states: BTreeMap<String, ZoneState>,
}

/// What `handle_disruption` found, for the caller to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Disruption {
    /// Nothing cluster-wide changed.
    None,
    /// Every zone just became fully disrupted: every node's NoExecute taints go, evictions stop.
    Entered,
    /// Some node is Ready again after all were not: every node's probe time restarts.
    Exited,
}

impl Zones {
    /// `handleDisruption` over `ready` (each zone's nodes' readiness).
    pub fn handle_disruption(
        &mut self,
        ready: &BTreeMap<String, Vec<bool>>,
        rates: &Rates,
        now: Instant,
    ) -> Disruption {
        for zone in ready.keys() {
            self.queues
                .entry(zone.clone())
                .or_insert_with(|| RateLimitedQueue::new(rates.eviction, now));
        }
        let mut new_states = BTreeMap::new();
        let mut all_are_full = true;
        for (zone, r) in ready {
            let (_, state) = zone_state(r, rates.unhealthy_threshold);
            all_are_full &= state == ZoneState::FullDisruption;
            new_states.insert(zone.clone(), state);
            self.states
                .entry(zone.clone())
                .or_insert(ZoneState::Initial);
        }
        self.states.retain(|z, _| ready.contains_key(z));
        self.queues.retain(|z, _| ready.contains_key(z));
        let all_were_full = self
            .states
            .values()
            .all(|s| *s == ZoneState::FullDisruption);
        if all_are_full && all_were_full {
            return Disruption::None;
        }
        if all_are_full {
            tracing::info!(
                "Controller detected that all Nodes are not-Ready. Entering master disruption mode"
            );
            for q in self.queues.values_mut() {
                q.swap_limiter(0.0, now);
            }
            for s in self.states.values_mut() {
                *s = ZoneState::FullDisruption;
            }
            return Disruption::Entered;
        }
        let exited = all_were_full && !self.states.is_empty();
        if exited {
            tracing::info!(
                "Controller detected that some Nodes are Ready. Exiting master disruption mode"
            );
        }
        for (zone, state) in self.states.iter_mut() {
            let new = new_states[zone];
            if *state != new || exited {
                if *state != new {
                    tracing::info!(zone = %zone.replace('\0', ""), ?new, "Controller detected that zone is now in new state");
                }
                let size = ready[zone].len();
                if let Some(q) = self.queues.get_mut(zone) {
                    q.swap_limiter(rates.for_state(new, size), now);
                }
                *state = new;
            }
        }
        if exited {
            Disruption::Exited
        } else {
            Disruption::None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RATES: Rates = Rates {
        eviction: 0.1,
        secondary: 0.01,
        large_cluster: 50,
        unhealthy_threshold: 0.55,
    };

    #[test]
    fn zone_states_as_upstream() {
        assert_eq!(zone_state(&[true, true], 0.55).1, ZoneState::Normal);
        assert_eq!(
            zone_state(&[false, false], 0.55).1,
            ZoneState::FullDisruption
        );
        // Two of three down is over the threshold, but "more than two" is needed.
        assert_eq!(zone_state(&[false, false, true], 0.55).1, ZoneState::Normal);
        assert_eq!(
            zone_state(&[false, false, false, true], 0.55),
            (3, ZoneState::PartialDisruption)
        );
        assert_eq!(
            zone_state(&[false, false, false, true, true, true], 0.55).1,
            ZoneState::Normal,
            "half is under 55 %"
        );
    }

    #[test]
    fn the_bucket_lets_one_through_then_one_per_period() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.1, t0);
        assert!(b.try_accept(t0), "a burst of one");
        assert!(!b.try_accept(t0));
        assert!(!b.try_accept(t0 + Duration::from_secs(9)));
        assert!(
            b.try_accept(t0 + Duration::from_secs(10)),
            "0.1/s: one every 10 s"
        );
        let mut stopped = TokenBucket::new(0.0, t0);
        assert!(!stopped.try_accept(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn the_queue_releases_nodes_at_the_zone_rate() {
        let t0 = Instant::now();
        let mut q = RateLimitedQueue::new(1.0, t0);
        assert!(q.add("a") && q.add("b") && q.add("c"));
        assert!(!q.add("a"), "queued once");
        assert_eq!(q.take_ready(t0), ["a"]);
        assert_eq!(
            q.take_ready(t0 + Duration::from_millis(500)),
            Vec::<String>::new()
        );
        assert_eq!(q.take_ready(t0 + Duration::from_millis(1000)), ["b"]);
        assert!(q.remove("c"));
        assert_eq!(
            q.take_ready(t0 + Duration::from_secs(5)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn rates_follow_zone_states_and_stop_when_every_zone_is_down() {
        let t0 = Instant::now();
        let mut z = Zones::default();
        let mut ready = BTreeMap::new();
        ready.insert("a".to_string(), vec![true, true]);
        ready.insert("b".to_string(), vec![false, false, false, true]);
        assert_eq!(z.handle_disruption(&ready, &RATES, t0), Disruption::None);
        assert_eq!(z.states["a"], ZoneState::Normal);
        assert_eq!(z.states["b"], ZoneState::PartialDisruption);
        assert_eq!(z.queues["a"].limiter.qps(), 0.1);
        assert_eq!(
            z.queues["b"].limiter.qps(),
            0.0,
            "small partially disrupted zone: none"
        );

        // Rates change with the state only (as upstream): back to Normal, then partially
        // disrupted with more nodes than the large-cluster threshold.
        ready.insert("b".to_string(), vec![true]);
        z.handle_disruption(&ready, &RATES, t0);
        assert_eq!(z.queues["b"].limiter.qps(), 0.1);
        let big: Vec<bool> = (0..60).map(|i| i < 10).collect();
        ready.insert("b".to_string(), big);
        z.handle_disruption(&ready, &RATES, t0);
        assert_eq!(
            z.queues["b"].limiter.qps(),
            0.01,
            "large: the secondary rate"
        );

        // A zone fully down while another is up: normal rate there.
        ready.insert("b".to_string(), vec![false, false]);
        z.handle_disruption(&ready, &RATES, t0);
        assert_eq!(z.states["b"], ZoneState::FullDisruption);
        assert_eq!(z.queues["b"].limiter.qps(), 0.1);

        // Every zone down: no tainting anywhere.
        ready.insert("a".to_string(), vec![false]);
        assert_eq!(z.handle_disruption(&ready, &RATES, t0), Disruption::Entered);
        assert!(z.queues.values().all(|q| q.limiter.qps() == 0.0));
        assert_eq!(z.handle_disruption(&ready, &RATES, t0), Disruption::None);

        // One node back: out of it, each zone at its state's rate.
        ready.insert("a".to_string(), vec![true]);
        assert_eq!(z.handle_disruption(&ready, &RATES, t0), Disruption::Exited);
        assert_eq!(z.queues["a"].limiter.qps(), 0.1);
        assert_eq!(z.queues["b"].limiter.qps(), 0.1);
    }
}
