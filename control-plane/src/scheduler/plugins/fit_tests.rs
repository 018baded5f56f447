use serde_json::json;

use super::*;
use crate::scheduler::testing::{cache, infos, node_json, pod};

fn reasons(r: Result<(), Rejection>) -> Vec<String> {
    r.err().map(|r| r.reasons).unwrap_or_default()
}

/// kube-scheduler's fit_test cases: every short resource named, the pod count first, extended
/// resources, ignored resources and groups, init containers and overhead counted.
#[test]
fn the_filter_names_every_resource_short() {
    let c = cache(
        vec![node_json(
            "n",
            "10",
            "20",
            json!({"status": {"allocatable": {
            "pods": "2", "example.com/gpu": "1", "ephemeral-storage": "20"}}}),
        )],
        vec![(
            "n",
            pod("a", json!({"cpu": "8", "memory": "19"}), json!({})),
        )],
    );
    let n = &c.nodes[0];
    let args = FitArgs::default();
    let f = |p: &PodInfo| reasons(filter(&args, p, n));
    assert!(f(&pod("p", json!({"cpu": "1", "memory": "1"}), json!({}))).is_empty());
    assert_eq!(
        f(&pod("p", json!({"cpu": "3", "memory": "2"}), json!({}))),
        ["Insufficient cpu", "Insufficient memory"]
    );
    assert_eq!(
        f(&pod("p", json!({"example.com/gpu": "2"}), json!({}))),
        ["Insufficient example.com/gpu"]
    );
    assert_eq!(
        f(&pod("p", json!({"ephemeral-storage": "25"}), json!({}))),
        ["Insufficient ephemeral-storage"]
    );
    assert_eq!(
        f(&pod("p", json!({"hugepages-2Mi": "2Mi"}), json!({}))),
        ["Insufficient hugepages-2Mi"]
    );
    // The largest init container counts.
    let init = json!({"spec": {"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}]}});
    assert_eq!(
        f(&pod("p", json!({"cpu": "1"}), init)),
        ["Insufficient cpu"]
    );
    let overhead = json!({"spec": {"overhead": {"memory": "1"}}});
    assert_eq!(
        f(&pod("p", json!({"memory": "1"}), overhead)),
        ["Insufficient memory"]
    );
    // Ignored extended resources and groups.
    let ignoring = FitArgs {
        ignored_resources: vec!["example.com/gpu".into()],
        ..FitArgs::default()
    };
    assert!(reasons(filter(
        &ignoring,
        &pod("p", json!({"example.com/gpu": "2"}), json!({})),
        n
    ))
    .is_empty());
    let ignoring = FitArgs {
        ignored_groups: vec!["example.com".into()],
        ..FitArgs::default()
    };
    assert!(reasons(filter(
        &ignoring,
        &pod("p", json!({"example.com/gpu": "2"}), json!({})),
        n
    ))
    .is_empty());

    // The pod count is checked even for pods asking nothing, and reported first.
    let full = cache(
        vec![node_json(
            "n",
            "1",
            "1",
            json!({"status": {"allocatable": {"pods": "1"}}}),
        )],
        vec![("n", pod("a", json!({}), json!({})))],
    );
    assert_eq!(
        reasons(filter(
            &args,
            &pod("p", json!({}), json!({})),
            &full.nodes[0]
        )),
        ["Too many pods"]
    );
    assert_eq!(
        reasons(filter(
            &args,
            &pod("p", json!({"cpu": "2"}), json!({})),
            &full.nodes[0]
        )),
        ["Too many pods", "Insufficient cpu"]
    );
}

/// least_allocated_test / most_allocated_test: ((capacity − requested) × 100 / capacity)
/// averaged over cpu and memory, requests including the non-zero defaults.
#[test]
fn least_and_most_allocated_scores() {
    let c = cache(
        vec![
            node_json("a", "4", "10000", json!({})),
            node_json("b", "6", "10000", json!({})),
        ],
        vec![
            (
                "a",
                pod("x", json!({"cpu": "1", "memory": "2000"}), json!({})),
            ),
            (
                "b",
                pod("y", json!({"cpu": "2", "memory": "6000"}), json!({})),
            ),
        ],
    );
    let p = pod("p", json!({"cpu": "1", "memory": "2000"}), json!({}));
    // a: cpu (4−2)/4 = 50, memory (10000−4000)/10000 = 60 → 55;
    // b: cpu (6−3)/6 = 50, memory (10000−8000)/10000 = 20 → 35.
    assert_eq!(scores(&FitArgs::default(), &p, &infos(&c)), [55, 35]);
    let most = FitArgs {
        strategy: Strategy::MostAllocated,
        ..FitArgs::default()
    };
    assert_eq!(scores(&most, &p, &infos(&c)), [45, 65]);
    // Weights: memory three times cpu.
    let weighted = FitArgs {
        resources: vec![("cpu".into(), 1), ("memory".into(), 3)],
        ..FitArgs::default()
    };
    assert_eq!(
        scores(&weighted, &p, &infos(&c)),
        [(50 + 3 * 60) / 4, (50 + 3 * 20) / 4]
    );
    // A pod stating no request counts as 100m and 200 MiB.
    let empty = pod("e", json!({}), json!({}));
    let c = cache(vec![node_json("n", "1", "1000Mi", json!({}))], vec![]);
    assert_eq!(
        scores(&FitArgs::default(), &empty, &infos(&c)),
        [(90 + 80) / 2]
    );
}

/// requested_to_capacity_ratio_test: a broken-line function of utilization.
#[test]
fn requested_to_capacity_ratio_follows_its_shape() {
    let args = FitArgs {
        strategy: Strategy::RequestedToCapacityRatio(vec![(0, 0), (100, 10)]),
        ..FitArgs::default()
    };
    let c = cache(vec![node_json("n", "4", "4000", json!({}))], vec![]);
    let p = pod("p", json!({"cpu": "1", "memory": "3000"}), json!({}));
    // cpu 25 % → 25, memory 75 % → 75: (25 + 75) / 2.
    assert_eq!(scores(&args, &p, &infos(&c)), [50]);
    assert_eq!(broken_linear(&[(10, 10), (50, 0)], 5), 100);
    assert_eq!(broken_linear(&[(10, 10), (50, 0)], 30), 50);
    assert_eq!(broken_linear(&[(10, 10), (50, 0)], 90), 0);
}

/// balanced_allocation_test: 1 − |cpu fraction − memory fraction| / 2, best-effort pods skipped.
#[test]
fn balanced_allocation_prefers_even_use() {
    let c = cache(
        vec![
            node_json("a", "4", "10000", json!({})),
            node_json("b", "6", "10000", json!({})),
        ],
        vec![(
            "b",
            pod("y", json!({"cpu": "3", "memory": "5000"}), json!({})),
        )],
    );
    let p = pod("p", json!({"cpu": "3", "memory": "5000"}), json!({}));
    // a: 3/4 and 5000/10000 → 1 − 0.125; b: 6/6 and 10000/10000 → 1.
    assert_eq!(
        balanced_scores(&default_resources(), &p, &infos(&c)),
        Some(vec![87, 100])
    );
    assert_eq!(
        balanced_scores(
            &default_resources(),
            &pod("e", json!({}), json!({})),
            &infos(&c)
        ),
        None
    );
}
