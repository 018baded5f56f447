//! PodGC against the in-process apiserver, with a short period and quarantine.

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;
use crate::controllers::endpointslice::tests::{manager, WAIT};
use crate::testing::cluster::{eventually, Cluster, Task};

const FAST: Timing = Timing {
    period: Duration::from_millis(200),
    quarantine: Duration::from_secs(1),
};

async fn pod(c: &Cluster, name: &str, node: Option<&str>, phase: &str, finalizers: &[&str]) {
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36"}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    let p: Pod = serde_json::from_value(
        json!({"metadata": {"name": name, "finalizers": finalizers}, "spec": spec}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

async fn names(c: &Cluster) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");
    let mut n: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn pods_of_nodes_gone_are_failed_and_deleted_after_the_quarantine() {
    let c = Cluster::new().await;
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "here"}})).unwrap();
    Api::<Node>::all(c.admin())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    pod(&c, "kept", Some("here"), "Running", &[]).await;
    pod(&c, "orphan", Some("gone"), "Running", &[]).await;
    // A finalizer keeps this one visible after its deletion.
    pod(&c, "held", Some("gone"), "Running", &["example.com/hold"]).await;
    let started = std::time::Instant::now();
    let _gc = Task::spawn(run_with(manager(&c), DEFAULT_THRESHOLD, FAST));
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");
    let held = eventually("the orphans deleted", WAIT, || async {
        let p = pods.get("held").await.unwrap();
        let orphan_gone = pods.get_opt("orphan").await.unwrap().is_none();
        (orphan_gone && p.metadata.deletion_timestamp.is_some()).then_some(p)
    })
    .await;
    assert!(
        started.elapsed() >= FAST.quarantine,
        "not before the quarantine"
    );
    let status = held.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let cond = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .unwrap();
    assert_eq!(
        (
            cond.status.as_str(),
            cond.reason.as_deref(),
            cond.message.as_deref()
        ),
        (
            "True",
            Some("DeletionByPodGC"),
            Some("PodGC: node no longer exists")
        )
    );
    assert!(pods.get_opt("kept").await.unwrap().is_some());
}

#[tokio::test]
async fn terminated_pods_beyond_the_threshold_go_oldest_first() {
    let c = Cluster::new().await;
    for (i, phase) in ["Succeeded", "Failed", "Succeeded", "Failed", "Succeeded"]
        .iter()
        .enumerate()
    {
        pod(&c, &format!("t{i}"), None, phase, &[]).await;
    }
    pod(&c, "running", None, "Running", &[]).await;
    let _gc = Task::spawn(run_with(manager(&c), 3, FAST));
    let left = eventually("two terminated pods deleted", WAIT, || async {
        let n = names(&c).await;
        (n.len() == 4).then_some(n)
    })
    .await;
    assert_eq!(left, ["running", "t2", "t3", "t4"]);
    // And no more than that.
    tokio::time::sleep(FAST.period * 3).await;
    assert_eq!(names(&c).await, ["running", "t2", "t3", "t4"]);
}
