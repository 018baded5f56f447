use serde_json::json;

use super::*;
use crate::scheduler::config::Profile;
use crate::scheduler::plugins::Code;
use crate::scheduler::testing::{cache, node_json, pod};

#[test]
fn adaptive_percentage_of_nodes_to_score() {
    assert_eq!(feasible_to_find(0, 50), 50);
    assert_eq!(feasible_to_find(0, 500), 230);
    assert_eq!(feasible_to_find(0, 5000), 500);
    assert_eq!(feasible_to_find(0, 6000), 300);
    assert_eq!(feasible_to_find(0, 100_000), 5000);
    assert_eq!(feasible_to_find(20, 1000), 200);
    assert_eq!(feasible_to_find(1, 1000), 100);
    assert_eq!(feasible_to_find(100, 1000), 1000);
}

fn reject(reasons: &[&str]) -> Rejection {
    Rejection {
        plugin: Plugin::NodeResourcesFit,
        code: Code::Unschedulable,
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
    }
}

/// FitError: each node's reasons counted, "<n> <reason>" sorted as strings ("10 …" before "2 …").
#[test]
fn the_failure_message_counts_reasons_sorted_as_strings() {
    let mut d = Diagnosis::default();
    for i in 0..10 {
        d.rejections
            .push((format!("a{i}"), reject(&["node(s) were unschedulable"])));
    }
    for i in 0..2 {
        d.rejections.push((
            format!("b{i}"),
            reject(&["Insufficient cpu", "Insufficient memory"]),
        ));
    }
    assert_eq!(
        d.message(12),
        "0/12 nodes are available: 10 node(s) were unschedulable, 2 Insufficient cpu, 2 Insufficient memory."
    );
    let p = Diagnosis {
        prefilter: Some("pod has unbound immediate PersistentVolumeClaims".into()),
        ..Diagnosis::default()
    };
    assert_eq!(
        p.message(3),
        "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    );
}

#[test]
fn the_best_scoring_node_wins_and_rotation_spreads_the_search() {
    let c = cache(
        vec![
            node_json("small", "1", "1Gi", json!({})),
            node_json("big", "8", "8Gi", json!({})),
            node_json("tiny", "100m", "1Gi", json!({})),
        ],
        vec![],
    );
    let profile = Profile::default_named("default-scheduler");
    let (listers, nominator) = (Listers::empty(), Nominator::default());
    let mut algo = Algorithm::default();
    let p = pod("p", json!({"cpu": "500m"}), json!({}));
    for _ in 0..3 {
        match algo.schedule(&profile, 0, &c, &listers, &nominator, &p) {
            Decision::Node(n) => assert_eq!(n, "big"),
            _ => panic!("not placed"),
        }
    }
    let huge = pod("h", json!({"cpu": "16"}), json!({}));
    let Decision::Unfit(unfit) = algo.schedule(&profile, 0, &c, &listers, &nominator, &huge) else {
        panic!("placed")
    };
    let d = &unfit.0;
    assert_eq!(d.message(3), "0/3 nodes are available: 3 Insufficient cpu.");
    assert_eq!(d.plugins, HashSet::from([Plugin::NodeResourcesFit]));
    let empty = Cache::default();
    assert!(matches!(
        algo.schedule(&profile, 0, &empty, &listers, &nominator, &p),
        Decision::NoNodes
    ));
}

/// Room a higher-priority pod was nominated for is kept from lower-priority pods.
#[test]
fn nominated_pods_keep_their_room() {
    let c = cache(vec![node_json("n", "1", "1Gi", json!({}))], vec![]);
    let profile = Profile::default_named("default-scheduler");
    let listers = Listers::empty();
    let mut nominator = Nominator::default();
    nominator.set(
        pod(
            "vip",
            json!({"cpu": "800m"}),
            json!({"spec": {"priority": 10}}),
        ),
        Some("n"),
    );
    let mut algo = Algorithm::default();
    let low = pod("low", json!({"cpu": "500m"}), json!({}));
    assert!(matches!(
        algo.schedule(&profile, 0, &c, &listers, &nominator, &low),
        Decision::Unfit(..)
    ));
    let high = pod(
        "high",
        json!({"cpu": "500m"}),
        json!({"spec": {"priority": 100}}),
    );
    assert!(matches!(
        algo.schedule(&profile, 0, &c, &listers, &nominator, &high),
        Decision::Node(_)
    ));
    nominator.remove("uid-vip");
    assert!(matches!(
        algo.schedule(&profile, 0, &c, &listers, &nominator, &low),
        Decision::Node(_)
    ));
}
