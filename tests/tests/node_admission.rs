//! End-to-end: the agent admits pods by its Node as the apiserver has it, as the kubelet does
//! with the node from its informer (`lifecycle/predicate.go`), on a two-node namespace lab (see
//! `podlet_e2e::cluster`): a label set with `kubectl label` lets in a pod that selects it, one
//! removed keeps out a pod that needs it, and a pod bound to a node whose labels do not match
//! its required node affinity ends Failed with the kubelet's reason and message.

use std::time::Duration;

use podlet_e2e::cluster::Cluster;
use serde_json::{json, Value};

const POOL: &str = "e2e.podlet.dev/pool";

/// A busybox pod; `extra`'s fields are added to its spec.
fn create_pod(c: &Cluster, name: &str, extra: Value) {
    let mut spec = json!({"terminationGracePeriodSeconds": 0,
        "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]}]});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": name, "namespace": "default"}, "spec": spec});
    c.apply(&pod);
}

fn required_pool(pool: &str) -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": POOL, "operator": "In", "values": [pool]}]}]}}})
}

/// Pod `name` once Failed.
fn wait_failed(c: &Cluster, name: &str) -> Value {
    c.wait_long(&format!("pod {name} Failed"), || {
        c.get_json(&["pod", name])
            .filter(|p| p["status"]["phase"] == "Failed")
    })
}

/// The kubelet's status of a pod refused by node affinity, its event and what kubectl shows.
fn assert_refused_by_node_affinity(c: &Cluster, p: &Value) {
    let name = p["metadata"]["name"].as_str().unwrap();
    assert_eq!(p["status"]["reason"], "NodeAffinity", "{p}");
    assert_eq!(
        p["status"]["message"],
        "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector",
        "{p}"
    );
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let e = c.wait_long(&format!("the NodeAffinity event about {name}"), || {
        c.get_json(&["events"])?["items"]
            .as_array()?
            .iter()
            .find(|e| e["involvedObject"]["uid"] == uid.as_str() && e["reason"] == "NodeAffinity")
            .cloned()
    });
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(
        e["message"],
        "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector",
        "{e}"
    );
    // kubectl's STATUS is the reason (no container is waiting to be created).
    let line = c.kubectl(&["get", "pod", name, "--no-headers"]).stdout;
    assert!(line.contains(" NodeAffinity "), "{line}");
}

#[test]
fn admission_uses_the_nodes_labels_as_the_api_has_them() {
    let Some(c) = Cluster::start(&[1, 1], &[], true) else {
        return;
    };
    for i in 1..=2 {
        c.wait_long(&format!("n{i} Ready and untainted"), || {
            let n = c.get_json(&["node", &format!("n{i}")])?;
            let untainted = n["spec"]["taints"].as_array().is_none_or(|t| t.is_empty());
            let ready = n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready && untainted).then_some(())
        });
    }
    c.wait_long("the default service account", || {
        (c.kubectl(&["get", "sa", "default"]).code == 0).then_some(())
    });

    // A label set through the API (not --node-labels): the scheduler places the pod that
    // selects it on n2, and n2 admits it.
    c.kubectl_ok(&["label", "node", "n2", &format!("{POOL}=blue")]);
    create_pod(&c, "selects-blue", json!({"nodeSelector": {POOL: "blue"}}));
    let p = c.wait_long("selects-blue Running", || {
        c.get_json(&["pod", "selects-blue"])
            .filter(|p| p["status"]["phase"] == "Running")
    });
    assert_eq!(p["spec"]["nodeName"], "n2", "{p}");

    // Bound by hand to n1, which lacks the label: refused, and Failed in the API.
    create_pod(
        &c,
        "needs-blue-on-n1",
        json!({"nodeName": "n1", "affinity": required_pool("blue")}),
    );
    let p = wait_failed(&c, "needs-blue-on-n1");
    assert_refused_by_node_affinity(&c, &p);

    // The label removed through the API is gone for admission too (not only what was
    // registered counts, nor a union with it).
    c.kubectl_ok(&["label", "node", "n2", &format!("{POOL}-")]);
    create_pod(
        &c,
        "needs-blue-on-n2",
        json!({"nodeName": "n2", "affinity": required_pool("blue")}),
    );
    let p = wait_failed(&c, "needs-blue-on-n2");
    assert_refused_by_node_affinity(&c, &p);
    // Set again, a bound pod that selects it runs (n2 sees the change without a restart).
    c.kubectl_ok(&["label", "node", "n2", &format!("{POOL}=green")]);
    create_pod(
        &c,
        "selects-green-on-n2",
        json!({"nodeName": "n2", "nodeSelector": {POOL: "green"}}),
    );
    c.wait_long("selects-green-on-n2 Running", || {
        c.get_json(&["pod", "selects-green-on-n2"])
            .filter(|p| p["status"]["phase"] == "Running")
    });
    // A refused pod stays Failed: it is neither started later nor written back to Pending.
    std::thread::sleep(Duration::from_secs(3));
    for name in ["needs-blue-on-n1", "needs-blue-on-n2"] {
        let p = c.get_json(&["pod", name]).unwrap();
        assert_eq!(p["status"]["phase"], "Failed", "{p}");
        assert_eq!(p["status"]["reason"], "NodeAffinity", "{p}");
    }
    // Each agent watched and read its Node as itself (the Node authorizer let it).
    for (i, n) in c.nodes.iter().enumerate() {
        let log = n.agent_log();
        for failure in ["watching the Node", "reading the Node"] {
            assert!(!log.contains(failure), "n{}: {failure}:\n{log}", i + 1);
        }
    }
}
