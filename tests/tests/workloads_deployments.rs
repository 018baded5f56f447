//! End-to-end: Deployments on the all-in-one node, driven by the real kubectl (1.27 and
//! 1.33) as a user would: rollouts within their surge and unavailability bounds, history,
//! undo, restart, pause and resume, scaling, Recreate, and a progress deadline.

use std::time::{Duration, Instant};

use podlet_e2e::apiserver::ok;
use podlet_e2e::kube::{apply, condition, items, json, node, running, wait};
use serde_json::Value;

const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers:\n      - {name: c, image: busybox:1.36, command: [sleep, '100000']}\n";

#[test]
fn deployments_roll_out_scale_and_undo_as_kubectl_expects() {
    let Some(node) = node() else { return };
    apply(&node, WEB);
    let web_pods = || items(&json(&node, &["pods", "-l", "app=web"]));
    wait(&node, "3 web pods Running", 90, || {
        (running(&web_pods()) == 3).then_some(())
    });
    ok(
        &node.kubectl(27, &["rollout", "status", "deploy/web", "--timeout=60s"]),
        "rollout status",
    );
    let rs = items(&json(&node, &["rs", "-l", "app=web"]));
    assert_eq!(rs.len(), 1, "{rs:?}");
    let hash = rs[0]["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rs[0]["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(
        rs[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let d = json(&node, &["deploy", "web"]);
    assert_eq!(
        condition(&d, "Available")["reason"],
        "MinimumReplicasAvailable",
        "{d}"
    );
    assert_eq!(
        condition(&d, "Progressing")["reason"],
        "NewReplicaSetAvailable",
        "{d}"
    );

    // A deleted pod is replaced.
    let victim = web_pods()[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        &node.kubectl(33, &["delete", "pod", &victim, "--wait=false"]),
        "delete pod",
    );
    wait(&node, "the pod replaced", 60, || {
        let pods = web_pods();
        (running(&pods) == 3
            && pods
                .iter()
                .all(|p| p["metadata"]["name"] != victim.as_str()))
        .then_some(())
    });

    // A rolling update stays within maxSurge (1 of 3, rounded up) and maxUnavailable (0).
    ok(
        &node.kubectl(33, &["set", "env", "deploy/web", "STEP=2"]),
        "set env",
    );
    let start = Instant::now();
    loop {
        let d = json(&node, &["deploy", "web"]);
        let pods: Vec<Value> = web_pods()
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        assert!(
            pods.len() <= 4,
            "more than replicas + maxSurge pods: {}",
            pods.len()
        );
        if d["status"]["observedGeneration"] == d["metadata"]["generation"] {
            let available = d["status"]["availableReplicas"].as_i64().unwrap_or(0);
            assert!(
                available >= 3,
                "fewer than replicas - maxUnavailable available: {}",
                d["status"]
            );
        }
        if d["status"]["updatedReplicas"] == 3
            && d["status"]["replicas"] == 3
            && d["status"]["availableReplicas"] == 3
            && d["status"]["observedGeneration"] == d["metadata"]["generation"]
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "rollout stuck: {}",
            d["status"]
        );
    }
    ok(
        &node.kubectl(33, &["rollout", "status", "deploy/web", "--timeout=60s"]),
        "rollout status",
    );
    let history = ok(
        &node.kubectl(27, &["rollout", "history", "deploy/web"]),
        "history",
    );
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // undo goes back to revision 1's template (as revision 3); restart adds revision 4.
    ok(
        &node.kubectl(33, &["rollout", "undo", "deploy/web"]),
        "undo",
    );
    ok(
        &node.kubectl(33, &["rollout", "status", "deploy/web", "--timeout=90s"]),
        "rollout status after undo",
    );
    let d = json(&node, &["deploy", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3",
        "{d}"
    );
    assert!(
        d["spec"]["template"]["spec"]["containers"][0]["env"].is_null(),
        "{d}"
    );
    let old = json(&node, &["rs", &format!("web-{hash}")]);
    assert_eq!(
        old["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        old["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    ok(
        &node.kubectl(27, &["rollout", "restart", "deploy/web"]),
        "restart",
    );
    ok(
        &node.kubectl(33, &["rollout", "status", "deploy/web", "--timeout=90s"]),
        "rollout status after restart",
    );
    let d = json(&node, &["deploy", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "4"
    );
    assert!(
        !d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_null()
    );

    // pause and resume.
    ok(
        &node.kubectl(33, &["rollout", "pause", "deploy/web"]),
        "pause",
    );
    wait(&node, "DeploymentPaused", 30, || {
        (condition(&json(&node, &["deploy", "web"]), "Progressing")["reason"] == "DeploymentPaused")
            .then_some(())
    });
    ok(
        &node.kubectl(33, &["rollout", "resume", "deploy/web"]),
        "resume",
    );
    wait(&node, "DeploymentResumed", 30, || {
        let r = condition(&json(&node, &["deploy", "web"]), "Progressing")["reason"].clone();
        (r == "DeploymentResumed" || r == "NewReplicaSetAvailable").then_some(())
    });

    // scale up and down.
    ok(
        &node.kubectl(27, &["scale", "deploy/web", "--replicas=5"]),
        "scale 5",
    );
    wait(&node, "5 pods", 60, || {
        (running(&web_pods()) == 5).then_some(())
    });
    ok(
        &node.kubectl(33, &["scale", "deploy/web", "--replicas=1"]),
        "scale 1",
    );
    wait(&node, "1 pod", 60, || {
        let pods = web_pods();
        (pods.len() == 1 && running(&pods) == 1).then_some(())
    });

    // A new template that never becomes ready: ProgressDeadlineExceeded.
    let patch = r#"{"spec":{"progressDeadlineSeconds":5,"template":{"spec":{"containers":[{"name":"c","image":"busybox:1.36","command":["false"]}]}}}}"#;
    ok(
        &node.kubectl(33, &["patch", "deploy/web", "--type=merge", "-p", patch]),
        "patch",
    );
    wait(&node, "ProgressDeadlineExceeded", 60, || {
        let d = json(&node, &["deploy", "web"]);
        let c = condition(&d, "Progressing");
        (c["reason"] == "ProgressDeadlineExceeded" && c["status"] == "False").then_some(())
    });
    let out = node.kubectl(33, &["rollout", "status", "deploy/web", "--timeout=10s"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("exceeded its progress deadline"),
        "{}",
        out.stderr
    );
    ok(&node.kubectl(33, &["delete", "deploy", "web"]), "delete");
    wait(&node, "web's pods gone", 60, || {
        web_pods().is_empty().then_some(())
    });
}

#[test]
fn recreate_deployments_stop_the_old_pods_first() {
    let Some(node) = node() else { return };
    apply(
        &node,
        &WEB.replace("name: web}", "name: re}")
            .replace("app: web", "app: re")
            .replace("replicas: 3", "replicas: 2\n  strategy: {type: Recreate}"),
    );
    let pods = || items(&json(&node, &["pods", "-l", "app=re"]));
    wait(&node, "2 pods", 90, || {
        (running(&pods()) == 2).then_some(())
    });
    let old: Vec<String> = pods()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    ok(
        &node.kubectl(33, &["set", "env", "deploy/re", "STEP=2"]),
        "set env",
    );
    // No new pod exists while an old one is still there.
    let start = Instant::now();
    loop {
        let now = pods();
        let olds = now
            .iter()
            .filter(|p| old.contains(&p["metadata"]["name"].as_str().unwrap().to_string()))
            .count();
        assert!(
            olds == 0 || olds == now.len(),
            "old and new pods together: {now:?}"
        );
        if olds == 0 && running(&now) == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "recreate stuck");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&node.kubectl(33, &["delete", "deploy", "re"]), "delete");
}
