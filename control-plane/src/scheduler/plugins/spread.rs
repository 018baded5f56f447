//! PodTopologySpread: `DoNotSchedule` constraints filter (skew against the least loaded
//! domain, minDomains, nodeAffinityPolicy, nodeTaintsPolicy, matchLabelKeys) and
//! `ScheduleAnyway` ones score, with the system default constraints (hostname skew 3, zone
//! skew 5, selected by the Services and controllers owning the pod) for pods stating none.

use std::collections::HashSet;

use rustc_hash::FxHashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_rules::labels::{Requirement, Selector};
use k8s_rules::nodeaffinity::{required_node_affinity_matches, NodeFacts};
use k8s_rules::taints::{blocks_scheduling, find_untolerated};

use super::{Code, Plugin, Rejection};
use crate::scheduler::cache::{Cache, NodeInfo, PodInfo};
use crate::scheduler::listers::Listers;

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// `PodTopologySpreadArgs.defaultingType`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SpreadArgs {
    #[default]
    System,
    List(Vec<TopologySpreadConstraint>),
}

#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    selector: Selector,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    fn of(c: &TopologySpreadConstraint, pod: &PodInfo, selector: Option<Selector>) -> Constraint {
        let mut selector = selector.unwrap_or_else(|| {
            Selector::from_label_selector(c.label_selector.as_ref())
                .unwrap_or_else(|_| Selector::nothing())
        });
        for key in c.match_label_keys.iter().flatten() {
            if let Some(v) = pod.labels().get(key) {
                selector = selector.and(Requirement::In(key.clone(), vec![v.clone()]));
            }
        }
        Constraint {
            max_skew: i64::from(c.max_skew),
            key: c.topology_key.clone(),
            selector,
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    /// Whether the node's pods count toward the spread at all.
    fn includes(&self, pod: &PodInfo, node: &NodeInfo) -> bool {
        let spec = pod.spec();
        if self.honor_affinity {
            let facts = NodeFacts {
                name: &node.name,
                labels: node.labels(),
            };
            if spec.is_some_and(|s| !required_node_affinity_matches(s, facts)) {
                return false;
            }
        }
        if self.honor_taints {
            let tolerations = spec
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            if find_untolerated(node.taints(), tolerations, blocks_scheduling).is_some() {
                return false;
            }
        }
        true
    }

    /// Pods on the node in the pod's namespace, not going, that the selector picks.
    fn count(&self, ns: &str, node: &NodeInfo) -> i64 {
        node.pods
            .iter()
            .filter(|p| p.namespace == ns && !p.terminating() && self.selector.matches(p.labels()))
            .count() as i64
    }
}

fn has_keys(node: &NodeInfo, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| node.labels().contains_key(&c.key))
}

/// The system defaults, or the configured list, selected by the pod's owners and Services.
fn default_constraints(
    args: &SpreadArgs,
    pod: &PodInfo,
    action: &str,
    listers: &Listers,
) -> Vec<Constraint> {
    let defaults = match args {
        SpreadArgs::System => vec![system_default(HOSTNAME, 3), system_default(ZONE, 5)],
        SpreadArgs::List(l) => l.clone(),
    };
    let wanted: Vec<&TopologySpreadConstraint> = defaults
        .iter()
        .filter(|c| c.when_unsatisfiable == action)
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let selector = listers.default_selector(pod);
    if selector.selects_everything() {
        return Vec::new();
    }
    wanted
        .into_iter()
        .map(|c| Constraint::of(c, pod, Some(selector.clone())))
        .collect()
}

fn system_default(key: &str, skew: i32) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        topology_key: key.into(),
        max_skew: skew,
        when_unsatisfiable: "ScheduleAnyway".into(),
        ..Default::default()
    }
}

/// The constraints with `action`, and whether they are the system defaults.
fn constraints(
    args: &SpreadArgs,
    pod: &PodInfo,
    action: &str,
    listers: &Listers,
) -> (Vec<Constraint>, bool) {
    let own = pod
        .spec()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default();
    if own.is_empty() {
        let system = matches!(args, SpreadArgs::System);
        return (default_constraints(args, pod, action, listers), system);
    }
    let cs = own
        .iter()
        .filter(|c| c.when_unsatisfiable == action)
        .map(|c| Constraint::of(c, pod, None))
        .collect();
    (cs, false)
}

/// PreFilter's counts: per constraint, matching pods per domain, and the least of them.
#[derive(Debug, Clone)]
pub struct FilterState {
    constraints: Vec<Constraint>,
    counts: Vec<FxHashMap<String, i64>>,
    min: Vec<i64>,
}

