use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::scheduler::testing::{cache, infos, node_json, pod};

fn zoned(name: &str, zone: &str) -> k8s_openapi::api::core::v1::Node {
    node_json(
        name,
        "4",
        "4Gi",
        json!({"metadata": {"labels": {"zone": zone}}}),
    )
}

fn labelled(name: &str, app: &str, extra: Value) -> Arc<PodInfo> {
    let mut p = json!({"metadata": {"labels": {"app": app}}});
    crate::scheduler::testing::merge(&mut p, extra);
    pod(name, json!({}), p)
}

fn term(app: &str, key: &str) -> Value {
    json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
}

fn required(kind: &str, terms: Value) -> Value {
    json!({"spec": {"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}})
}

/// a, b in z1; c in z2; a db pod on a.
fn world(extra_pods: Vec<(&str, Arc<PodInfo>)>) -> Cache {
    let mut pods = vec![("a", labelled("db", "db", json!({})))];
    pods.extend(extra_pods);
    cache(
        vec![zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")],
        pods,
    )
}

fn verdicts(c: &Cache, p: &PodInfo) -> Vec<Option<String>> {
    let s = prefilter(p, c, &Listers::empty()).expect("terms to check");
    c.nodes
        .iter()
        .map(|n| s.filter(p, n).err().map(|r| r.reasons[0].clone()))
        .collect()
}

const ANTI: &str = "node(s) didn't match pod anti-affinity rules";
const AFFINITY: &str = "node(s) didn't match pod affinity rules";
const EXISTING: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// kube-scheduler's filtering_test cases for required terms.
#[test]
fn required_anti_affinity_keeps_away_from_matching_pods_per_topology() {
    let c = world(vec![]);
    let per_host = labelled(
        "p",
        "web",
        required(
            "podAntiAffinity",
            json!([term("db", "kubernetes.io/hostname")]),
        ),
    );
    assert_eq!(verdicts(&c, &per_host), [Some(ANTI.into()), None, None]);
    let per_zone = labelled(
        "p",
        "web",
        required("podAntiAffinity", json!([term("db", "zone")])),
    );
    assert_eq!(
        verdicts(&c, &per_zone),
        [Some(ANTI.into()), Some(ANTI.into()), None]
    );
    let r = prefilter(&per_zone, &c, &Listers::empty())
        .unwrap()
        .filter(&per_zone, &c.nodes[0])
        .unwrap_err();
    assert_eq!(r.code, Code::Unschedulable);
    // A term names its namespaces: a db pod elsewhere does not count.
    let mut t = term("db", "zone");
    t["namespaces"] = json!(["other"]);
    let elsewhere = labelled("p", "web", required("podAntiAffinity", json!([t])));
    assert_eq!(verdicts(&c, &elsewhere), [None, None, None]);
}

#[test]
fn required_affinity_needs_a_matching_pod_in_the_topology() {
    let c = world(vec![]);
    let near_db = labelled(
        "p",
        "web",
        required("podAffinity", json!([term("db", "zone")])),
    );
    assert_eq!(verdicts(&c, &near_db), [None, None, Some(AFFINITY.into())]);
    let r = prefilter(&near_db, &c, &Listers::empty())
        .unwrap()
        .filter(&near_db, &c.nodes[2])
        .unwrap_err();
    assert_eq!(r.code, Code::Unresolvable);
    // A node without the topology label never matches.
    let mut c = world(vec![]);
    c.set_node(Arc::new(node_json("bare", "4", "4Gi", json!({}))));
    assert_eq!(verdicts(&c, &near_db)[3], Some(AFFINITY.into()));
}

/// The first pod of a group with affinity to itself goes anywhere; a pod whose terms match no
/// pod, itself included, goes nowhere.
#[test]
fn the_first_pod_of_a_self_affine_group_is_placed() {
    let c = world(vec![]);
    let first = labelled(
        "p",
        "cache",
        required("podAffinity", json!([term("cache", "zone")])),
    );
    assert_eq!(verdicts(&c, &first), [None, None, None]);
    let lonely = labelled(
        "p",
        "web",
        required("podAffinity", json!([term("cache", "zone")])),
    );
    assert_eq!(
        verdicts(&c, &lonely),
        [
            Some(AFFINITY.into()),
            Some(AFFINITY.into()),
            Some(AFFINITY.into())
        ]
    );
}

#[test]
fn existing_pods_anti_affinity_keeps_the_incoming_pod_away() {
    let guard = labelled(
        "guard",
        "guard",
        required("podAntiAffinity", json!([term("web", "zone")])),
    );
    let c = world(vec![("b", guard)]);
    let web = labelled("p", "web", json!({}));
    assert_eq!(
        verdicts(&c, &web),
        [Some(EXISTING.into()), Some(EXISTING.into()), None]
    );
    // A pod the term does not select is not kept away, and needs no prefilter work at all
    // when no pod anywhere has required anti-affinity.
    assert_eq!(
        verdicts(&c, &labelled("q", "api", json!({}))),
        [None, None, None]
    );
    assert!(prefilter(&web, &world(vec![]), &Listers::empty()).is_none());
}

/// AddPod/RemovePod: a nominated pod counts, a removed victim no longer does.
#[test]
fn counts_follow_pods_added_and_removed_for_the_cycle() {
    let c = world(vec![]);
    let p = labelled(
        "p",
        "web",
        required(
            "podAntiAffinity",
            json!([term("db", "kubernetes.io/hostname")]),
        ),
    );
    let mut s = prefilter(&p, &c, &Listers::empty()).unwrap();
    let db = c.nodes[0].pods[0].clone();
    s.update(&p, &db, &c.nodes[0], -1, &Listers::empty());
    assert!(s.filter(&p, &c.nodes[0]).is_ok());
    s.update(&p, &db, &c.nodes[1], 1, &Listers::empty());
    assert_eq!(s.filter(&p, &c.nodes[1]).unwrap_err().reasons, [ANTI]);
}

/// scoring_test: preferred terms weigh per topology; existing pods' preferred anti-affinity
/// against the incoming pod lowers their nodes.
#[test]
fn preferred_terms_and_existing_pods_terms_score() {
    let c = world(vec![]);
    let pref = |kind: &str, w: i32, t: Value| {
        json!({"spec": {"affinity": {kind: {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": w, "podAffinityTerm": t}]}}}})
    };
    let near = labelled("p", "web", pref("podAffinity", 5, term("db", "zone")));
    let s = scores(
        &AffinityArgs::default(),
        &near,
        &infos(&c),
        &c,
        &Listers::empty(),
    );
    assert_eq!(s, Some(vec![100, 100, 0]));
    let away = labelled(
        "p",
        "web",
        pref("podAntiAffinity", 5, term("db", "kubernetes.io/hostname")),
    );
    let s = scores(
        &AffinityArgs::default(),
        &away,
        &infos(&c),
        &c,
        &Listers::empty(),
    );
    assert_eq!(s, Some(vec![0, 100, 100]));
    // An existing pod's required affinity to the incoming pod adds hardPodAffinityWeight.
    let fan = labelled(
        "fan",
        "fan",
        required("podAffinity", json!([term("web", "zone")])),
    );
    let c = world(vec![("c", fan)]);
    let web = labelled("p", "web", json!({}));
    let s = scores(
        &AffinityArgs::default(),
        &web,
        &infos(&c),
        &c,
        &Listers::empty(),
    );
    assert_eq!(s, Some(vec![0, 0, 100]));
    let off = AffinityArgs {
        hard_pod_affinity_weight: 0,
        ..AffinityArgs::default()
    };
    assert_eq!(scores(&off, &web, &infos(&c), &c, &Listers::empty()), None);
    // Nothing with affinity anywhere: skipped.
    assert_eq!(
        scores(
            &AffinityArgs::default(),
            &web,
            &infos(&world(vec![])),
            &world(vec![]),
            &Listers::empty()
        ),
        None
    );
}
