//! Helpers for tests that drive workloads with kubectl on an all-in-one node.

use std::time::Duration;

use serde_json::Value;

use crate::apiserver::ok;
use crate::TestNode;

/// An all-in-one node whose default namespace is ready for pods (its service account exists).
pub fn node() -> Option<TestNode> {
    let node = TestNode::all_in_one()?;
    node.wait_for(
        "the default service account",
        Duration::from_secs(60),
        || (node.kubectl(33, &["get", "sa", "default"]).code == 0).then_some(()),
    );
    Some(node)
}

pub fn apply(node: &TestNode, yaml: &str) {
    ok(
        &node.kubectl_stdin(33, &["apply", "-f", "-"], Some(yaml)),
        "kubectl apply",
    );
}

pub fn json(node: &TestNode, args: &[&str]) -> Value {
    node.get_json(args).unwrap_or(Value::Null)
}

/// Waits up to `secs` for `f`.
pub fn wait<T>(node: &TestNode, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    node.wait_for(what, Duration::from_secs(secs), f)
}

pub fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

pub fn running(pods: &[Value]) -> usize {
    pods.iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count()
}

pub fn condition<'a>(obj: &'a Value, ty: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}
