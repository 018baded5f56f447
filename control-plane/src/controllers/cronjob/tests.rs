//! The CronJob controller against the in-process apiserver, on a clock the test moves.

use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{json, Value};

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn missed_start_times_are_counted_and_the_latest_taken() {
    let sched = k8s_rules::cron::parse("*/10 * * * *").unwrap();
    let mut cj = CronJob::default();
    cj.metadata.creation_timestamp = Some(Time("2024-01-01T00:00:00Z".parse().unwrap()));
    let at = |s: &str| s.parse::<Timestamp>().unwrap();
    let utc = TimeZone::UTC;
    let (_, t, m) = most_recent(&cj, at("2024-01-01T00:05:00Z"), &sched, &utc, true).unwrap();
    assert_eq!((t, m), (None, Missed::None));
    let (_, t, m) = most_recent(&cj, at("2024-01-01T00:15:00Z"), &sched, &utc, true).unwrap();
    assert_eq!((t, m), (Some(at("2024-01-01T00:10:00Z")), Missed::None));
    let (_, t, m) = most_recent(&cj, at("2024-01-01T00:45:00Z"), &sched, &utc, true).unwrap();
    assert_eq!((t, m), (Some(at("2024-01-01T00:40:00Z")), Missed::Few));
    let (_, t, m) = most_recent(&cj, at("2024-01-02T00:00:00Z"), &sched, &utc, true).unwrap();
    assert_eq!(
        (t, m),
        (Some(at("2024-01-02T00:00:00Z")), Missed::Many(144))
    );
    // A starting deadline bounds how far back it looks.
    cj.spec = Some(
        serde_json::from_value(
            json!({"schedule": "*/10 * * * *", "startingDeadlineSeconds": 300,
        "jobTemplate": {}}),
        )
        .unwrap(),
    );
    let (_, t, m) = most_recent(&cj, at("2024-01-02T00:03:00Z"), &sched, &utc, true).unwrap();
    assert_eq!((t, m), (Some(at("2024-01-02T00:00:00Z")), Missed::None));
    assert_eq!(
        next_in(&cj, at("2024-01-02T00:03:00Z"), &sched, &utc),
        Duration::from_secs(420) + NEXT_SCHEDULE_DELTA
    );
    let ny = k8s_rules::cron::zone("America/New_York").unwrap();
    assert_eq!(
        rfc3339_in(at("2024-01-02T14:00:00Z"), &ny),
        "2024-01-02T09:00:00-05:00"
    );
    assert_eq!(
        rfc3339_in(at("2024-01-02T14:00:00Z"), &utc),
        "2024-01-02T14:00:00Z"
    );
}

struct Setup {
    _c: Cluster,
    cjs: Api<CronJob>,
    jobs: Api<Job>,
    events: Api<Event>,
    clock: Arc<AtomicI64>,
    _loop: Task,
}

impl Setup {
    async fn new() -> Setup {
        let c = Cluster::new().await;
        let clock = Arc::new(AtomicI64::new(Timestamp::now().as_second()));
        let read = clock.clone();
        let now: Clock =
            Arc::new(move || Timestamp::from_second(read.load(Ordering::SeqCst)).unwrap());
        let _loop = Task::spawn(run_with(c.client(CONTROLLER_MANAGER_USER, &[]), now));
        let admin = c.admin();
        Setup {
            cjs: Api::namespaced(admin.clone(), "default"),
            jobs: Api::namespaced(admin.clone(), "default"),
            events: Api::namespaced(admin, "default"),
            clock,
            _c: c,
            _loop,
        }
    }

