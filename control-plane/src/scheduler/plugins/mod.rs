//! kube-scheduler's in-tree plugins that podlet runs, by their upstream names, and how a
//! profile calls them: PreFilter (per pod, over all nodes), Filter (per node; the first to
//! reject ends that node's check), PreScore/Score/NormalizeScore (over the feasible nodes).

pub mod affinity;
pub mod basic;
pub mod fit;
pub mod spread;

use std::sync::Arc;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::config::Profile;
use super::listers::Listers;

/// The plugins, in the default profile's filter order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Plugin {
    NodeUnschedulable,
    NodeName,
    TaintToleration,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    PodTopologySpread,
    InterPodAffinity,
    BalancedAllocation,
    ImageLocality,
}

impl Plugin {
    pub const ALL: [Plugin; 10] = [
        Plugin::NodeUnschedulable,
        Plugin::NodeName,
        Plugin::TaintToleration,
        Plugin::NodeAffinity,
        Plugin::NodePorts,
        Plugin::NodeResourcesFit,
        Plugin::PodTopologySpread,
        Plugin::InterPodAffinity,
        Plugin::BalancedAllocation,
        Plugin::ImageLocality,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::NodeUnschedulable => "NodeUnschedulable",
            Plugin::NodeName => "NodeName",
            Plugin::TaintToleration => "TaintToleration",
            Plugin::NodeAffinity => "NodeAffinity",
            Plugin::NodePorts => "NodePorts",
            Plugin::NodeResourcesFit => "NodeResourcesFit",
            Plugin::PodTopologySpread => "PodTopologySpread",
            Plugin::InterPodAffinity => "InterPodAffinity",
            Plugin::BalancedAllocation => "NodeResourcesBalancedAllocation",
            Plugin::ImageLocality => "ImageLocality",
        }
    }

    pub fn by_name(name: &str) -> Option<Plugin> {
        Plugin::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn filters(self) -> bool {
        !matches!(self, Plugin::BalancedAllocation | Plugin::ImageLocality)
    }

    pub fn scores(self) -> bool {
        matches!(
            self,
            Plugin::TaintToleration
                | Plugin::NodeAffinity
                | Plugin::NodeResourcesFit
                | Plugin::PodTopologySpread
                | Plugin::InterPodAffinity
                | Plugin::BalancedAllocation
                | Plugin::ImageLocality
        )
    }
}

/// Whether preemption could help a node that a plugin rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unschedulable,
    /// `UnschedulableAndUnresolvable`: removing pods would not help.
    Unresolvable,
}

/// Why a plugin rejects a node: the texts FailedScheduling counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub plugin: Plugin,
    pub code: Code,
    pub reasons: Vec<String>,
}

impl Rejection {
    pub fn new(plugin: Plugin, code: Code, reason: impl Into<String>) -> Rejection {
        Rejection {
            plugin,
            code,
            reasons: vec![reason.into()],
        }
    }
}

/// What PreFilter computed for one pod, which Filter reads and which nominated pods and
/// preemption's dry runs adjust (AddPod/RemovePod).
#[derive(Clone)]
pub struct CycleState {
    pub pod: Arc<PodInfo>,
    pub spread: Option<spread::FilterState>,
    pub affinity: Option<affinity::FilterState>,
}

impl CycleState {
    /// PreFilter of every enabled plugin that has one. An error names a PreFilter rejection
    /// for all nodes (the message replaces the node histogram).
    pub fn prefilter(
        profile: &Profile,
        pod: &Arc<PodInfo>,
        cache: &Cache,
        listers: &Listers,
    ) -> Result<CycleState, Rejection> {
        let spread = if profile.has_filter(Plugin::PodTopologySpread) {
            spread::prefilter(&profile.args.spread, pod, cache, listers)
        } else {
            None
        };
        let affinity = if profile.has_filter(Plugin::InterPodAffinity) {
            affinity::prefilter(pod, cache, listers)
        } else {
            None
        };
        Ok(CycleState {
            pod: pod.clone(),
            spread,
            affinity,
        })
    }

    /// A pod placed on `node` for this cycle's purposes (a nominated pod, a victim spared).
    pub fn add_pod(&mut self, other: &PodInfo, node: &NodeInfo, listers: &Listers) {
        if let Some(s) = &mut self.spread {
            s.update(&self.pod, other, node, 1);
        }
        if let Some(a) = &mut self.affinity {
            a.update(&self.pod, other, node, 1, listers);
        }
    }

    pub fn remove_pod(&mut self, other: &PodInfo, node: &NodeInfo, listers: &Listers) {
        if let Some(s) = &mut self.spread {
            s.update(&self.pod, other, node, -1);
        }
        if let Some(a) = &mut self.affinity {
            a.update(&self.pod, other, node, -1, listers);
        }
    }
}

/// Runs `profile`'s filters on `node` in order; the first rejection ends the check.
pub fn filter(profile: &Profile, state: &CycleState, node: &NodeInfo) -> Result<(), Rejection> {
    let pod = &state.pod;
    for &p in &profile.filters {
        let r = match p {
            Plugin::NodeUnschedulable => basic::node_unschedulable(pod, node),
            Plugin::NodeName => basic::node_name(pod, node),
            Plugin::TaintToleration => basic::taint_toleration(pod, node),
            Plugin::NodeAffinity => basic::node_affinity(pod, node),
            Plugin::NodePorts => basic::node_ports(pod, node),
            Plugin::NodeResourcesFit => fit::filter(&profile.args.fit, pod, node),
            Plugin::PodTopologySpread => state
                .spread
                .as_ref()
                .map_or(Ok(()), |s| s.filter(pod, node)),
            Plugin::InterPodAffinity => state
                .affinity
                .as_ref()
                .map_or(Ok(()), |s| s.filter(pod, node)),
            Plugin::BalancedAllocation | Plugin::ImageLocality => Ok(()),
        };
        r?;
    }
    Ok(())
}

/// The weighted sum of `profile`'s normalized scores for each of `nodes`.
pub fn score(
    profile: &Profile,
    state: &CycleState,
    nodes: &[&NodeInfo],
    cache: &Cache,
    listers: &Listers,
) -> Vec<i64> {
    let mut total = vec![0i64; nodes.len()];
    let pod = &state.pod;
    for &(p, weight) in &profile.scores {
        let scores = match p {
            Plugin::TaintToleration => Some(basic::taint_scores(pod, nodes)),
            Plugin::NodeAffinity => basic::node_affinity_scores(pod, nodes),
            Plugin::NodeResourcesFit => Some(fit::scores(&profile.args.fit, pod, nodes)),
            Plugin::BalancedAllocation => fit::balanced_scores(&profile.args.balanced, pod, nodes),
            Plugin::ImageLocality => Some(basic::image_scores(pod, nodes, cache)),
            Plugin::PodTopologySpread => {
                spread::scores(&profile.args.spread, pod, nodes, cache, listers)
            }
            Plugin::InterPodAffinity => {
                affinity::scores(&profile.args.affinity, pod, nodes, cache, listers)
            }
            _ => None,
        };
        for (t, s) in total.iter_mut().zip(scores.iter().flatten()) {
            *t += s * weight;
        }
    }
    total
}

/// `DefaultNormalizeScore`: scaled to 0..=100 of the highest; `reverse` turns it around.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        let v = if max == 0 { 0 } else { 100 * *s / max };
        *s = if reverse { 100 - v } else { v };
    }
}
