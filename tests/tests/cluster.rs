//! End-to-end: podlet as a node of a cluster. The all-in-one node (control plane in-process)
//! runs inside a network namespace made by the test, and the real kubectl talks to it there.

use std::time::Duration;

use podlet_e2e::{privileged, TestNode, POD_CIDR};
use serde_json::Value;

fn all_in_one() -> Option<TestNode> {
    if !privileged() {
        return None;
    }
    let mut node = TestNode::with_busybox();
    node.cluster = true;
    node.start_agent();
    Some(node)
}

fn get_json(node: &TestNode, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = node.kubectl(33, &a);
    (out.code == 0).then(|| serde_json::from_str(&out.stdout).ok())?
}

fn wait_pod(node: &TestNode, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    node.wait_for(what, Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(100));
        get_json(node, &["pod", name]).filter(&ok)
    })
}

/// The pod as the node itself reports it (its API on the unix socket).
fn local(node: &TestNode, name: &str) -> Option<Value> {
    node.pods()
        .into_iter()
        .find(|p| p["metadata"]["name"] == name)
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

const STATIC: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    command: [\"sleep\", \"1000\"]\n";

#[test]
fn all_in_one_node_runs_kubectl_pods_and_reports_status() {
    let Some(node) = all_in_one() else { return };

    // The node registers and is Ready, with its capacity and identity.
    let n = node.wait_for("the node to be Ready", Duration::from_secs(30), || {
        get_json(&node, &["node", "e2e"]).filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    });
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(n["status"]["capacity"]["cpu"], cpus.to_string());
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "e2e");
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert!(n["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("podlet://"));
    assert_eq!(
        n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        10250
    );
    assert_eq!(n["spec"]["podCIDR"], POD_CIDR);
    let out = node.kubectl(27, &["get", "nodes"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("e2e") && l.contains(" Ready")),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let lease = get_json(&node, &["lease", "-n", "kube-node-lease", "e2e"]).expect("node lease");
    assert_eq!(lease["spec"]["holderIdentity"], "e2e");

    // kubectl run (1.33 and 1.27): scheduled here, Running with a pod IP, statuses as the
    // kubelet reports them.
    for (minor, name) in [(33, "one"), (27, "two")] {
        let out = node.kubectl(
            minor,
            &[
                "run",
                name,
                "--image=busybox",
                "--",
                "sh",
                "-c",
                "echo hello from $HOSTNAME; exec sleep 1000",
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    for name in ["one", "two"] {
        let p = wait_pod(&node, name, "pod Running with an IP", |p| {
            phase(p) == "Running" && p["status"]["podIP"].is_string()
        });
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(
            ip.starts_with(POD_CIDR.trim_end_matches("0/24")),
            "pod IP {ip} outside {POD_CIDR}"
        );
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert!(p["status"]["startTime"].is_string());
        let cs = &p["status"]["containerStatuses"][0];
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert!(cs["containerID"].as_str().unwrap().starts_with("podlet://"));
        assert!(cs["state"]["running"]["startedAt"].is_string());
        let types: Vec<&str> = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "True")
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        for t in [
            "PodScheduled",
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
        ] {
            assert!(types.contains(&t), "{t} missing from {types:?}");
        }
    }
    let wide = node.kubectl(33, &["get", "pods", "-o", "wide"]);
    assert!(
        wide.stdout
            .lines()
            .filter(|l| l.contains("Running") && l.contains(" e2e "))
            .count()
            == 2,
        "{}",
        wide.stdout
    );

    // Events as the kubelet records them.
    let described = node.wait_for("Started event", Duration::from_secs(20), || {
        let d = node.kubectl(33, &["describe", "pod", "one"]);
        d.stdout.contains("Started").then_some(d.stdout)
    });
    assert!(
        described.contains("Pulled") && described.contains("kubelet"),
        "{described}"
    );

    // A static pod shows up as a mirror pod, owned by the Node; deleting the mirror brings it
    // back, the static pod itself untouched.
    node.write_manifest("web.yaml", STATIC);
    let m = wait_pod(&node, "web-e2e", "the mirror pod Running", |p| {
        phase(p) == "Running"
    });
    assert!(m["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string());
    assert_eq!(m["metadata"]["ownerReferences"][0]["kind"], "Node");
    let local_uid = node.pod("web").unwrap()["metadata"]["uid"].clone();
    let out = node.kubectl(33, &["delete", "pod", "web-e2e"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = wait_pod(&node, "web-e2e", "the mirror pod recreated", |p| {
        p["metadata"]["uid"] != m["metadata"]["uid"] && phase(p) == "Running"
    });
    assert!(again["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(node.pod("web").unwrap()["metadata"]["uid"], local_uid);
    node.remove_manifest("web.yaml");
    node.wait_for("the mirror pod gone", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(100));
        let out = node.kubectl(33, &["get", "pod", "web-e2e"]);
        out.stderr.contains("NotFound").then_some(())
    });

    // kubectl delete waits for the node to confirm; nothing of the pod is left.
    let one = get_json(&node, &["pod", "one"]).unwrap();
    let uid = one["metadata"]["uid"].as_str().unwrap().to_string();
    let out = node.kubectl(33, &["delete", "pod", "one", "--grace-period=1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(local(&node, "one").is_none(), "the node still has the pod");
    assert!(!node.path(&format!("run/pods/{uid}")).exists());
    assert!(!node.path(&format!("root/pods/{uid}")).exists());
}
