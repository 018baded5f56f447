use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::scheduler::testing::{cache, infos, node_json, pod};

fn zoned(name: &str, zone: Option<&str>) -> k8s_openapi::api::core::v1::Node {
    let labels = match zone {
        Some(z) => json!({"metadata": {"labels": {"zone": z}}}),
        None => json!({}),
    };
    node_json(name, "4", "4Gi", labels)
}

fn foo(name: &str) -> Arc<PodInfo> {
    pod(
        name,
        json!({}),
        json!({"metadata": {"labels": {"foo": ""}}}),
    )
}

/// zone1: a (2 foo pods), b (1); zone2: x (0), y (2), or as `counts` says.
fn world(counts: [usize; 4]) -> Cache {
    let names = ["a", "b", "x", "y"];
    let mut placed = Vec::new();
    for (node, n) in names.iter().zip(counts) {
        for i in 0..n {
            placed.push((*node, foo(&format!("{node}{i}"))));
        }
    }
    cache(
        vec![
            zoned("a", Some("zone1")),
            zoned("b", Some("zone1")),
            zoned("x", Some("zone2")),
            zoned("y", Some("zone2")),
        ],
        placed,
    )
}

fn incoming(constraint: Value, extra: Value) -> Arc<PodInfo> {
    let mut c = json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchExpressions": [{"key": "foo", "operator": "Exists"}]}});
    crate::scheduler::testing::merge(&mut c, constraint);
    let mut p =
        json!({"metadata": {"labels": {"foo": ""}}, "spec": {"topologySpreadConstraints": [c]}});
    crate::scheduler::testing::merge(&mut p, extra);
    pod("p", json!({}), p)
}

/// Which of the cache's nodes pass.
fn passing(c: &Cache, p: &PodInfo) -> Vec<String> {
    let s = prefilter(&SpreadArgs::System, p, c, &Listers::empty()).expect("constraints");
    let mut out: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| s.filter(p, n).is_ok())
        .map(|n| n.name.clone())
        .collect();
    out.sort();
    out
}

/// kube-scheduler's filtering_test: the skew against the least loaded domain, per constraint.
#[test]
fn do_not_schedule_constraints_keep_the_skew() {
    let c = world([2, 1, 0, 2]);
    // zone1 holds 3, zone2 2: only zone2 stays within a skew of 1.
    assert_eq!(passing(&c, &incoming(json!({}), json!({}))), ["x", "y"]);
    let host = incoming(json!({"topologyKey": "kubernetes.io/hostname"}), json!({}));
    assert_eq!(passing(&c, &host), ["x"]);
    // A pod its own selector does not pick adds nothing to the skew.
    let other = incoming(json!({"maxSkew": 1}), json!({"metadata": {"labels": null}}));
    assert_eq!(passing(&c, &other), ["a", "b", "x", "y"]);
    // minDomains above the number of domains: the global minimum counts as 0.
    let min3 = incoming(json!({"minDomains": 3, "maxSkew": 2}), json!({}));
    assert_eq!(passing(&c, &min3), Vec::<String>::new());
    let r = prefilter(&SpreadArgs::System, &min3, &c, &Listers::empty())
        .unwrap()
        .filter(&min3, &c.nodes[2])
        .unwrap_err();
    assert_eq!(
        (r.code, r.reasons[0].as_str()),
        (
            Code::Unschedulable,
            "node(s) didn't match pod topology spread constraints"
        )
    );
}

#[test]
fn a_node_without_the_topology_label_is_unresolvable() {
    let mut c = world([0, 0, 0, 0]);
    c.set_node(Arc::new(zoned("bare", None)));
    let p = incoming(json!({}), json!({}));
    let s = prefilter(&SpreadArgs::System, &p, &c, &Listers::empty()).unwrap();
    let bare = c.node("bare").unwrap();
    let r = s.filter(&p, bare).unwrap_err();
    assert_eq!(
        (r.code, r.reasons[0].as_str()),
        (
            Code::Unresolvable,
            "node(s) didn't match pod topology spread constraints (missing required label)"
        )
    );
}

