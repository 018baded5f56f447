//! End-to-end: two control planes on one real etcd (Debian's etcd-server). One holds the
//! `kube-controller-manager` Lease and runs the controllers; killed (SIGKILL) in the middle of
//! a rolling update, the other takes the Lease over and finishes the rollout without creating
//! any pod twice. The node is hollow (a Node object with no agent); the test plays its kubelet
//! through the API: bound pods are reported Running and Ready, deleted ones are confirmed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use podlet_e2e::apiserver::{ok, ControlPlane};
use serde_json::{json, Value};

const HOLLOW: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"hollow","labels":{"kubernetes.io/hostname":"hollow"}},
 "status":{"capacity":{"cpu":"8","memory":"8Gi","pods":"110"},"allocatable":{"cpu":"8","memory":"8Gi","pods":"110"},
 "conditions":[{"type":"Ready","status":"True"}]}}"#;

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 4\n  minReadySeconds: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: c, image: busybox:1.36}\n";

fn get(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = cp.kubectl(33, &a);
    serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
}

fn holder(cp: &ControlPlane) -> String {
    get(
        cp,
        &["-n", "kube-system", "lease", "kube-controller-manager"],
    )["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn instance(cp: &ControlPlane) -> String {
    std::fs::read_to_string(cp.data_dir().join("instance-id"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The hollow node's kubelet, one pass: bound pods become Running and Ready, pods being
/// deleted are confirmed gone (grace 0), as a kubelet would report them.
fn kubelet_pass(cp: &ControlPlane, seen: &Mutex<BTreeSet<(String, String)>>) {
    for p in get(cp, &["pods"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let owner = p["metadata"]["ownerReferences"][0]["uid"]
            .as_str()
            .unwrap_or_default();
        seen.lock()
            .unwrap()
            .insert((owner.to_string(), name.to_string()));
        if p["spec"]["nodeName"] != "hollow" {
            continue;
        }
        if !p["metadata"]["deletionTimestamp"].is_null() {
            cp.kubectl(33, &["delete", "pod", name, "--grace-period=0", "--force"]);
        } else if p["status"]["phase"] != "Running" {
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let status = json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
            cp.kubectl(
                33,
                &[
                    "patch",
                    "pod",
                    name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status.to_string(),
                ],
            );
        }
    }
}

fn rolled_out(d: &Value) -> bool {
    let s = &d["status"];
    s["observedGeneration"] == d["metadata"]["generation"]
        && s["updatedReplicas"] == 4
        && s["availableReplicas"] == 4
        && s["replicas"] == 4
}

#[test]
fn a_killed_leader_hands_the_rollout_over_without_double_creation() {
    let Some(etcd) = podlet_control_plane::testing::EtcdServer::start() else {
        return;
    };
    let mut first = ControlPlane::start_with(&["--etcd-servers", &etcd.url()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder(&first).is_empty() {
        assert!(Instant::now() < deadline, "nobody leads:\n{}", first.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = ControlPlane::start_with(&["--etcd-servers", &etcd.url()]);
    let leading = holder(&second);
    assert!(
        leading.ends_with(&instance(&first)),
        "{leading} is not the first control plane"
    );

    ok(
        &second.kubectl_env(33, &["create", "-f", "-"], &[], Some(HOLLOW)),
        "node",
    );
    let stop = AtomicBool::new(false);
    // Every pod the hollow kubelet ever saw: (owner uid, name).
    let seen = Mutex::new(BTreeSet::new());
    let wait_for = |what: &str, secs: u64, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            if Instant::now() > deadline {
                let log = second.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out waiting for {what}\ndeployment: {}\nreplica sets: {}\npods: {}\nlease: {}\n--- the second control plane's log, newest first ---\n{}",
                    get(&second, &["deploy", "web"])["status"],
                    get(&second, &["rs"])["items"],
                    second.kubectl(33, &["get", "pods", "-o", "wide"]).stdout,
                    holder(&second),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                kubelet_pass(&second, &seen);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let run = || {
            wait_for("the default service account", 60, &|| {
                second.kubectl(33, &["get", "sa", "default"]).code == 0
            });
            ok(
                &second.kubectl_env(33, &["create", "-f", "-"], &[], Some(DEPLOYMENT)),
                "deployment",
            );
            wait_for("the first rollout", 90, &|| {
                rolled_out(&get(&second, &["deploy", "web"]))
            });
            ok(
                &second.kubectl(33, &["set", "env", "deploy/web", "STEP=2"]),
                "set env",
            );
            // Mid-rollout: the new ReplicaSet has pods, the old one still has some.
            wait_for("the rollout to be under way", 60, &|| {
                let rs = get(&second, &["rs", "-l", "app=web"]);
                let sets = rs["items"].as_array().cloned().unwrap_or_default();
                sets.len() == 2
                    && sets
                        .iter()
                        .all(|r| r["status"]["replicas"].as_i64().unwrap_or(0) > 0)
            });
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run();
            first.kill();
            wait_for("the rollout to finish under the new leader", 120, &|| {
                rolled_out(&get(&second, &["deploy", "web"]))
            });
        }));
        stop.store(true, Ordering::SeqCst);
        if let Err(e) = outcome {
            std::panic::resume_unwind(e);
        }
    });
    let now = holder(&second);
    assert!(
        now.ends_with(&instance(&second)),
        "the lease is held by {now}"
    );

    // No pod created twice: the new ReplicaSet's pods, every one the kubelet ever saw, are
    // exactly 4, and it deleted none (events may miss what the killed leader did last, so the
    // pods are counted, not its events).
    let d = get(&second, &["deploy", "web"]);
    let rs = get(&second, &["rs", "-l", "app=web"]);
    let new = rs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["spec"]["replicas"] == 4)
        .unwrap_or_else(|| panic!("no new ReplicaSet: {rs}\n{d}"));
    let uid = new["metadata"]["uid"].as_str().unwrap();
    let pods: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(owner, _)| owner == uid)
        .map(|(_, name)| name.clone())
        .collect();
    assert_eq!(pods.len(), 4, "{pods:?}");
    let name = new["metadata"]["name"].as_str().unwrap();
    let events = get(
        &second,
        &[
            "events",
            "--field-selector",
            &format!("involvedObject.name={name},reason=SuccessfulDelete"),
        ],
    );
    assert_eq!(
        events["items"].as_array().map(Vec::len),
        Some(0),
        "{events}"
    );
}
