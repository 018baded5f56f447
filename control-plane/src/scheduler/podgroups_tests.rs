use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::scheduler::cache::Cache;
use crate::scheduler::testing::{node_json, pod};

fn node(name: &str, zone: &str) -> Arc<k8s_openapi::api::core::v1::Node> {
    Arc::new(node_json(
        name,
        "4",
        "4Gi",
        json!({"metadata": {"labels": {"zone": zone}}}),
    ))
}

fn anti(name: &str, app: &str) -> Arc<PodInfo> {
    pod(
        name,
        json!({}),
        json!({"metadata": {"labels": {"app": app}}, "spec": {"affinity": {"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "zone"}]}}}}),
    )
}

/// Counts per zone of pods with `app`, walking every node's pods as kube-scheduler does.
fn walked(c: &Cache, app: &str) -> ValueCounts {
    let mut out = ValueCounts::default();
    for n in &c.nodes {
        let k = n
            .pods
            .iter()
            .filter(|p| p.labels().get("app").map(String::as_str) == Some(app));
        let k = k.count() as i64;
        if let (Some(z), true) = (n.labels().get("zone"), k > 0) {
            *out.entry(z.clone()).or_default() += k;
        }
    }
    out
}

fn grouped(c: &Cache, app: &str) -> ValueCounts {
    let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
    match c.groups.by_labels.get(&("default".to_string(), labels)) {
        Some(g) => (*g.topo("zone", c)).clone(),
        None => ValueCounts::default(),
    }
}

fn held(c: &Cache) -> ValueCounts {
    let mut out = ValueCounts::default();
    for ((h, t), g) in &c.groups.by_term {
        assert_eq!(*h, Held::RequiredAnti);
        for (v, n) in g.topo(&t.key, c).iter() {
            *out.entry(v.clone()).or_default() += n;
        }
    }
    out
}

#[test]
fn groups_follow_pods_nodes_and_labels_as_a_walk_of_every_pod_counts_them() {
    let mut c = Cache::default();
    // Pods bound before their node is seen count nowhere until it is.
    c.set_pod("a", anti("p1", "web"));
    c.set_pod("a", anti("p2", "web"));
    assert!(grouped(&c, "web").is_empty());
    c.set_node(node("a", "z1"));
    c.set_node(node("b", "z1"));
    c.set_node(node("c", "z2"));
    assert_eq!(grouped(&c, "web"), walked(&c, "web"));
    assert_eq!(grouped(&c, "web").get("z1"), Some(&2));
    // Tracked from now on (the zone key was counted on demand until here).
    c.track_keys(&anti("probe", "web"));
    c.assume("c", anti("p3", "web"));
    c.set_pod("b", anti("p4", "db"));
    assert_eq!(grouped(&c, "web"), walked(&c, "web"));
    assert_eq!(grouped(&c, "db"), walked(&c, "db"));
    assert_eq!(held(&c).get("z1"), Some(&3));
    // A node moving zones moves its pods' counts; a status-only update changes nothing.
    c.set_node(node("a", "z3"));
    c.set_node(node("a", "z3"));
    assert_eq!(grouped(&c, "web"), walked(&c, "web"));
    assert_eq!(grouped(&c, "web").get("z3"), Some(&2));
    // A binding that failed, a pod deleted, a node removed.
    c.forget("uid-p3");
    c.remove_pod("uid-p4");
    assert_eq!(grouped(&c, "web"), walked(&c, "web"));
    assert!(grouped(&c, "db").is_empty());
    assert!(!c
        .groups
        .by_labels
        .keys()
        .any(|(_, l)| l.get("app").map(String::as_str) == Some("db")));
    c.remove_node("a");
    assert_eq!(grouped(&c, "web"), walked(&c, "web"));
    assert!(held(&c).is_empty());
    // It comes back with its pods.
    c.set_node(node("a", "z2"));
    assert_eq!(grouped(&c, "web").get("z2"), Some(&2));
    assert_eq!(held(&c).get("z2"), Some(&2));
    c.remove_pod("uid-p1");
    c.remove_pod("uid-p2");
    assert!(c.groups.by_labels.is_empty() && c.groups.by_term.is_empty());
}