pub fn prefilter(
    args: &SpreadArgs,
    pod: &PodInfo,
    cache: &Cache,
    listers: &Listers,
) -> Option<FilterState> {
    let (constraints, _) = constraints(args, pod, "DoNotSchedule", listers);
    if constraints.is_empty() {
        return None;
    }
    let mut counts = vec![FxHashMap::default(); constraints.len()];
    for node in &cache.nodes {
        if !has_keys(node, &constraints) {
            continue;
        }
        for (i, c) in constraints.iter().enumerate() {
            if !c.includes(pod, node) {
                continue;
            }
            let v = &node.labels()[&c.key];
            let n = c.count(&pod.namespace, node);
            // Looked up first: a domain is met once per node in it, created once.
            match counts[i].get_mut(v) {
                Some(total) => *total += n,
                None => {
                    counts[i].insert(v.clone(), n);
                }
            }
        }
    }
    let mut s = FilterState {
        min: vec![0; constraints.len()],
        constraints,
        counts,
    };
    s.refresh_min();
    Some(s)
}

impl FilterState {
    fn refresh_min(&mut self) {
        for (m, c) in self.min.iter_mut().zip(&self.counts) {
            *m = c.values().copied().min().unwrap_or(0);
        }
    }

    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        for (i, c) in self.constraints.iter().enumerate() {
            let Some(v) = node.labels().get(&c.key) else {
                return Err(Rejection::new(
                    Plugin::PodTopologySpread,
                    Code::Unresolvable,
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let domains = self.counts[i].len() as i64;
            let min = if domains < c.min_domains {
                0
            } else {
                self.min[i]
            };
            let own = i64::from(c.selector.matches(pod.labels()));
            let skew = self.counts[i].get(v).copied().unwrap_or(0) + own - min;
            if skew > c.max_skew {
                return Err(Rejection::new(
                    Plugin::PodTopologySpread,
                    Code::Unschedulable,
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }

    /// `other` added to (+1) or removed from (−1) `node` (AddPod/RemovePod).
    pub fn update(&mut self, pod: &PodInfo, other: &PodInfo, node: &NodeInfo, delta: i64) {
        if other.namespace != pod.namespace || !has_keys(node, &self.constraints) {
            return;
        }
        for (i, c) in self.constraints.iter().enumerate() {
            if c.includes(pod, node) && c.selector.matches(other.labels()) {
                *self.counts[i]
                    .entry(node.labels()[&c.key].clone())
                    .or_insert(0) += delta;
            }
        }
        self.refresh_min();
    }
}

/// ScheduleAnyway (or default) constraints: nodes whose domains hold fewer matching pods score
/// higher; None (skipped) when the pod has no such constraint.
pub fn scores(
    args: &SpreadArgs,
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    cache: &Cache,
    listers: &Listers,
) -> Option<Vec<i64>> {
    let (cs, system) = constraints(args, pod, "ScheduleAnyway", listers);
    if cs.is_empty() || nodes.is_empty() {
        return None;
    }
    let require_all = !system;
    let ignored: Vec<bool> = nodes
        .iter()
        .map(|n| require_all && !has_keys(n, &cs))
        .collect();
    let mut values: Vec<HashSet<&str>> = vec![HashSet::new(); cs.len()];
    let mut sizes = vec![0usize; cs.len()];
    for (n, _) in nodes.iter().zip(&ignored).filter(|(_, ig)| !**ig) {
        for (i, c) in cs.iter().enumerate() {
            if c.key == HOSTNAME {
                sizes[i] += 1;
            } else if let Some(v) = n.labels().get(&c.key) {
                values[i].insert(v);
            }
        }
    }
    let weights: Vec<f64> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let size = if c.key == HOSTNAME {
                sizes[i]
            } else {
                values[i].len()
            };
            ((size + 2) as f64).ln()
        })
        .collect();
    let mut counts: Vec<FxHashMap<&str, i64>> = values
        .iter()
        .map(|vs| vs.iter().map(|v| (*v, 0)).collect())
        .collect();
    for node in &cache.nodes {
        if require_all && !has_keys(node, &cs) {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if c.key == HOSTNAME || !c.includes(pod, node) {
                continue;
            }
            let Some(v) = node.labels().get(&c.key) else {
                continue;
            };
            if let Some(n) = counts[i].get_mut(v.as_str()) {
                *n += c.count(&pod.namespace, node);
            }
        }
    }
    let mut raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            let mut score = 0.0;
            for (i, c) in cs.iter().enumerate() {
                let Some(v) = n.labels().get(&c.key) else {
                    continue;
                };
                let cnt = if c.key == HOSTNAME {
                    c.count(&pod.namespace, n)
                } else {
                    counts[i].get(v.as_str()).copied().unwrap_or(0)
                };
                score += cnt as f64 * weights[i] + (c.max_skew - 1) as f64;
            }
            score.round() as i64
        })
        .collect();
    let live = || {
        raw.iter()
            .zip(&ignored)
            .filter(|(_, ig)| !**ig)
            .map(|(s, _)| *s)
    };
    let (min, max) = (live().min().unwrap_or(0), live().max().unwrap_or(0));
    for (s, ig) in raw.iter_mut().zip(&ignored) {
        *s = if *ig {
            0
        } else if max == 0 {
            100
        } else {
            100 * (max + min - *s) / max
        };
    }
    Some(raw)
}

#[cfg(test)]
#[path = "spread_tests.rs"]
mod tests;
