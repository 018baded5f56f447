use serde_json::json;

use super::*;
use crate::scheduler::testing::{cache, infos, node_json, pod};

fn taints(list: serde_json::Value) -> serde_json::Value {
    json!({"spec": {"taints": list}})
}

#[test]
fn a_cordoned_node_takes_only_pods_tolerating_its_taint() {
    let c = cache(
        vec![node_json(
            "n",
            "1",
            "1Gi",
            json!({"spec": {"unschedulable": true}}),
        )],
        vec![],
    );
    let plain = pod("p", json!({}), json!({}));
    let r = node_unschedulable(&plain, &c.nodes[0]).unwrap_err();
    assert_eq!(
        (r.code, r.reasons[0].as_str()),
        (Code::Unresolvable, "node(s) were unschedulable")
    );
    let tolerant = pod(
        "t",
        json!({}),
        json!({"spec": {"tolerations": [
        {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}),
    );
    assert!(node_unschedulable(&tolerant, &c.nodes[0]).is_ok());
}

#[test]
fn node_name_and_untolerated_taints_reject_with_upstream_texts() {
    let c = cache(
        vec![node_json(
            "a",
            "1",
            "1Gi",
            taints(json!([
            {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])),
        )],
        vec![],
    );
    let n = &c.nodes[0];
    let elsewhere = pod("p", json!({}), json!({"spec": {"nodeName": "b"}}));
    assert_eq!(
        node_name(&elsewhere, n).unwrap_err().reasons,
        ["node(s) didn't match the requested node name"]
    );
    // PreferNoSchedule never filters; the first NoSchedule taint not tolerated is named.
    let r = taint_toleration(&pod("p", json!({}), json!({})), n).unwrap_err();
    assert_eq!(
        r.reasons,
        ["node(s) had untolerated taint {dedicated: gpu}"]
    );
    let tolerant = pod(
        "p",
        json!({}),
        json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}),
    );
    assert!(taint_toleration(&tolerant, n).is_ok());
}

/// kube-scheduler's taint_toleration_test: "the more intolerable taints a node has, the lower
/// its score".
#[test]
fn intolerable_prefer_no_schedule_taints_lower_the_score() {
    let t = |k: &str| json!({"key": k, "value": "v", "effect": "PreferNoSchedule"});
    let c = cache(
        vec![
            node_json("none", "1", "1Gi", json!({})),
            node_json("one", "1", "1Gi", taints(json!([t("a")]))),
            node_json("two", "1", "1Gi", taints(json!([t("a"), t("b")]))),
            node_json("tolerated", "1", "1Gi", taints(json!([t("c")]))),
        ],
        vec![],
    );
    let p = pod(
        "p",
        json!({}),
        json!({"spec": {"tolerations": [{"key": "c", "operator": "Exists", "effect": "PreferNoSchedule"}]}}),
    );
    assert_eq!(taint_scores(&p, &infos(&c)), [100, 50, 0, 100]);
    // No node with an intolerable taint: all equal.
    let c = cache(vec![node_json("a", "1", "1Gi", json!({}))], vec![]);
    assert_eq!(taint_scores(&p, &infos(&c)), [100]);
}

#[test]
fn node_affinity_filters_on_selector_and_terms_and_scores_preferred_weights() {
    let zone = |z: &str| json!({"metadata": {"labels": {"zone": z}}});
    let c = cache(
        vec![
            node_json("a", "1", "1Gi", zone("z1")),
            node_json("b", "1", "1Gi", zone("z2")),
            node_json("c", "1", "1Gi", json!({})),
        ],
        vec![],
    );
    let p = pod(
        "p",
        json!({}),
        json!({"spec": {"nodeSelector": {"zone": "z1"}}}),
    );
    assert!(node_affinity(&p, &c.nodes[0]).is_ok());
    assert_eq!(
        node_affinity(&p, &c.nodes[1]).unwrap_err().reasons,
        ["node(s) didn't match Pod's node affinity/selector"]
    );
    let pref = |w: i32, z: &str| json!({"weight": w, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": [z]}]}});
    let p = pod(
        "p",
        json!({}),
        json!({"spec": {"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [pref(2, "z1"), pref(8, "z2")]}}}}),
    );
    assert_eq!(node_affinity_scores(&p, &infos(&c)), Some(vec![25, 100, 0]));
    assert_eq!(
        node_affinity_scores(&pod("q", json!({}), json!({})), &infos(&c)),
        None
    );
}

#[test]
fn host_ports_conflict_on_the_same_protocol_and_overlapping_addresses() {
    let port = |ip: &str, proto: &str, p: i32| {
        json!({"spec": {"containers": [{"name": "c", "ports": [
        {"containerPort": 80, "hostPort": p, "hostIP": ip, "protocol": proto}]}]}})
    };
    let c = cache(
        vec![node_json("n", "1", "1Gi", json!({}))],
        vec![("n", pod("used", json!({}), port("10.0.0.1", "TCP", 8080)))],
    );
    let n = &c.nodes[0];
    let clash = |ip: &str, proto: &str, p: i32| {
        node_ports(&pod("p", json!({}), port(ip, proto, p)), n).is_err()
    };
    assert!(clash("", "TCP", 8080), "0.0.0.0 overlaps every address");
    assert!(clash("10.0.0.1", "TCP", 8080));
    assert!(!clash("10.0.0.2", "TCP", 8080));
    assert!(!clash("10.0.0.1", "UDP", 8080));
    assert!(!clash("0.0.0.0", "TCP", 8081));
    assert_eq!(
        node_ports(&pod("p", json!({}), port("", "TCP", 8080)), n)
            .unwrap_err()
            .reasons,
        ["node(s) didn't have free ports for the requested pod ports"]
    );
}

#[test]
fn image_names_are_compared_as_runtimes_report_them() {
    for (given, full) in [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("me/app", "docker.io/me/app:latest"),
        ("gcr.io/x/y", "gcr.io/x/y:latest"),
        ("localhost:5000/y:v1", "localhost:5000/y:v1"),
        ("gcr.io/x@sha256:ab", "gcr.io/x@sha256:ab"),
    ] {
        assert_eq!(normalized_image(given), full);
    }
}

/// kube-scheduler's image_locality_test: images under 23 MiB never count; bigger ones score by
/// size, spread over the nodes that have them.
#[test]
fn image_locality_scores_large_images_already_present() {
    let mb = 1024 * 1024_i64;
    let images = |list: serde_json::Value| json!({"status": {"images": list}});
    let c = cache(
        vec![
            node_json(
                "a",
                "1",
                "1Gi",
                images(json!([
                {"names": ["gcr.io/40:latest"], "sizeBytes": 40 * mb},
                {"names": ["gcr.io/300:latest"], "sizeBytes": 300 * mb}])),
            ),
            node_json(
                "b",
                "1",
                "1Gi",
                images(json!([
                {"names": ["gcr.io/250:latest"], "sizeBytes": 250 * mb},
                {"names": ["gcr.io/10:v1"], "sizeBytes": 10 * mb}])),
            ),
        ],
        vec![],
    );
    let two = |a: &str, b: &str| {
        pod(
            "p",
            json!({}),
            json!({"spec": {"containers": [
        {"name": "a", "image": a}, {"name": "b", "image": b}]}}),
        )
    };
    // Upstream's "two images spread on two nodes, prefer the larger image one": node a holds
    // 40 MiB (×1/2) and 300 MiB (×1/2) → 170 MiB; node b 250 MiB ×1/2 → 125 MiB; the
    // threshold for two containers is 2000 MiB.
    let p = two("gcr.io/40", "gcr.io/300");
    let scores = image_scores(&p, &infos(&c), &c);
    assert_eq!(scores, [(170 - 23) * 100 / (2000 - 23), 0]);
    // Small images add to the sum before the threshold applies: 250/2 + 10/2 MiB.
    let p = two("gcr.io/250", "gcr.io/10:v1");
    assert_eq!(
        image_scores(&p, &infos(&c), &c),
        [0, (130 - 23) * 100 / (2000 - 23)]
    );
}
