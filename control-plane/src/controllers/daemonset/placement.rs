//! Which nodes a DaemonSet's pods belong on and how a pod is pinned to one
//! (`pkg/controller/daemon/util/daemonset_util.go` and `NodeShouldRunDaemonPod`).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_rules::nodeaffinity::{required_node_affinity_matches, NodeFacts};
use k8s_rules::taints::find_untolerated;

/// The tolerations every daemon pod gets (`AddOrUpdateDaemonPodTolerations`): it keeps running
/// through node conditions that evict or keep out other pods.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        // `AddOrUpdateTolerationInPodSpec`: one with the same key, operator, value and effect
        // is replaced, so a user's tolerationSeconds gives way to "forever".
        let same = |o: &Toleration| {
            o.key == t.key
                && o.effect == t.effect
                && o.operator.as_deref().unwrap_or("Equal") == "Exists"
                && o.value.as_deref().unwrap_or_default().is_empty()
        };
        match tolerations.iter_mut().find(|o| same(o)) {
            Some(o) => *o = t,
            None => tolerations.push(t),
        }
    }
}

/// `ReplaceDaemonSetPodNodeNameNodeAffinity`: the required node affinity becomes the one term
/// `metadata.name In [node]`, which the scheduler binds to that node alone.
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let mut affinity = affinity.unwrap_or_default();
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    match na
        .required_during_scheduling_ignored_during_execution
        .as_mut()
    {
        Some(sel) => sel.node_selector_terms = vec![term],
        None => {
            na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
                node_selector_terms: vec![term],
            })
        }
    }
    affinity
}

/// The node a daemon pod is on or pinned to (`GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| match f.values.as_deref() {
            Some([v]) => Some(v.clone()),
            _ => None,
        })
}

/// (should run, should continue running) for `ds` on `node` (`NodeShouldRunDaemonPod`): the
/// template's nodeName, node selector and required affinity must fit; an untolerated
/// NoSchedule taint keeps new pods off, an untolerated NoExecute one evicts running pods too.
pub fn should_run(node: &Node, ds: &DaemonSet) -> (bool, bool) {
    let Some(spec) = ds.spec.as_ref() else {
        return (false, false);
    };
    let mut pod = spec.template.spec.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if pod
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    add_daemon_tolerations(&mut pod);
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !required_node_affinity_matches(
        &pod,
        NodeFacts {
            name,
            labels: &labels,
        },
    ) {
        return (false, false);
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerations = pod.tolerations.unwrap_or_default();
    let blocking = |effects: &[&str]| {
        find_untolerated(&taints, &tolerations, |t| {
            effects.contains(&t.effect.as_str())
        })
        .is_some()
    };
    if blocking(&["NoSchedule", "NoExecute"]) {
        return (false, !blocking(&["NoExecute"]));
    }
    (true, true)
}

/// `GetScaledValueFromIntOrPercent(v, total, roundUp=true)`.
pub fn scaled(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((p * i64::from(total) + 99) / 100) as i32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn ds(v: serde_json::Value) -> DaemonSet {
        serde_json::from_value(
            json!({"metadata": {"name": "d"}, "spec": {"selector": {}, "template": {"spec": v}}}),
        )
        .unwrap()
    }

    #[test]
    fn taints_keep_off_and_evict_as_their_effect_says() {
        let plain = ds(json!({"containers": []}));
        let n = |effect: &str| {
            node(
                json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "k", "effect": effect}]}}),
            )
        };
        assert_eq!(should_run(&n("NoSchedule"), &plain), (false, true));
        assert_eq!(should_run(&n("NoExecute"), &plain), (false, false));
        assert_eq!(should_run(&n("PreferNoSchedule"), &plain), (true, true));
        let tolerant =
            ds(json!({"containers": [], "tolerations": [{"key": "k", "operator": "Exists"}]}));
        assert_eq!(should_run(&n("NoExecute"), &tolerant), (true, true));
        // The daemon tolerations: cordoned and not-ready nodes still run daemons.
        let cordoned = node(json!({"metadata": {"name": "n"}, "spec": {"taints": [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}}));
        assert_eq!(should_run(&cordoned, &plain), (true, true));
    }

    #[test]
    fn node_selectors_and_pinning() {
        let sel = ds(json!({"containers": [], "nodeSelector": {"role": "edge"}}));
        let n = node(json!({"metadata": {"name": "n", "labels": {"role": "edge"}}}));
        assert_eq!(should_run(&n, &sel), (true, true));
        let other = node(json!({"metadata": {"name": "m"}}));
        assert_eq!(should_run(&other, &sel), (false, false));
        let a = pin_to_node(None, "n");
        let pod = Pod {
            spec: Some(PodSpec {
                affinity: Some(a),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n"));
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 5, 0), 2);
    }
}
