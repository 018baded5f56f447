//! Nodes, pods and caches written as JSON, for the plugins' table tests.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use super::cache::{Cache, NodeInfo, PodInfo};

/// Merges `from` into `into` (objects key by key, anything else replaced).
pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A node named `name` (labelled with its hostname) with `cpu`, `memory` and 110 pods
/// allocatable; `extra` is merged in.
pub fn node_json(name: &str, cpu: &str, memory: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}},
    });
    merge(&mut n, extra);
    serde_json::from_value(n).expect("a Node")
}

/// A pod `name` in `default` with one container requesting `requests` (a JSON object, may be
/// empty); `extra` is merged into the pod.
pub fn pod(name: &str, requests: Value, extra: Value) -> Arc<PodInfo> {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": requests}}]},
    });
    merge(&mut p, extra);
    let pod: Pod = serde_json::from_value(p).expect("a Pod");
    Arc::new(PodInfo::new(Arc::new(pod)))
}

/// A cache holding `nodes`, and `pods` placed as (node, pod).
pub fn cache(nodes: Vec<Node>, pods: Vec<(&str, Arc<PodInfo>)>) -> Cache {
    let mut c = Cache::default();
    for n in nodes {
        c.set_node(Arc::new(n));
    }
    for (n, p) in pods {
        c.set_pod(n, p);
    }
    c
}

/// The cache's nodes, in its order.
pub fn infos(c: &Cache) -> Vec<&NodeInfo> {
    c.nodes.iter().collect()
}
