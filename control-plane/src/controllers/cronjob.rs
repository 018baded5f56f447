//! The CronJob controller (`pkg/controller/cronjob/cronjob_controllerv2.go`, `utils.go`),
//! through the API: at each schedule time (in `timeZone`, else UTC) it makes the Job
//! `<cronjob>-<scheduled minutes since the epoch>` from the job template, honouring
//! `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds` and `suspend`;
//! it keeps `status.active`, `lastScheduleTime` and `lastSuccessfulTime`, deletes finished
//! Jobs beyond the history limits, and looks again at the next schedule time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_rules::cron::Schedule;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use super::events::Recorder;
use super::job::sync::{condition_true, finished};
use super::podcontrol::{api_message, controller_ref};
use crate::reconcile::Cache;
use crate::reconcile::{self, Result};

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Looked at again this long after a schedule time, so the time has passed.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    jobs: Cache<Job>,
    now: Clock,
}

/// How many start times were missed (`missedSchedules`).
#[derive(Debug, PartialEq, Eq)]
enum Missed {
    None,
    Few,
    Many(i64),
}

/// `mostRecentScheduleTime`: the earliest time looked from, the latest schedule time not
/// after `now` (if any), and how many were missed.
fn most_recent(
    cj: &CronJob,
    now: Timestamp,
    sched: &Schedule,
    tz: &TimeZone,
    with_deadline: bool,
) -> Result<(Timestamp, Option<Timestamp>, Missed), String> {
    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut earliest = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map_or(created, |t| t.0);
    if let Some(d) = cj
        .spec
        .as_ref()
        .and_then(|s| s.starting_deadline_seconds)
        .filter(|_| with_deadline)
    {
        let deadline = now - jiff::SignedDuration::from_secs(d);
        earliest = earliest.max(deadline);
    }
    let never = "the schedule has no next time".to_string();
    let t1 = sched.next(earliest, tz).ok_or_else(|| never.clone())?;
    if now < t1 {
        return Ok((earliest, None, Missed::None));
    }
    let t2 = sched.next(t1, tz).ok_or(never)?;
    if now < t2 {
        return Ok((earliest, Some(t1), Missed::None));
    }
    let between = t2.as_second() - t1.as_second();
    if between < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let missed = (now.as_second() - t1.as_second()) / between + 1;
    let mut recent = Timestamp::from_second(t1.as_second() + (missed - 1) * between)
        .map_err(|e| e.to_string())?;
    // Irregular schedules: walk to the last time not after `now`.
    while let Some(t) = sched.next(recent, tz).filter(|t| *t <= now) {
        recent = t;
    }
    let m = match missed {
        n if n > 100 => Missed::Many(n),
        n if n > 1 => Missed::Few,
        _ => Missed::None,
    };
    Ok((earliest, Some(recent), m))
}

/// When to look again: just after the next schedule time.
fn next_in(cj: &CronJob, now: Timestamp, sched: &Schedule, tz: &TimeZone) -> Duration {
    let Ok((earliest, recent, _)) = most_recent(cj, now, sched, tz, false) else {
        return NEXT_SCHEDULE_DELTA;
    };
    let from = recent.unwrap_or(earliest);
    sched.next(from, tz).map_or(Duration::from_secs(3600), |t| {
        Duration::try_from(t.duration_since(now)).unwrap_or_default() + NEXT_SCHEDULE_DELTA
    })
}

/// `RFC3339` as Go prints it: `Z` for a zero offset.
fn rfc3339_in(t: Timestamp, tz: &TimeZone) -> String {
    let z = t.to_zoned(tz.clone());
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The finished condition's type, as the event names it.
fn finished_type(j: &Job) -> &'static str {
    if condition_true(j, "Complete").is_some() {
        "Complete"
    } else {
        "Failed"
    }
}

