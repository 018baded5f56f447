//! The TTL-after-finished controller against the in-process apiserver.

use std::time::Duration;

use kube::api::PostParams;
use serde_json::json;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

async fn finished_job(api: &Api<Job>, name: &str, ttl: Option<i32>) {
    let job: Job = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "ttlSecondsAfterFinished": ttl, "suspend": true,
        "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    let mut made = api.create(&PostParams::default(), &job).await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    made.status = Some(
        serde_json::from_value(json!({"conditions": [{"type": "Complete", "status": "True",
            "lastTransitionTime": now, "lastProbeTime": now}], "completionTime": now, "startTime": now}))
        .unwrap(),
    );
    api.replace_status(name, &PostParams::default(), &made)
        .await
        .unwrap();
}

#[tokio::test]
async fn finished_jobs_go_after_their_ttl_in_the_foreground() {
    let c = Cluster::new().await;
    let api: Api<Job> = Api::namespaced(c.admin(), "default");
    let _ttl = Task::spawn(run(c.client(CONTROLLER_MANAGER_USER, &[])));
    let created = std::time::Instant::now();
    finished_job(&api, "short", Some(2)).await;
    finished_job(&api, "kept", None).await;
    let deleting = eventually("the job deleted", Duration::from_secs(15), || async {
        api.get_opt("short")
            .await
            .unwrap()
            .and_then(|j| j.metadata.deletion_timestamp.is_some().then_some(j))
    })
    .await;
    // Times are whole seconds: the finish may look up to 1 s earlier than it was.
    assert!(created.elapsed() >= Duration::from_secs(1));
    assert!(
        deleting
            .finalizers()
            .iter()
            .any(|f| f == "foregroundDeletion"),
        "foreground propagation: {:?}",
        deleting.finalizers()
    );
    let kept = api.get("kept").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
}
