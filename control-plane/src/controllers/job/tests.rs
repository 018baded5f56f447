//! The Job controller against the in-process apiserver, as `system:kube-controller-manager`.
//! There are no kubelets: a test finishes a pod by writing `pods/status` as a kubelet would.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    _c: Cluster,
    jobs: Api<Job>,
    pods: Api<Pod>,
    events: Api<Event>,
    _loop: Task,
}

impl Setup {
    async fn new() -> Setup {
        // The rule is the same; the tests wait 200 ms instead of 10 s.
        Setup::with_backoff(Duration::from_millis(200)).await
    }

    async fn with_backoff(backoff_base: Duration) -> Setup {
        let c = Cluster::new().await;
        let admin = c.admin();
        let opts = Options {
            backoff_base,
            ..Options::default()
        };
        let _loop = Task::spawn(run_with(c.client(CONTROLLER_MANAGER_USER, &[]), opts));
        Setup {
            jobs: Api::namespaced(admin.clone(), "default"),
            pods: Api::namespaced(admin.clone(), "default"),
            events: Api::namespaced(admin, "default"),
            _c: c,
            _loop,
        }
    }

    async fn job(&self, name: &str, spec: Value) -> Job {
        let mut spec = spec;
        spec["template"] = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}});
        let job =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        self.jobs
            .create(&PostParams::default(), &job)
            .await
            .unwrap()
    }

    async fn pods_of(&self, job: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
        self.pods.list(&lp).await.unwrap().items
    }

    async fn active(&self, job: &str) -> Vec<Pod> {
        self.pods_of(job)
            .await
            .into_iter()
            .filter(k8s_rules::pods::is_active)
            .collect()
    }

    /// Waits for exactly `n` active pods of `job`.
    async fn wait_active(&self, job: &str, n: usize) -> Vec<Pod> {
        eventually(&format!("{n} active pods of {job}"), WAIT, || async {
            let a = self.active(job).await;
            (a.len() == n).then_some(a)
        })
        .await
    }

    async fn finish(&self, pod: &Pod, phase: &str, exit_code: i32) {
        let status = json!({"status": {"phase": phase, "containerStatuses": [{
            "name": "c", "image": "busybox:1.36", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "finishedAt": jiff::Timestamp::now().to_string()}}}]}});
        self.pods
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
            .unwrap();
    }

    async fn condition(&self, job: &str, ty: &str) -> JobCondition {
        eventually(&format!("{job} {ty}"), WAIT, || async {
            sync::condition_true(&self.jobs.get(job).await.unwrap(), ty)
        })
        .await
    }

    async fn event(&self, reason: &str) -> Event {
        eventually(&format!("event {reason}"), WAIT, || async {
            self.events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await
    }
}

use k8s_openapi::api::batch::v1::JobCondition;

#[tokio::test]
async fn a_job_runs_its_completions_never_more_than_parallelism_at_once() {
    let s = Setup::new().await;
    let job = s
        .job("work", json!({"completions": 3, "parallelism": 2}))
        .await;
    let sel = &job
        .spec
        .as_ref()
        .unwrap()
        .selector
        .as_ref()
        .unwrap()
        .match_labels;
    assert_eq!(
        sel.as_ref().unwrap()["batch.kubernetes.io/controller-uid"],
        job.metadata.uid.clone().unwrap()
    );
    let mut done: i32 = 0;
    while done < 3 {
        let want = (3 - done).min(2) as usize;
        let active = s.wait_active("work", want).await;
        for p in &active {
            assert!(p.name_any().starts_with("work-") && p.name_any().len() == "work-".len() + 5);
            assert!(
                pods::has_finalizer(p),
                "{} carries the tracking finalizer",
                p.name_any()
            );
        }
        s.finish(&active[0], "Succeeded", 0).await;
        done += 1;
        // The count moves before the next check, so a third pod would be seen.
        eventually("the success counted", WAIT, || async {
            let j = s.jobs.get("work").await.unwrap();
            (j.status.unwrap().succeeded.unwrap_or(0) == done).then_some(())
        })
        .await;
        assert!(s.active("work").await.len() <= 2);
    }
    let complete = s.condition("work", "Complete").await;
    assert_eq!(complete.reason.as_deref(), Some("CompletionsReached"));
    let j = s.jobs.get("work").await.unwrap();
    let st = j.status.unwrap();
    assert_eq!(st.succeeded, Some(3));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert!(
        sync::condition_true(&s.jobs.get("work").await.unwrap(), "SuccessCriteriaMet").is_some()
    );
    let unc = st.uncounted_terminated_pods.unwrap_or_default();
    assert!(unc.succeeded.unwrap_or_default().is_empty());
    // Every pod was counted, so none keeps the finalizer.
    eventually("finalizers removed", WAIT, || async {
        s.pods_of("work")
            .await
            .iter()
            .all(|p| !pods::has_finalizer(p))
            .then_some(())
    })
    .await;
    assert_eq!(s.pods_of("work").await.len(), 3);
    s.event("Completed").await;
}

#[tokio::test]
async fn an_indexed_job_runs_each_index_once() {
    let s = Setup::new().await;
    s.job(
        "ix",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
    )
    .await;
    let active = s.wait_active("ix", 3).await;
    let mut indexes: Vec<String> = active
        .iter()
        .map(|p| {
            let ix = p.annotations()[COMPLETION_INDEX].clone();
            assert_eq!(p.labels()[COMPLETION_INDEX], ix);
            assert!(p.name_any().starts_with(&format!("ix-{ix}-")));
            let spec = p.spec.as_ref().unwrap();
            assert_eq!(spec.hostname.as_deref(), Some(format!("ix-{ix}").as_str()));
            let env = spec.containers[0].env.as_ref().unwrap();
            let var = env
                .iter()
                .find(|e| e.name == "JOB_COMPLETION_INDEX")
                .unwrap();
            let field = &var
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path;
            assert_eq!(
                field,
                "metadata.labels['batch.kubernetes.io/job-completion-index']"
            );
            ix
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    for p in &active {
        s.finish(p, "Succeeded", 0).await;
    }
    s.condition("ix", "Complete").await;
    let st = s.jobs.get("ix").await.unwrap().status.unwrap();
    assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(st.succeeded, Some(3));
}

#[tokio::test]
async fn failures_back_off_then_fail_the_job_past_its_backoff_limit() {
    let s = Setup::new().await;
    s.job("flaky", json!({"backoffLimit": 1})).await;
    let first = s.wait_active("flaky", 1).await.remove(0);
    s.finish(&first, "Failed", 1).await;
    let second = eventually("a replacement", WAIT, || async {
        s.active("flaky")
            .await
            .into_iter()
            .find(|p| p.name_any() != first.name_any())
    })
    .await;
    s.finish(&second, "Failed", 1).await;
    let failed = s.condition("flaky", "Failed").await;
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    let j = s.jobs.get("flaky").await.unwrap();
    assert!(
        sync::condition_true(&j, "FailureTarget").is_some(),
        "the interim condition came first"
    );
    assert_eq!(j.status.unwrap().failed, Some(2));
    let ev = s.event("BackoffLimitExceeded").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(s.active("flaky").await.is_empty());
}

#[tokio::test]
async fn the_back_off_holds_the_replacement() {
    // Pod times are whole seconds (metav1.Time), so a failure may look up to 1 s older than
    // it is: the delays here are long enough to show through that.
    let s = Setup::with_backoff(Duration::from_millis(1500)).await;
    s.job("slow", json!({"backoffLimit": 3})).await;
    let first = s.wait_active("slow", 1).await.remove(0);
    let failed_at = std::time::Instant::now();
    s.finish(&first, "Failed", 1).await;
    let second = eventually("a replacement", WAIT, || async {
        s.active("slow")
            .await
            .into_iter()
            .find(|p| p.name_any() != first.name_any())
    })
    .await;
    assert!(
        failed_at.elapsed() >= Duration::from_millis(500),
        "replaced after the back-off"
    );
    s.finish(&second, "Failed", 1).await;
    let third_at = std::time::Instant::now();
    eventually("a second replacement", WAIT, || async {
        (s.active("slow").await.len() == 1).then_some(())
    })
    .await;
    assert!(
        third_at.elapsed() >= Duration::from_millis(2000),
        "the back-off doubled"
    );
}

#[tokio::test]
async fn a_job_past_its_active_deadline_fails() {
    let s = Setup::new().await;
    s.job(
        "late",
        json!({"activeDeadlineSeconds": 1, "parallelism": 2, "completions": 4}),
    )
    .await;
    // The deadline may pass before a poll sees both pods active (a slow CI machine), so the
    // pods' existence is read from the status afterwards: both were started and count as failed.
    let failed = s.condition("late", "Failed").await;
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
    assert!(s.active("late").await.is_empty());
    let status = s.jobs.get("late").await.unwrap().status.unwrap();
    assert_eq!((status.active.unwrap_or(0), status.failed), (0, Some(2)));
    s.event("DeadlineExceeded").await;
}

#[tokio::test]
async fn suspending_deletes_active_pods_and_resuming_recreates_them() {
    let s = Setup::new().await;
    s.job("nap", json!({"parallelism": 2, "completions": 2}))
        .await;
    s.wait_active("nap", 2).await;
    let suspend = |on: bool| Patch::Merge(json!({"spec": {"suspend": on}}));
    s.jobs
        .patch("nap", &PatchParams::default(), &suspend(true))
        .await
        .unwrap();
    let c = s.condition("nap", "Suspended").await;
    assert_eq!(c.reason.as_deref(), Some("JobSuspended"));
    eventually("pods gone", WAIT, || async {
        s.pods_of("nap").await.is_empty().then_some(())
    })
    .await;
    s.event("Suspended").await;
    s.jobs
        .patch("nap", &PatchParams::default(), &suspend(false))
        .await
        .unwrap();
    s.wait_active("nap", 2).await;
    s.event("Resumed").await;
    let j = s.jobs.get("nap").await.unwrap();
    let c = j
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Suspended")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("JobResumed"))
    );
}

#[tokio::test]
async fn a_pod_failure_policy_fails_the_job_on_an_exit_code() {
    let s = Setup::new().await;
    s.job("strict", json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [7]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
    ]}})).await;
    let first = s.wait_active("strict", 1).await.remove(0);
    // Ignored: replaced, not counted.
    s.finish(&first, "Failed", 7).await;
    let second = eventually("a replacement", WAIT, || async {
        s.active("strict")
            .await
            .into_iter()
            .find(|p| p.name_any() != first.name_any())
    })
    .await;
    assert_eq!(
        s.jobs
            .get("strict")
            .await
            .unwrap()
            .status
            .unwrap()
            .failed
            .unwrap_or(0),
        0
    );
    s.finish(&second, "Failed", 42).await;
    let failed = s.condition("strict", "Failed").await;
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    let msg = format!(
        "Container c for pod default/{} failed with exit code 42 matching FailJob rule at index 1",
        second.name_any()
    );
    assert_eq!(failed.message.as_deref(), Some(msg.as_str()));
    let target =
        sync::condition_true(&s.jobs.get("strict").await.unwrap(), "FailureTarget").unwrap();
    assert_eq!(target.message.as_deref(), Some(msg.as_str()));
}

#[tokio::test]
async fn a_counted_pod_loses_its_finalizer_and_stays_counted_when_deleted() {
    let s = Setup::new().await;
    s.job("once", json!({"completions": 2, "parallelism": 1}))
        .await;
    let first = s.wait_active("once", 1).await.remove(0);
    s.finish(&first, "Succeeded", 0).await;
    eventually("the finalizer removed", WAIT, || async {
        let p = s.pods.get(&first.name_any()).await.unwrap();
        (!pods::has_finalizer(&p)).then_some(())
    })
    .await;
    s.pods
        .delete(&first.name_any(), &Default::default())
        .await
        .unwrap();
    let second = s.wait_active("once", 1).await.remove(0);
    assert_eq!(
        s.jobs.get("once").await.unwrap().status.unwrap().succeeded,
        Some(1)
    );
    s.finish(&second, "Succeeded", 0).await;
    s.condition("once", "Complete").await;
    assert_eq!(
        s.jobs.get("once").await.unwrap().status.unwrap().succeeded,
        Some(2)
    );
}
