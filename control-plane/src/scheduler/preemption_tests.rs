use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::scheduler::cycle::{Algorithm, Decision};
use crate::scheduler::testing::{cache, node_json, pod};

fn prio(name: &str, cpu: &str, p: i32) -> Arc<PodInfo> {
    pod(name, json!({"cpu": cpu}), json!({"spec": {"priority": p}}))
}

/// Runs a cycle for `p` on `c` and preemption on its failure.
fn try_preempt(c: &Cache, p: &Arc<PodInfo>) -> Outcome {
    let profile = Profile::default_named("default-scheduler");
    let (listers, nominator) = (Listers::empty(), Nominator::default());
    match Algorithm::default().schedule(&profile, 0, c, &listers, &nominator, p) {
        Decision::Unfit(u) => preempt(&profile, c, &listers, &nominator, &u.1, &u.0),
        _ => panic!("the pod fits without preemption"),
    }
}

fn victims(o: Outcome) -> (String, Vec<String>) {
    match o {
        Outcome::Preempt(c) => (c.node, c.victims.iter().map(|v| v.name.clone()).collect()),
        Outcome::NotEligible(m) | Outcome::NoCandidates(m) => panic!("no preemption: {m}"),
    }
}

/// default_preemption_test: the fewest, least important victims on the best node.
#[test]
fn the_least_disruptive_node_and_victims_are_chosen() {
    let c = cache(
        vec![
            node_json("a", "4", "8Gi", json!({})),
            node_json("b", "4", "8Gi", json!({})),
        ],
        vec![
            // a: two pods of priority 5 would have to go; b: one of priority 1 suffices.
            ("a", prio("a1", "2", 5)),
            ("a", prio("a2", "2", 5)),
            ("b", prio("b1", "1", 1)),
            ("b", prio("b2", "3", 20)),
        ],
    );
    let (node, v) = victims(try_preempt(&c, &prio("p", "1", 10)));
    assert_eq!((node.as_str(), v), ("b", vec!["b1".to_string()]));
    // Only what it needs: a pod of 3 CPUs evicts both on a rather than touch b's priority 20.
    let (node, v) = victims(try_preempt(&c, &prio("p", "3", 10)));
    assert_eq!(node, "a");
    assert_eq!(v.len(), 2);
}

#[test]
fn preemption_that_cannot_help_says_why() {
    let c = cache(
        vec![
            node_json("a", "1", "1Gi", json!({})),
            node_json(
                "t",
                "8",
                "8Gi",
                json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
            ),
        ],
        vec![("a", prio("a1", "1", 100))],
    );
    let Outcome::NoCandidates(m) = try_preempt(&c, &prio("p", "1", 10)) else {
        panic!("preempted")
    };
    assert_eq!(
        m,
        "0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
    );
    let never = pod(
        "n",
        json!({"cpu": "1"}),
        json!({"spec": {"priority": 1000, "preemptionPolicy": "Never"}}),
    );
    let Outcome::NotEligible(m) = try_preempt(&c, &never) else {
        panic!("eligible")
    };
    assert_eq!(m, "not eligible due to preemptionPolicy=Never.");
}

/// A victim a PodDisruptionBudget protects is spared when another node's are not.
#[test]
fn budgets_steer_preemption_elsewhere() {
    let labelled = |name: &str, app: &str| {
        pod(
            name,
            json!({"cpu": "1"}),
            json!({"metadata": {"labels": {"app": app}}, "spec": {"priority": 1}}),
        )
    };
    let c = cache(
        vec![
            node_json("a", "1", "1Gi", json!({})),
            node_json("b", "1", "1Gi", json!({})),
        ],
        vec![("a", labelled("db", "db")), ("b", labelled("web", "web"))],
    );
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "db"}}},
        "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
    .unwrap();
    let (violating, fine) = split_by_pdb(c.nodes[0].pods.clone(), &[Arc::new(pdb.clone())]);
    assert_eq!((violating.len(), fine.len()), (1, 0));
    let cands = vec![
        Candidate {
            node: "a".into(),
            victims: violating,
            pdb_violations: 1,
        },
        Candidate {
            node: "b".into(),
            victims: c.nodes[1].pods.clone(),
            pdb_violations: 0,
        },
    ];
    assert_eq!(pick(cands).unwrap().node, "b");
}
