//! The proxy's Prometheus histograms, named and bucketed as kube-proxy's:
//! `sync_proxy_rules_duration_seconds` (one sync's time) and
//! `network_programming_duration_seconds` (from the change of a service's endpoints, as the
//! EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` says, to its rules in
//! place on this node).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::services::Snapshot;

/// A cumulative histogram in the Prometheus text format.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    /// Upper bounds, seconds.
    buckets: fn() -> Vec<f64>,
    /// Per bucket counts (cumulative), count, sum.
    state: Mutex<Option<(Vec<u64>, u64, f64)>>,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str, buckets: fn() -> Vec<f64>) -> Self {
        Histogram {
            name,
            help,
            buckets,
            state: Mutex::new(None),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let bounds = (self.buckets)();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (counts, n, sum) = st.get_or_insert_with(|| (vec![0; bounds.len()], 0, 0.0));
        for (c, b) in counts.iter_mut().zip(&bounds) {
            if s <= *b {
                *c += 1;
            }
        }
        *n += 1;
        *sum += s;
    }

    pub fn render(&self, out: &mut String) {
        let bounds = (self.buckets)();
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let empty = (vec![0; bounds.len()], 0, 0.0);
        let (counts, n, sum) = st.as_ref().unwrap_or(&empty);
        let name = self.name;
        out.push_str(&format!(
            "# HELP {name} [ALPHA] {}\n# TYPE {name} histogram\n",
            self.help
        ));
        for (b, c) in bounds.iter().zip(counts) {
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {c}\n"));
        }
        out.push_str(&format!(
            "{name}_bucket{{le=\"+Inf\"}} {n}\n{name}_sum {sum}\n{name}_count {n}\n"
        ));
    }
}

/// kube-proxy's: 1 ms doubling to 8.192 s.
fn sync_buckets() -> Vec<f64> {
    (0..14).map(|i| 0.001 * f64::from(1u32 << i)).collect()
}

/// kube-proxy's: 0.25 s steps to 0.5 s, 1 s steps to 59 s, 5 s steps to 115 s, 30 s steps to
/// 300 s.
fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..60).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

pub static SYNC: Histogram = Histogram::new(
    "kubeproxy_sync_proxy_rules_duration_seconds",
    "SyncProxyRules latency in seconds",
    sync_buckets,
);

pub static PROGRAMMING: Histogram = Histogram::new(
    "kubeproxy_network_programming_duration_seconds",
    "In Cluster Network Programming Latency in seconds",
    programming_buckets,
);

const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger times already accounted for, by slice.
#[derive(Default)]
pub struct Triggers {
    seen: HashMap<(String, String), String>,
    primed: bool,
}

impl Triggers {
    /// After the rules of `snap` are in place: each slice whose trigger time is new is
    /// observed (not at the first sync, whose slices changed before the agent was here).
    pub fn programmed(&mut self, snap: &Snapshot) {
        let now = jiff::Timestamp::now();
        let mut seen = HashMap::new();
        for s in snap.slices.values() {
            let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) else {
                continue;
            };
            let Some(t) = s.metadata.annotations.as_ref().and_then(|a| a.get(TRIGGER)) else {
                continue;
            };
            let key = (ns.clone(), name.clone());
            if self.primed && self.seen.get(&key) != Some(t) {
                if let Ok(at) = t.parse::<jiff::Timestamp>() {
                    if let Ok(d) = Duration::try_from(now.duration_since(at)) {
                        PROGRAMMING.observe(d);
                    }
                }
            }
            seen.insert(key, t.clone());
        }
        self.seen = seen;
        self.primed = true;
    }
}

/// Both histograms.
pub fn render() -> String {
    let mut out = String::new();
    SYNC.render(&mut out);
    PROGRAMMING.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_kube_proxys() {
        assert_eq!(sync_buckets().last(), Some(&8.192));
        let p = programming_buckets();
        assert_eq!(p.len(), 2 + 59 + 12 + 7);
        assert_eq!(
            (p[2], p[60], p[61], p[73], p[79]),
            (1.0, 59.0, 60.0, 120.0, 300.0)
        );
    }

    #[test]
    fn observations_fill_the_buckets_at_and_above() {
        let h = Histogram::new("t", "t", sync_buckets);
        h.observe(Duration::from_millis(3));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("t_bucket{le=\"0.002\"} 0\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.004\"} 1\n"), "{out}");
        assert!(out.contains("t_count 1\n"), "{out}");
    }
}
