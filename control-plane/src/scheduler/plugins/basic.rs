//! The node-local plugins: NodeUnschedulable, NodeName, TaintToleration, NodeAffinity,
//! NodePorts and ImageLocality, with kube-scheduler's texts and score formulas.

use k8s_openapi::api::core::v1::{Taint, Toleration};
use k8s_rules::nodeaffinity::{required_node_affinity_matches, term_matches, NodeFacts};
use k8s_rules::taints::{blocks_scheduling, find_untolerated, tolerated};

use super::{normalize, Code, Plugin, Rejection};
use crate::scheduler::cache::{Cache, NodeInfo, PodInfo};

fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.spec()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

fn facts(node: &NodeInfo) -> NodeFacts<'_> {
    NodeFacts {
        name: &node.name,
        labels: node.labels(),
    }
}

/// A cordoned node takes only pods tolerating its `unschedulable` taint (DaemonSets').
pub fn node_unschedulable(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    if !node.unschedulable() {
        return Ok(());
    }
    let cordon = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if tolerated(tolerations(pod), &cordon) {
        return Ok(());
    }
    Err(Rejection::new(
        Plugin::NodeUnschedulable,
        Code::Unresolvable,
        "node(s) were unschedulable",
    ))
}

pub fn node_name(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    match pod.spec().and_then(|s| s.node_name.as_deref()) {
        Some(n) if !n.is_empty() && n != node.name => Err(Rejection::new(
            Plugin::NodeName,
            Code::Unresolvable,
            "node(s) didn't match the requested node name",
        )),
        _ => Ok(()),
    }
}

pub fn taint_toleration(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    match find_untolerated(node.taints(), tolerations(pod), blocks_scheduling) {
        None => Ok(()),
        Some(t) => Err(Rejection::new(
            Plugin::TaintToleration,
            Code::Unresolvable,
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            ),
        )),
    }
}

/// Fewer PreferNoSchedule taints the pod does not tolerate score higher.
pub fn taint_scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let prefer: Vec<Toleration> = tolerations(pod)
        .iter()
        .filter(|t| matches!(t.effect.as_deref(), None | Some("" | "PreferNoSchedule")))
        .cloned()
        .collect();
    let mut scores: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.taints()
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&prefer, t))
                .count() as i64
        })
        .collect();
    normalize(&mut scores, true);
    scores
}

pub fn node_affinity(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let Some(spec) = pod.spec() else {
        return Ok(());
    };
    if required_node_affinity_matches(spec, facts(node)) {
        return Ok(());
    }
    Err(Rejection::new(
        Plugin::NodeAffinity,
        Code::Unresolvable,
        "node(s) didn't match Pod's node affinity/selector",
    ))
}

/// The summed weights of the preferred terms each node matches; None (skipped) when the pod
/// prefers nothing.
pub fn node_affinity_scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    let terms = pod
        .spec()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .filter(|t| !t.is_empty())?;
    let mut scores: Vec<i64> = nodes
        .iter()
        .map(|n| {
            terms
                .iter()
                .filter(|t| t.weight != 0 && term_matches(&t.preference, facts(n)))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .collect();
    normalize(&mut scores, false);
    Some(scores)
}

pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let clash = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
    if clash {
        return Err(Rejection::new(
            Plugin::NodePorts,
            Code::Unschedulable,
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    Ok(())
}

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// An image reference in the form runtimes report it: `latest` when no tag or digest is
/// given, Docker Hub's registry and `library/` spelled out (a pod's `busybox` is the node's
/// `docker.io/library/busybox:latest`, which upstream's plain `:latest` rule misses).
pub fn normalized_image(name: &str) -> String {
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let registry = first.contains('.') || first.contains(':') || first == "localhost";
    let full = match (first, registry) {
        ("", _) => format!("docker.io/library/{rest}"),
        (_, true) => name.to_string(),
        _ => format!("docker.io/{name}"),
    };
    let last = full.rsplit('/').next().unwrap_or(&full);
    if full.contains('@') || last.contains(':') {
        full
    } else {
        format!("{full}:latest")
    }
}

/// Nodes that already hold the pod's (large) images score higher, less so for images that
/// many nodes have.
pub fn image_scores(pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache) -> Vec<i64> {
    let Some(spec) = pod.spec() else {
        return vec![0; nodes.len()];
    };
    let images: Vec<String> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.image.as_deref())
        .map(normalized_image)
        .collect();
    let total = cache.nodes.len().max(1) as i64;
    let max_threshold = MAX_CONTAINER_THRESHOLD * images.len().max(1) as i64;
    nodes
        .iter()
        .map(|n| {
            let sum: i64 = images
                .iter()
                .filter_map(|i| {
                    let size = *n.images.get(i)?;
                    let spread = *cache.image_nodes.get(i).unwrap_or(&1) as i64;
                    Some((size as f64 * spread as f64 / total as f64) as i64)
                })
                .sum();
            let sum = sum.clamp(MIN_THRESHOLD, max_threshold);
            100 * (sum - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
        })
        .collect()
}

#[cfg(test)]
#[path = "basic_tests.rs"]
mod tests;
