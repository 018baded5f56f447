//! End-to-end: the apiserver and the node agree on a pod's QoS class. The apiserver sets
//! `status.qosClass` when the pod is created; the agent computes it again to place the pod's
//! cgroup. Both use the shared rules (exact quantities, requests defaulting to limits, init
//! containers), so spellings like `1000m`/`1` and `64Mi`/`67108864` give one class.

use podlet_e2e::TestNode;
use serde_json::Value;

const PODS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: spelled}
  spec:
    terminationGracePeriodSeconds: 1
    containers:
    - name: c
      image: busybox:1.36
      command: ["sleep", "1000"]
      resources:
        requests: {cpu: 1000m, memory: 64Mi}
        limits: {cpu: "1", memory: "67108864"}
- apiVersion: v1
  kind: Pod
  metadata: {name: init-guaranteed}
  spec:
    terminationGracePeriodSeconds: 1
    initContainers:
    - name: i
      image: busybox:1.36
      command: ["true"]
      resources:
        requests: {cpu: "0.5", memory: "33554432"}
        limits: {cpu: 500m, memory: 32Mi}
    containers:
    - name: c
      image: busybox:1.36
      command: ["sleep", "1000"]
      resources:
        limits: {cpu: 250m, memory: 64Mi}
- apiVersion: v1
  kind: Pod
  metadata: {name: init-burstable}
  spec:
    terminationGracePeriodSeconds: 1
    initContainers:
    - name: i
      image: busybox:1.36
      command: ["true"]
      resources:
        requests: {cpu: 100m}
    containers:
    - name: c
      image: busybox:1.36
      command: ["sleep", "1000"]
      resources:
        limits: {cpu: 250m, memory: 64Mi}
"#;

#[test]
fn apiserver_and_agent_agree_on_the_qos_class() {
    let Some(node) = TestNode::all_in_one() else {
        return;
    };
    let out = node.kubectl_stdin(33, &["create", "-f", "-", "-o", "json"], Some(PODS));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // One JSON document per created pod, as the apiserver answered the create.
    let created: Vec<Value> = serde_json::Deserializer::from_str(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let at_creation = |name: &str| {
        created
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .map(|p| p["status"]["qosClass"].clone())
            .unwrap()
    };
    for (name, want) in [
        ("spelled", "Guaranteed"),
        ("init-guaranteed", "Guaranteed"),
        ("init-burstable", "Burstable"),
    ] {
        assert_eq!(at_creation(name), want, "{name}: the apiserver's class");
        // The pod as the node runs it (its own API on the unix socket).
        let running = node.wait_for(
            &format!("{name} running on the node"),
            std::time::Duration::from_secs(30),
            || {
                node.pods()
                    .into_iter()
                    .find(|p| p["metadata"]["name"] == name && p["status"]["phase"] == "Running")
            },
        );
        assert_eq!(
            running["status"]["qosClass"], want,
            "{name}: the class the node computed"
        );
        let stored = node.wait_pod(name, "the agent's status reported", |p| {
            p["status"]["phase"] == "Running"
        });
        assert_eq!(stored["status"]["qosClass"], want, "{name}: as reported");
    }
}