/// nodeAffinityPolicy Honor (the default) counts only the nodes the pod may go to.
#[test]
fn node_inclusion_policies_decide_which_domains_count() {
    let c = world([0, 0, 1, 1]);
    let selector = json!({"spec": {"nodeSelector": {"zone": "zone2"}}});
    // Honor: zone1 is not a domain, so zone2's 2 are the minimum (zone1's nodes are
    // NodeAffinity's to reject).
    assert_eq!(
        passing(&c, &incoming(json!({}), selector.clone())),
        ["a", "b", "x", "y"]
    );
    // Ignore: zone1's 0 is the minimum, zone2 is 2 + 1 ahead.
    let ignore = incoming(json!({"nodeAffinityPolicy": "Ignore"}), selector);
    assert_eq!(passing(&c, &ignore), ["a", "b"]);
    // nodeTaintsPolicy Honor leaves out nodes with taints the pod does not tolerate.
    let mut c = world([0, 0, 1, 1]);
    let tainted = node_json(
        "a",
        "4",
        "4Gi",
        json!({"metadata": {"labels": {"zone": "zone1"}},
        "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
    );
    c.set_node(Arc::new(tainted));
    c.remove_node("b");
    let honor = incoming(json!({"nodeTaintsPolicy": "Honor"}), json!({}));
    assert_eq!(
        passing(&c, &honor),
        ["a", "x", "y"],
        "zone1 no longer counts: zone2's 2 are the minimum"
    );
}

#[test]
fn match_label_keys_narrow_the_selector_to_the_pods_own_values() {
    let mut placed = Vec::new();
    for (node, rev) in [("a", "1"), ("a", "1"), ("x", "2")] {
        let name = format!("{node}{}", placed.len());
        placed.push((
            node,
            pod(
                &name,
                json!({}),
                json!({"metadata": {"labels": {"foo": "", "rev": rev}}}),
            ),
        ));
    }
    let c = cache(
        vec![zoned("a", Some("zone1")), zoned("x", Some("zone2"))],
        placed,
    );
    // Counting every foo pod: zone1 2, zone2 1 → only zone2. Counting rev=2 only: zone1 0, zone2 1.
    let p = incoming(
        json!({"matchLabelKeys": ["rev"]}),
        json!({"metadata": {"labels": {"foo": "", "rev": "2"}}}),
    );
    assert_eq!(passing(&c, &p), ["a"]);
}

/// scoring_test: fewer matching pods in a node's domain scores higher; hostname constraints
/// count the node's own pods.
#[test]
fn schedule_anyway_constraints_score_emptier_domains_higher() {
    let c = world([2, 1, 0, 2]);
    let p = incoming(
        json!({"topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}),
        json!({}),
    );
    // weight ln(4 + 2) ≈ 1.79: raw 4, 2, 0, 4 → normalized 100 × (4 + 0 − s) / 4.
    let s = scores(&SpreadArgs::System, &p, &infos(&c), &c, &Listers::empty());
    assert_eq!(s, Some(vec![0, 50, 100, 0]));
    let z = incoming(json!({"whenUnsatisfiable": "ScheduleAnyway"}), json!({}));
    // zone1 holds 3, zone2 2; weight ln(2 + 2) ≈ 1.39: raw 4 and 3 → 100 × (4 + 3 − s) / 4.
    let s = scores(&SpreadArgs::System, &z, &infos(&c), &c, &Listers::empty());
    assert_eq!(s, Some(vec![75, 75, 100, 100]));
    // No constraint and nothing selecting the pod: the system defaults do not apply.
    assert_eq!(
        scores(
            &SpreadArgs::System,
            &foo("q"),
            &infos(&c),
            &c,
            &Listers::empty()
        ),
        None
    );
    assert!(prefilter(&SpreadArgs::System, &foo("q"), &c, &Listers::empty()).is_none());
}
