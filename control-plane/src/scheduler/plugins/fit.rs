//! NodeResourcesFit (the filter, and the LeastAllocated, MostAllocated and
//! RequestedToCapacityRatio scores) and NodeResourcesBalancedAllocation, as kube-scheduler.

use k8s_rules::quantity::Milli;

use super::{Code, Plugin, Rejection};
use crate::scheduler::cache::{NodeInfo, PodInfo};

/// How NodeResourcesFit scores (`scoringStrategy`).
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    LeastAllocated,
    MostAllocated,
    /// Shape points (utilization 0..=100, score 0..=10), by ascending utilization.
    RequestedToCapacityRatio(Vec<(i64, i64)>),
}

/// `NodeResourcesFitArgs`.
#[derive(Debug, Clone, PartialEq)]
pub struct FitArgs {
    pub ignored_resources: Vec<String>,
    pub ignored_groups: Vec<String>,
    pub strategy: Strategy,
    /// Scored resources and their weights.
    pub resources: Vec<(String, i64)>,
}

pub fn default_resources() -> Vec<(String, i64)> {
    vec![("cpu".into(), 1), ("memory".into(), 1)]
}

impl Default for FitArgs {
    fn default() -> Self {
        FitArgs {
            ignored_resources: Vec::new(),
            ignored_groups: Vec::new(),
            strategy: Strategy::LeastAllocated,
            resources: default_resources(),
        }
    }
}

/// A resource named `domain/name` outside `kubernetes.io/` (a device plugin's).
fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests.")
}

/// Every resource the node is short of for the pod, the pod count first.
pub fn filter(args: &FitArgs, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let mut reasons = Vec::new();
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        reasons.push("Too many pods".to_string());
    }
    let want = &pod.requests;
    let (alloc, used) = (&node.allocatable, &node.requested);
    for (name, w) in [
        ("cpu", want.cpu),
        ("memory", want.memory),
        ("ephemeral-storage", want.ephemeral),
    ] {
        if w > Milli::ZERO && w > alloc.get(name) - used.get(name) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    for (name, w) in &want.scalars {
        if *w <= Milli::ZERO {
            continue;
        }
        if is_extended(name) {
            let group = name.split('/').next().unwrap_or_default();
            if args.ignored_resources.contains(name)
                || args.ignored_groups.iter().any(|g| g == group)
            {
                continue;
            }
        }
        if *w > alloc.get(name) - used.get(name) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Rejection {
        plugin: Plugin::NodeResourcesFit,
        code: Code::Unschedulable,
        reasons,
    })
}

/// (allocatable, requested with the pod) of `name`, requests of cpu and memory with the
/// non-zero defaults when `nonzero`; None when the resource is not scored on this node.
fn alloc_and_request(
    pod: &PodInfo,
    node: &NodeInfo,
    name: &str,
    nonzero: bool,
) -> Option<(i128, i128)> {
    let alloc = node.allocatable.get(name).0;
    let req = match (name, nonzero) {
        ("cpu", true) => node.nonzero[0].0 + pod.nonzero[0].0,
        ("memory", true) => node.nonzero[1].0 + pod.nonzero[1].0,
        _ => {
            let own = pod.requests.get(name).0;
            if own == 0 && !matches!(name, "cpu" | "memory" | "ephemeral-storage") {
                return None;
            }
            node.requested.get(name).0 + own
        }
    };
    (alloc != 0).then_some((alloc, req))
}

/// `BuildBrokenLinearFunction` over the shape, its scores first scaled to 0..=100.
fn broken_linear(shape: &[(i64, i64)], p: i64) -> i64 {
    for (i, &(u, s)) in shape.iter().enumerate() {
        if p <= u {
            if i == 0 {
                return s * 10;
            }
            let (pu, ps) = shape[i - 1];
            return ps * 10 + (s - ps) * 10 * (p - pu) / (u - pu);
        }
    }
    shape.last().map_or(0, |&(_, s)| s * 10)
}

fn node_score(args: &FitArgs, pod: &PodInfo, node: &NodeInfo) -> i64 {
    let (mut sum, mut weights) = (0i128, 0i128);
    for (name, weight) in &args.resources {
        let Some((alloc, req)) = alloc_and_request(pod, node, name, true) else {
            continue;
        };
        let w = i128::from(*weight);
        let s = match &args.strategy {
            Strategy::LeastAllocated if req > alloc => 0,
            Strategy::LeastAllocated => (alloc - req) * 100 / alloc,
            Strategy::MostAllocated => req.min(alloc) * 100 / alloc,
            Strategy::RequestedToCapacityRatio(shape) => {
                let util = if req > alloc { 100 } else { req * 100 / alloc };
                let s = i128::from(broken_linear(shape, util as i64));
                if s <= 0 {
                    continue;
                }
                s
            }
        };
        sum += s * w;
        weights += w;
    }
    if weights == 0 {
        return 0;
    }
    match args.strategy {
        Strategy::RequestedToCapacityRatio(_) => (sum as f64 / weights as f64).round() as i64,
        _ => (sum / weights) as i64,
    }
}

pub fn scores(args: &FitArgs, pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    nodes.iter().map(|n| node_score(args, pod, n)).collect()
}

/// Nodes whose resources are used in even shares score higher (1 − the standard deviation of
/// the used fractions); skipped for a pod requesting none of the resources.
pub fn balanced_scores(
    resources: &[(String, i64)],
    pod: &PodInfo,
    nodes: &[&NodeInfo],
) -> Option<Vec<i64>> {
    if resources.iter().all(|(n, _)| pod.requests.get(n).is_zero()) {
        return None;
    }
    let scores = nodes
        .iter()
        .map(|n| {
            let fractions: Vec<f64> = resources
                .iter()
                .filter_map(|(name, _)| alloc_and_request(pod, n, name, false))
                .map(|(alloc, req)| (req as f64 / alloc as f64).min(1.0))
                .collect();
            let std = match fractions.len() {
                0 | 1 => 0.0,
                2 => (fractions[0] - fractions[1]).abs() / 2.0,
                k => {
                    let mean = fractions.iter().sum::<f64>() / k as f64;
                    (fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / k as f64).sqrt()
                }
            };
            ((1.0 - std) * 100.0) as i64
        })
        .collect();
    Some(scores)
}

#[cfg(test)]
#[path = "fit_tests.rs"]
mod tests;