    async fn cronjob(&self, name: &str, extra: Value) -> CronJob {
        let mut spec = json!({"schedule": "* * * * *", "jobTemplate": {"metadata": {"labels": {"from": name}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let cj = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        self.cjs.create(&PostParams::default(), &cj).await.unwrap()
    }

    /// Moves the clock on and makes the controller look (as the requeue at the schedule
    /// time would).
    async fn advance(&self, name: &str, secs: i64) {
        let t = self.clock.fetch_add(secs, Ordering::SeqCst) + secs;
        let patch = json!({"metadata": {"annotations": {"test/now": t.to_string()}}});
        self.cjs
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn jobs_of(&self, name: &str) -> Vec<Job> {
        let lp = ListParams::default().labels(&format!("from={name}"));
        let mut j: Vec<Job> = self.jobs.list(&lp).await.unwrap().items;
        j.retain(|j| j.metadata.deletion_timestamp.is_none());
        j.sort_by_key(|j| j.name_any());
        j
    }

    async fn wait_jobs(&self, name: &str, n: usize) -> Vec<Job> {
        eventually(&format!("{n} jobs of {name}"), WAIT, || async {
            let j = self.jobs_of(name).await;
            (j.len() == n).then_some(j)
        })
        .await
    }

    async fn event(&self, reason: &str) -> Event {
        eventually(&format!("event {reason}"), WAIT, || async {
            let list = self
                .events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items;
            list.into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await
    }

    async fn finish(&self, job: &Job, ty: &str) {
        let mut j = self.jobs.get(&job.name_any()).await.unwrap();
        let now = Timestamp::now().to_string();
        j.status = Some(serde_json::from_value(json!({"conditions": [{"type": ty, "status": "True",
            "lastTransitionTime": now}], "startTime": now, "completionTime": if ty == "Complete" { json!(now) } else { Value::Null }})).unwrap());
        self.jobs
            .replace_status(&j.name_any(), &PostParams::default(), &j)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn jobs_are_made_at_schedule_times_and_forbid_waits_for_the_running_one() {
    let s = Setup::new().await;
    let cj = s
        .cronjob("tick", json!({"concurrencyPolicy": "Forbid"}))
        .await;
    s.advance("tick", 60).await;
    let jobs = s.wait_jobs("tick", 1).await;
    let job = &jobs[0];
    let created = cj.metadata.creation_timestamp.unwrap().0;
    let first = sched_after(created);
    assert_eq!(job.name_any(), format!("tick-{}", first.as_second() / 60));
    assert_eq!(
        job.annotations()[SCHEDULED_TIMESTAMP],
        rfc3339_in(first, &TimeZone::UTC)
    );
    assert_eq!(
        job.owner_references()[0].uid,
        cj.metadata.uid.clone().unwrap()
    );
    s.event("SuccessfulCreate").await;
    let st = eventually("status.active", WAIT, || async {
        let st = s.cjs.get("tick").await.unwrap().status?;
        (st.active.as_ref()?.len() == 1).then_some(st)
    })
    .await;
    assert_eq!(st.last_schedule_time.unwrap().0, first);

    // The next minute, with the job still running: nothing new.
    s.advance("tick", 60).await;
    s.event("JobAlreadyActive").await;
    assert_eq!(s.jobs_of("tick").await.len(), 1);

    // Once it completed, the next start makes a job.
    s.finish(job, "Complete").await;
    s.event("SawCompletedJob").await;
    s.advance("tick", 60).await;
    s.wait_jobs("tick", 2).await;
    let st = s.cjs.get("tick").await.unwrap().status.unwrap();
    assert!(st.last_successful_time.is_some());
}

/// The first whole minute after `t`.
fn sched_after(t: Timestamp) -> Timestamp {
    k8s_rules::cron::parse("* * * * *")
        .unwrap()
        .next(t, &TimeZone::UTC)
        .unwrap()
}

#[tokio::test]
async fn replace_deletes_the_running_job_for_the_next() {
    let s = Setup::new().await;
    s.cronjob("swap", json!({"concurrencyPolicy": "Replace"}))
        .await;
    s.advance("swap", 60).await;
    let first = s.wait_jobs("swap", 1).await.remove(0);
    eventually("the job in status.active", WAIT, || async {
        let st = s.cjs.get("swap").await.unwrap().status?;
        (st.active?.len() == 1).then_some(())
    })
    .await;
    s.advance("swap", 60).await;
    let second = eventually("the replacement", WAIT, || async {
        let j = s.jobs_of("swap").await;
        (j.len() == 1 && j[0].name_any() != first.name_any()).then(|| j[0].clone())
    })
    .await;
    assert_ne!(second.name_any(), first.name_any());
    s.event("SuccessfulDelete").await;
}

#[tokio::test]
async fn too_many_missed_start_times_are_reported() {
    let s = Setup::new().await;
    s.cronjob("late", json!({})).await;
    s.advance("late", 200 * 60).await;
    let ev = s.event("TooManyMissedTimes").await;
    assert!(ev
        .message
        .unwrap()
        .starts_with("too many missed start times: "));
    // Only the latest missed time runs.
    assert_eq!(s.wait_jobs("late", 1).await.len(), 1);
}

#[tokio::test]
async fn finished_jobs_beyond_the_history_limits_are_deleted_oldest_first() {
    let s = Setup::new().await;
    let cj = s
        .cronjob(
            "hist",
            json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1, "suspend": true}),
        )
        .await;
    let mut names = Vec::new();
    for (i, ty) in ["Complete", "Complete", "Complete", "Failed", "Failed"]
        .iter()
        .enumerate()
    {
        let job: Job = serde_json::from_value(json!({"metadata": {"name": format!("hist-{i}"), "labels": {"from": "hist"},
            "ownerReferences": [controller_ref(&cj)]},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
        .unwrap();
        let j = s.jobs.create(&PostParams::default(), &job).await.unwrap();
        // Start times one second apart, in creation order.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s.finish(&j, ty).await;
        names.push(j.name_any());
    }
    let left = eventually("history trimmed", WAIT, || async {
        let j = s.jobs_of("hist").await;
        (j.len() == 2).then_some(j)
    })
    .await;
    let left: Vec<String> = left.iter().map(|j| j.name_any()).collect();
    assert_eq!(left, ["hist-2", "hist-4"], "the newest of each kind stays");
}
