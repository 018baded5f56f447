//! One scheduling cycle (kube-scheduler's `schedulePod`): PreFilter, the nominated node
//! first, Filter over the nodes from a rotating start until enough fit (adaptive
//! percentageOfNodesToScore), Score, and the best node with ties broken at random; or the
//! diagnosis FailedScheduling reports. Room kept for nominated pods of equal or higher priority
//! is respected (`RunFilterPluginsWithNominatedPods`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rand::Rng;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::config::Profile;
use super::listers::Listers;
use super::plugins::{self, CycleState, Plugin, Rejection};

const MIN_FEASIBLE_NODES: usize = 100;
const MIN_FEASIBLE_PERCENTAGE: usize = 5;

/// `numFeasibleNodesToFind`.
pub fn feasible_to_find(percentage: u32, nodes: usize) -> usize {
    if nodes < MIN_FEASIBLE_NODES {
        return nodes;
    }
    let mut pct = percentage as usize;
    if pct == 0 {
        pct = 50usize
            .saturating_sub(nodes / 125)
            .max(MIN_FEASIBLE_PERCENTAGE);
    }
    if pct >= 100 {
        return nodes;
    }
    (nodes * pct / 100).max(MIN_FEASIBLE_NODES)
}

/// Pods nominated to nodes (by preemption, or read from `status.nominatedNodeName`), whose
/// room later cycles keep.
#[derive(Default)]
pub struct Nominator {
    by_node: HashMap<String, Vec<Arc<PodInfo>>>,
    node_of: HashMap<String, String>,
}

impl Nominator {
    pub fn set(&mut self, pod: Arc<PodInfo>, node: Option<&str>) {
        self.remove(&pod.uid);
        if let Some(n) = node.filter(|n| !n.is_empty()) {
            self.node_of.insert(pod.uid.clone(), n.to_string());
            self.by_node.entry(n.to_string()).or_default().push(pod);
        }
    }

    pub fn remove(&mut self, uid: &str) {
        if let Some(n) = self.node_of.remove(uid) {
            if let Some(list) = self.by_node.get_mut(&n) {
                list.retain(|p| p.uid != uid);
                if list.is_empty() {
                    self.by_node.remove(&n);
                }
            }
        }
    }

    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.node_of.get(uid).map(String::as_str)
    }

    pub fn on(&self, node: &str) -> &[Arc<PodInfo>] {
        self.by_node
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Filters `node` for the pod, with the nominated pods of at least its priority placed there
/// too (both must pass: with them, and without).
pub fn filter_with_nominated(
    profile: &Profile,
    state: &CycleState,
    node: &NodeInfo,
    nominator: &Nominator,
    listers: &Listers,
) -> Result<(), Rejection> {
    let pod = &state.pod;
    let mut noms = nominator
        .on(&node.name)
        .iter()
        .filter(|p| p.uid != pod.uid && p.priority >= pod.priority)
        .peekable();
    if noms.peek().is_none() {
        return plugins::filter(profile, state, node);
    }
    let (mut with, mut s) = (node.clone(), state.clone());
    for p in noms {
        with.add_pod(p.clone());
        s.add_pod(p, node, listers);
    }
    plugins::filter(profile, &s, &with)?;
    plugins::filter(profile, state, node)
}

/// Why no node fits: each rejected node's rejection, or a PreFilter's message for all.
#[derive(Debug, Default)]
pub struct Diagnosis {
    pub rejections: Vec<(String, Rejection)>,
    pub prefilter: Option<String>,
    pub plugins: HashSet<Plugin>,
}

impl Diagnosis {
    /// kube-scheduler's FitError text: `0/N nodes are available: <counts sorted as strings>.`
    pub fn message(&self, nodes: usize) -> String {
        let mut msg = format!("0/{nodes} nodes are available:");
        if let Some(p) = &self.prefilter {
            msg.push_str(&format!(" {p}."));
            return msg;
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, r) in &self.rejections {
            for reason in &r.reasons {
                *counts.entry(reason).or_default() += 1;
            }
        }
        let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        if parts.is_empty() {
            msg.pop();
            msg.push('.');
        } else {
            msg.push_str(&format!(" {}.", parts.join(", ")));
        }
        msg
    }
}

pub enum Decision {
    Node(String),
    /// The cluster has no nodes at all.
    NoNodes,
    Unfit(Box<(Diagnosis, CycleState)>),
}

/// The part of the scheduler that outlives a cycle: where the next search starts.
#[derive(Default)]
pub struct Algorithm {
    next_start: usize,
}

impl Algorithm {
    pub fn schedule(
        &mut self,
        profile: &Profile,
        global_percentage: u32,
        cache: &Cache,
        listers: &Listers,
        nominator: &Nominator,
        pod: &Arc<PodInfo>,
    ) -> Decision {
        let n = cache.nodes.len();
        if n == 0 {
            return Decision::NoNodes;
        }
        let state = match CycleState::prefilter(profile, pod, cache, listers) {
            Ok(s) => s,
            Err(r) => {
                let diag = Diagnosis {
                    prefilter: r.reasons.first().cloned(),
                    plugins: HashSet::from([r.plugin]),
                    rejections: Vec::new(),
                };
                let state = CycleState {
                    pod: pod.clone(),
                    spread: None,
                    affinity: None,
                };
                return Decision::Unfit(Box::new((diag, state)));
            }
        };
        // A pod that preempted for a node goes there if it fits now.
        let nominated = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .or_else(|| nominator.node_of(&pod.uid));
        if let Some(node) = nominated.and_then(|name| cache.node(name)) {
            if filter_with_nominated(profile, &state, node, nominator, listers).is_ok() {
                return Decision::Node(node.name.clone());
            }
        }
        let want = if profile.scores.is_empty() {
            1
        } else {
            feasible_to_find(profile.percentage.unwrap_or(global_percentage), n)
        };
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut diag = Diagnosis::default();
        let mut processed = 0;
        for i in 0..n {
            let node = &cache.nodes[(self.next_start + i) % n];
            processed += 1;
            match filter_with_nominated(profile, &state, node, nominator, listers) {
                Ok(()) => feasible.push(node),
                Err(r) => {
                    diag.plugins.insert(r.plugin);
                    diag.rejections.push((node.name.clone(), r));
                }
            }
            if feasible.len() >= want {
                break;
            }
        }
        self.next_start = (self.next_start + processed) % n;
        match feasible.len() {
            0 => Decision::Unfit(Box::new((diag, state))),
            1 => Decision::Node(feasible[0].name.clone()),
            _ => {
                let scores = plugins::score(profile, &state, &feasible, cache, listers);
                Decision::Node(pick(&feasible, &scores))
            }
        }
    }
}

/// The highest score, uniformly at random among ties (reservoir sampling).
fn pick(nodes: &[&NodeInfo], scores: &[i64]) -> String {
    let mut rng = rand::rng();
    let (mut best, mut ties, mut at) = (i64::MIN, 0u32, 0);
    for (i, s) in scores.iter().enumerate() {
        if *s > best {
            (best, ties, at) = (*s, 1, i);
        } else if *s == best {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                at = i;
            }
        }
    }
    nodes[at].name.clone()
}

#[cfg(test)]
#[path = "cycle_tests.rs"]
mod tests;