impl Ctx {
    async fn delete_job(&self, cj: &CronJob, j: &Job) -> Result<()> {
        let api: Api<Job> =
            Api::namespaced(self.client.clone(), &j.namespace().unwrap_or_default());
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match api.delete(&j.name_any(), &dp).await {
            Ok(_) => {
                self.recorder
                    .normal(
                        cj,
                        "SuccessfulDelete",
                        &format!("Deleted job {}", j.name_any()),
                    )
                    .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => {
                self.recorder
                    .warning(
                        cj,
                        "FailedDelete",
                        &format!("Deleted job: {}", api_message(&e)),
                    )
                    .await;
                Err(e.into())
            }
        }
    }

    /// `cleanupFinishedJobs`: the oldest finished Jobs beyond each history limit go.
    async fn clean_up(
        &self,
        cj: &CronJob,
        jobs: &[Arc<Job>],
        st: &mut CronJobStatus,
    ) -> Result<bool> {
        let spec = cj.spec.clone().unwrap_or_default();
        let mut changed = false;
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit),
            ("Failed", spec.failed_jobs_history_limit),
        ] {
            let Some(limit) = limit else { continue };
            let mut done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| finished(j) && finished_type(j) == kind)
                .collect();
            done.sort_by_key(|j| {
                let st = j.status.as_ref();
                (
                    st.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
                    j.name_any(),
                )
            });
            let surplus = done.len().saturating_sub(limit.max(0) as usize);
            for j in done.into_iter().take(surplus) {
                self.delete_job(cj, j).await?;
                if let Some(a) = st.active.as_mut() {
                    a.retain(|r| r.uid != j.metadata.uid);
                }
                changed = true;
            }
        }
        Ok(changed)
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action> {
    ctx.jobs.synced().await?;
    let cj = (*cj).clone();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let ns = cj.namespace().unwrap_or_default();
    let jobs: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| super::podcontrol::controller_of(&**j).is_some_and(|r| r.uid == uid))
        .collect();
    let (mut st, mut changed, action) = sync(&ctx, &cj, &jobs).await?;
    if ctx.clean_up(&cj, &jobs, &mut st).await? {
        changed = true;
    }
    if changed {
        let mut updated = cj.clone();
        updated.status = Some(st);
        Api::<CronJob>::namespaced(ctx.client.clone(), &ns)
            .replace_status(&cj.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    Ok(action)
}

/// `syncCronJob`: the new status, whether it changed, and when to look again.
async fn sync(ctx: &Ctx, cj: &CronJob, jobs: &[Arc<Job>]) -> Result<(CronJobStatus, bool, Action)> {
    let now = (ctx.now)();
    let mut st = cj.status.clone().unwrap_or_default();
    let mut changed = false;
    let by_uid: HashMap<String, &Arc<Job>> = jobs
        .iter()
        .map(|j| (j.metadata.uid.clone().unwrap_or_default(), j))
        .collect();
    for j in jobs {
        let in_active = st.active.iter().flatten().any(|r| r.uid == j.metadata.uid);
        if !in_active && !finished(j) {
            let msg = format!(
                "Saw a job that the controller did not create or forgot: {}",
                j.name_any()
            );
            ctx.recorder.warning(cj, "UnexpectedJob", &msg).await;
        } else if in_active && finished(j) {
            if let Some(a) = st.active.as_mut() {
                a.retain(|r| r.uid != j.metadata.uid);
            }
            let msg = format!(
                "Saw completed job: {}, condition: {}",
                j.name_any(),
                finished_type(j)
            );
            ctx.recorder.normal(cj, "SawCompletedJob", &msg).await;
            changed = true;
        }
        let done =
            condition_true(j, "Complete").and_then(|_| j.status.as_ref()?.completion_time.clone());
        if let Some(done) = done {
            if st
                .last_successful_time
                .as_ref()
                .is_none_or(|t| t.0 < done.0)
            {
                st.last_successful_time = Some(done);
                changed = true;
            }
        }
    }
    let active = st.active.get_or_insert_with(Vec::new);
    let mut missing = Vec::new();
    for r in active.iter() {
        if !r.uid.as_ref().is_some_and(|u| by_uid.contains_key(u)) {
            let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns_of(cj));
            let name = r.name.clone().unwrap_or_default();
            if api.get_opt(&name).await?.is_none() {
                missing.push(r.uid.clone());
                ctx.recorder
                    .normal(
                        cj,
                        "MissingJob",
                        &format!("Active job went missing: {name}"),
                    )
                    .await;
            }
        }
    }
    if !missing.is_empty() {
        active.retain(|r| !missing.contains(&r.uid));
        changed = true;
    }
    let spec = cj.spec.clone().unwrap_or_default();
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok((st, changed, Action::await_change()));
    }
    let tz = match k8s_rules::cron::zone(spec.time_zone.as_deref().unwrap_or_default()) {
        Ok(tz) => tz,
        Err(e) => {
            let msg = format!(
                "invalid timeZone: {:?}: {e}",
                spec.time_zone.unwrap_or_default()
            );
            ctx.recorder.warning(cj, "UnknownTimeZone", &msg).await;
            return Ok((st, changed, Action::await_change()));
        }
    };
    if spec.suspend == Some(true) {
        return Ok((st, changed, Action::await_change()));
    }
    let sched = match k8s_rules::cron::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("unparseable schedule: {:?} : {e}", spec.schedule);
            ctx.recorder.warning(cj, "UnparseableSchedule", &msg).await;
            return Ok((st, changed, Action::await_change()));
        }
    };
    let mut with_status = cj.clone();
    with_status.status = Some(st.clone());
    let again = |c: &CronJob| Action::requeue(next_in(c, now, &sched, &tz));
    let scheduled = match most_recent(&with_status, now, &sched, &tz, true) {
        Ok((_, Some(t), missed)) if t <= now => {
            if let Missed::Many(n) = missed {
                let msg = format!("too many missed start times: {n}. Set or decrease .spec.startingDeadlineSeconds or check clock skew");
                ctx.recorder.warning(cj, "TooManyMissedTimes", &msg).await;
            }
            t
        }
        Ok(_) => return Ok((st, changed, again(&with_status))),
        Err(e) => {
            ctx.recorder
                .warning(
                    cj,
                    "InvalidSchedule",
                    &format!("invalid schedule: {} : {e}", spec.schedule),
                )
                .await;
            return Ok((st, changed, Action::await_change()));
        }
    };
    if let Some(d) = spec.starting_deadline_seconds {
        if scheduled + jiff::SignedDuration::from_secs(d) < now {
            let when = scheduled
                .to_zoned(TimeZone::UTC)
                .strftime("%a, %d %b %Y %H:%M:%S %z")
                .to_string();
            ctx.recorder
                .warning(
                    cj,
                    "MissSchedule",
                    &format!("Missed scheduled time to start a job: {when}"),
                )
                .await;
            return Ok((st, changed, again(&with_status)));
        }
    }
    let name = format!("{}-{}", cj.name_any(), scheduled.as_second() / 60);
    let active = st.active.get_or_insert_with(Vec::new);
    if active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
        || st
            .last_schedule_time
            .as_ref()
            .is_some_and(|t| t.0 == scheduled)
    {
        return Ok((st, changed, again(&with_status)));
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        let msg =
            "Not starting job because prior execution is running and concurrency policy is Forbid";
        ctx.recorder.normal(cj, "JobAlreadyActive", msg).await;
        return Ok((st, changed, again(&with_status)));
    }
    if policy == "Replace" {
        for r in active.clone() {
            let Some(j) = r.uid.as_ref().and_then(|u| by_uid.get(u)) else {
                continue;
            };
            ctx.delete_job(cj, j).await?;
            active.retain(|a| a.uid != r.uid);
        }
    }
    let tmpl = spec.job_template;
    let mut job = Job {
        spec: tmpl.spec,
        ..Default::default()
    };
    let meta = tmpl.metadata.unwrap_or_default();
    job.metadata.name = Some(name.clone());
    job.metadata.namespace = cj.metadata.namespace.clone();
    job.metadata.labels = meta.labels;
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339_in(scheduled, &tz));
    job.metadata.annotations = Some(annotations);
    job.metadata.owner_references = Some(vec![controller_ref(cj)]);
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns_of(cj));
    let made = match api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            ctx.recorder
                .normal(cj, "SuccessfulCreate", &format!("Created job {name}"))
                .await;
            j
        }
        // Made by an earlier pass whose status write lost a race: that job is this start
        // time's, and goes into the active list now (else every pass would try again).
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
            Some(j)
                if super::podcontrol::controller_of(&j)
                    .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref()) =>
            {
                j
            }
            _ => return Err(kube::Error::Api(s).into()),
        },
        Err(e) => {
            ctx.recorder
                .warning(
                    cj,
                    "FailedCreate",
                    &format!("Error creating job: {}", api_message(&e)),
                )
                .await;
            return Err(e.into());
        }
    };
    let active = st.active.get_or_insert_with(Vec::new);
    if !active.iter().any(|r| r.uid == made.metadata.uid) {
        active.push(job_ref(&made));
    }
    st.last_schedule_time = Some(Time(scheduled));
    with_status.status = Some(st.clone());
    Ok((st, true, again(&with_status)))
}

fn ns_of(cj: &CronJob) -> String {
    cj.namespace().unwrap_or_default()
}

/// Runs the controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    run_with(client, Arc::new(Timestamp::now)).await
}

pub async fn run_with(client: kube::Client, now: Clock) {
    let (jobs, writer) = reflector::store();
    let job_events = watcher(Api::<Job>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let controller = Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_stream(job_events);
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "cronjob-controller"),
        client,
        jobs: Cache::new(jobs),
        now,
    });
    reconcile::run("cronjob-controller", controller, reconcile, ctx).await;
}

#[cfg(test)]
mod tests;
