//! One Job's sync (`syncJob`, `manageJob`, `trackJobStatusAndRemoveFinalizers`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_rules::jobindexes::Intervals;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::manage::{delete_pods, manage};
use super::pods::{self, uid, BackoffRecord};
use super::Ctx;
use crate::controllers::podcontrol::{claim, key_of, selector};
use crate::reconcile::Result;

pub fn condition_true(job: &Job, ty: &str) -> Option<JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
        .cloned()
}

/// Complete or Failed.
pub fn finished(job: &Job) -> bool {
    condition_true(job, "Complete").is_some() || condition_true(job, "Failed").is_some()
}

fn condition(ty: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// `ensureJobConditionStatus`: sets a condition's status, reporting whether it changed.
fn ensure_condition(
    conds: &mut Vec<JobCondition>,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    match conds.iter_mut().find(|c| c.type_ == ty) {
        Some(c) if c.status == status => false,
        Some(c) => {
            *c = condition(ty, status, reason, message, now);
            true
        }
        None if status == "False" => false,
        None => {
            conds.push(condition(ty, status, reason, message, now));
            true
        }
    }
}

/// The terminal condition an interim one leads to.
fn terminal_of(c: &JobCondition, now: Timestamp) -> JobCondition {
    let ty = if c.type_ == "SuccessCriteriaMet" {
        "Complete"
    } else {
        "Failed"
    };
    condition(
        ty,
        "True",
        c.reason.as_deref().unwrap_or_default(),
        c.message.as_deref().unwrap_or_default(),
        now,
    )
}

/// What one sync saw and decided.
pub(super) struct View<'a> {
    pub(super) job: &'a Job,
    pub(super) key: String,
    pub(super) indexed: bool,
    pub(super) completions: Option<i64>,
    pub(super) active: Vec<&'a Pod>,
    pub(super) succeeded: i64,
    pub(super) succeeded_ix: BTreeSet<i64>,
    pub(super) failed_ix: BTreeSet<i64>,
    /// Per index, the last failed pod whose finalizer stays until its replacement exists
    /// (it carries the index's failure count).
    pub(super) delayed: HashMap<i64, &'a Pod>,
    pub(super) record: BackoffRecord,
}

pub async fn sync(ctx: &Ctx, mut job: Job) -> Result<Action> {
    let key = key_of(&job);
    if finished(&job) {
        ctx.backoff.lock().expect("backoff lock").remove(&key);
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    if spec
        .managed_by
        .as_deref()
        .is_some_and(|m| m != "kubernetes.io/job-controller")
    {
        return Ok(Action::await_change());
    }
    let now = ctx.now();
    let ns = job.namespace().unwrap_or_default();
    let sel = selector(spec.selector.as_ref());
    let candidates: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .map(|p| (**p).clone())
        .collect();
    let all = claim(&ctx.client, &job, &sel, candidates).await?;
    let satisfied = ctx.control.expectations.satisfied(&key);
    let mut st = job.status.clone().unwrap_or_default();
    let old_status = st.clone();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.map(i64::from);
    let suspended = spec.suspend == Some(true);
    let uncounted = st.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_s = uncounted.succeeded.unwrap_or_default();
    let mut unc_f = uncounted.failed.unwrap_or_default();
    let valid_index =
        |p: &Pod| !indexed || pods::index_of(p).is_some_and(|i| i < completions.unwrap_or(0));
    let fresh =
        |p: &&Pod| pods::has_finalizer(p) && !ctx.removal_expected(&uid(p)) && valid_index(p);
    let active: Vec<&Pod> = all
        .iter()
        .filter(|p| k8s_rules::pods::is_active(p))
        .collect();
    let terminating = all
        .iter()
        .filter(|p| k8s_rules::pods::is_terminating(p))
        .count() as i32;
    let new_succeeded: Vec<&Pod> = all
        .iter()
        .filter(fresh)
        .filter(|p| {
            pods::phase(p) == "Succeeded" && !unc_s.contains(&uid(p)) && !unc_f.contains(&uid(p))
        })
        .collect();
    let new_failed: Vec<&Pod> = all
        .iter()
        .filter(fresh)
        .filter(|p| pods::is_failed(p, &job) && !unc_f.contains(&uid(p)) && pods::counts(&job, p))
        .collect();
    let failed = i64::from(st.failed.unwrap_or(0)) + unc_f.len() as i64 + new_failed.len() as i64;
    let mut started = false;
    if st.start_time.is_none() && !suspended {
        st.start_time = Some(Time(now));
        started = true;
    }
    let record = ctx
        .backoff
        .lock()
        .expect("backoff lock")
        .get(&key)
        .cloned()
        .unwrap_or_default()
        .with(
            &new_succeeded
                .iter()
                .map(|p| pods::finished_at(p, now))
                .collect::<Vec<_>>(),
            &new_failed
                .iter()
                .map(|p| pods::finished_at(p, now))
                .collect::<Vec<_>>(),
        );

    let c = completions.unwrap_or(0);
    let mut succeeded_ix = BTreeSet::new();
    let mut failed_ix = BTreeSet::new();
    if indexed {
        succeeded_ix =
            Intervals::lenient(st.completed_indexes.as_deref().unwrap_or_default(), c).to_set();
        succeeded_ix.extend(
            all.iter()
                .filter(|p| pods::phase(p) == "Succeeded" && pods::has_finalizer(p))
                .filter_map(pods::index_of)
                .filter(|i| *i < c),
        );
        if spec.backoff_limit_per_index.is_some() {
            failed_ix =
                Intervals::lenient(st.failed_indexes.as_deref().unwrap_or_default(), c).to_set();
            failed_ix.extend(
                all.iter()
                    .filter(fresh)
                    .filter(|p| pods::fails_index(&job, p))
                    .filter_map(pods::index_of),
            );
        }
    }
    let succeeded = if indexed {
        succeeded_ix.len() as i64
    } else {
        i64::from(st.succeeded.unwrap_or(0)) + unc_s.len() as i64 + new_succeeded.len() as i64
    };

    // Why the Job ends, if it does: an interim condition already recorded leads to its
    // terminal one; otherwise the first rule that ends it gives the interim condition.
    let mut interim: Option<JobCondition> = None;
    let mut terminal: Option<JobCondition> = None;
    let mut requeue: Option<Duration> = None;
    if let Some(t) =
        condition_true(&job, "FailureTarget").or_else(|| condition_true(&job, "SuccessCriteriaMet"))
    {
        terminal = Some(terminal_of(&t, now));
    } else {
        let policy = spec.pod_failure_policy.as_ref();
        let fail_job = policy.and_then(|_| {
            all.iter()
                .filter(|p| pods::phase(p) == "Failed")
                .find_map(|p| pods::match_policy(policy, p).0)
        });
        let failure =
            |reason: &str, msg: &str| Some(condition("FailureTarget", "True", reason, msg, now));
        let restarts: i64 = active
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .map(|c| i64::from(c.restart_count))
            .sum();
        let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6));
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let deadline = spec.active_deadline_seconds.filter(|_| !suspended);
        let elapsed = st
            .start_time
            .as_ref()
            .map(|t| now.duration_since(t.0).as_secs());
        if let Some(msg) = fail_job {
            interim = failure("PodFailurePolicy", &msg);
        } else if failed > backoff_limit
            || (on_failure && backoff_limit > 0 && restarts >= backoff_limit)
            || (on_failure && backoff_limit == 0 && restarts > 0)
        {
            interim = failure(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            );
        } else if let (Some(d), Some(e)) = (deadline, elapsed) {
            if e >= d {
                interim = failure(
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                );
            } else {
                requeue = Some(Duration::from_secs((d - e) as u64));
            }
        }
        if indexed && interim.is_none() && spec.backoff_limit_per_index.is_some() {
            if spec
                .max_failed_indexes
                .is_some_and(|m| failed_ix.len() as i64 > i64::from(m))
            {
                interim = failure(
                    "MaxFailedIndexesExceeded",
                    "Job has exceeded the specified maximal number of failed indexes",
                );
            } else if !failed_ix.is_empty() && (failed_ix.len() + succeeded_ix.len()) as i64 >= c {
                interim = failure("FailedIndexes", "Job has failed indexes");
            }
        }
        if indexed && interim.is_none() {
            if let Some(msg) =
                pods::match_success_policy(spec.success_policy.as_ref(), c, &succeeded_ix)
            {
                interim = Some(condition(
                    "SuccessCriteriaMet",
                    "True",
                    "SuccessPolicy",
                    &msg,
                    now,
                ));
            }
        }
    }

    let mut delayed: HashMap<i64, &Pod> = HashMap::new();
    if indexed && spec.backoff_limit_per_index.is_some() {
        let active_ix: HashSet<i64> = active.iter().copied().filter_map(pods::index_of).collect();
        for p in all
            .iter()
            .filter(fresh)
            .filter(|p| pods::is_failed(p, &job))
        {
            let Some(ix) = pods::index_of(p) else {
                continue;
            };
            if succeeded_ix.contains(&ix) || failed_ix.contains(&ix) || active_ix.contains(&ix) {
                continue;
            }
            let later = |q: &Pod| (pods::index_failure_count(q), pods::finished_at(q, now));
            if delayed.get(&ix).is_none_or(|q| later(q) <= later(p)) {
                delayed.insert(ix, p);
            }
        }
    }

    let view = View {
        job: &job,
        key: key.clone(),
        indexed,
        completions,
        active: active.clone(),
        succeeded,
        succeeded_ix: succeeded_ix.clone(),
        failed_ix: failed_ix.clone(),
        delayed,
        record: record.clone(),
    };
    let mut active_count = active.len() as i32;
    let mut deleted_any = false;
    let mut manage_err = None;
    let mut conds = st.conditions.clone().unwrap_or_default();
    let mut cond_changed = false;
    if interim.is_some() || terminal.is_some() {
        let (deleted, err) = delete_pods(&ctx.control, &job, &active).await;
        active_count -= deleted as i32;
        deleted_any = deleted > 0;
        manage_err = err;
    } else {
        let mut managed = false;
        if satisfied && job.metadata.deletion_timestamp.is_none() {
            let (n, again, err) = manage(ctx, &view, suspended, terminating, now).await;
            active_count = n;
            deleted_any = n < active.len() as i32;
            requeue = match (requeue, again) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            manage_err = err;
            managed = true;
        }
        let complete = match completions {
            None => succeeded > 0 && active_count == 0,
            Some(c) => succeeded >= c && active_count == 0,
        };
        if complete {
            interim = Some(condition(
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        } else if managed && suspended {
            if ensure_condition(
                &mut conds,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            ) {
                cond_changed = true;
                ctx.control
                    .recorder
                    .normal(&job, "Suspended", "Job suspended")
                    .await;
            }
        } else if managed
            && ensure_condition(
                &mut conds,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            )
        {
            cond_changed = true;
            ctx.control
                .recorder
                .normal(&job, "Resumed", "Job resumed")
                .await;
            // activeDeadlineSeconds counts the time a Job is continuously active.
            st.start_time = Some(Time(now));
        }
    }
    let ready = active
        .iter()
        .filter(|p| k8s_rules::pods::is_ready(p))
        .count() as i32;
    st.active = Some(active_count).filter(|n| *n > 0);
    st.ready = Some(ready);
    st.terminating = Some(terminating);

    // Count finished pods: into uncountedTerminatedPods, then their finalizers go.
    let finishing = interim.is_some() || terminal.is_some();
    let failing = finishing
        && interim
            .as_ref()
            .or(terminal.as_ref())
            .is_some_and(|c| c.type_ == "FailureTarget" || c.type_ == "Failed");
    let mut to_release: Vec<&Pod> = Vec::new();
    for p in all
        .iter()
        .filter(|p| pods::has_finalizer(p) && !ctx.removal_expected(&uid(p)))
    {
        let considered_failed = pods::is_failed(p, &job);
        let keep_for_index = !finishing
            && considered_failed
            && pods::index_of(p).is_some_and(|ix| {
                !view.failed_ix.contains(&ix)
                    && view.delayed.get(&ix).is_some_and(|q| uid(q) == uid(p))
            });
        if keep_for_index {
            continue;
        }
        if k8s_rules::pods::is_finished(p)
            || considered_failed
            || finishing
            || job.metadata.deletion_timestamp.is_some()
        {
            to_release.push(p);
        }
        let u = uid(p);
        if pods::phase(p) == "Succeeded" && !unc_f.contains(&u) {
            if !indexed && !unc_s.contains(&u) {
                unc_s.push(u);
            }
        } else if (considered_failed || failing)
            && !unc_f.contains(&u)
            && valid_index(p)
            && pods::counts(&job, p)
        {
            unc_f.push(u);
        }
    }
    if indexed {
        st.completed_indexes = Some(Intervals::from_set(&succeeded_ix).to_string());
        st.succeeded = Some(succeeded_ix.len() as i32);
        if spec.backoff_limit_per_index.is_some() {
            st.failed_indexes = Some(Intervals::from_set(&failed_ix).to_string());
        }
    }
    if let Some(c) = &interim {
        conds.push(c.clone());
        terminal = Some(terminal_of(c, now));
        cond_changed = true;
    }
    st.conditions = Some(conds).filter(|c| !c.is_empty());
    st.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(unc_s.clone()),
        failed: Some(unc_f.clone()),
    });
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if started || cond_changed || !same_status(&st, &old_status) {
        job.status = Some(st.clone());
        job = api
            .replace_status(&job.name_any(), &PostParams::default(), &job)
            .await?;
        st = job.status.clone().unwrap_or_default();
    }
    ctx.backoff
        .lock()
        .expect("backoff lock")
        .insert(key.clone(), record);

    let (released, rm_err) = ctx.remove_finalizers(&to_release).await;
    let released: HashSet<String> = released.into_iter().collect();
    // A UID in uncountedTerminatedPods whose pod no longer holds the finalizer is counted.
    let holding: HashSet<String> = all
        .iter()
        .filter(|p| {
            pods::has_finalizer(p) && !released.contains(&uid(p)) && !ctx.removal_expected(&uid(p))
        })
        .map(uid)
        .collect();
    let (s_keep, s_done): (Vec<String>, Vec<String>) =
        unc_s.into_iter().partition(|u| holding.contains(u));
    let (f_keep, f_done): (Vec<String>, Vec<String>) =
        unc_f.into_iter().partition(|u| holding.contains(u));
    let mut changed = !s_done.is_empty() || !f_done.is_empty();
    if !indexed {
        st.succeeded = Some(st.succeeded.unwrap_or(0) + s_done.len() as i32)
            .filter(|n| *n > 0 || st.succeeded.is_some());
    }
    st.failed = Some(st.failed.unwrap_or(0) + f_done.len() as i32)
        .filter(|n| *n > 0 || st.failed.is_some());
    st.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(s_keep.clone()),
        failed: Some(f_keep.clone()),
    });
    let mut finished_now = None;
    if let Some(t) = terminal.filter(|_| {
        s_keep.is_empty()
            && f_keep.is_empty()
            && terminating == 0
            && !deleted_any
            && satisfied
            && rm_err.is_none()
    }) {
        if t.type_ == "Complete" {
            st.completion_time = Some(Time(now));
        }
        st.conditions.get_or_insert_with(Vec::new).push(t.clone());
        finished_now = Some(t);
        changed = true;
    }
    if changed {
        job.status = Some(st);
        job = api
            .replace_status(&job.name_any(), &PostParams::default(), &job)
            .await?;
    }
    if let Some(t) = finished_now {
        if t.type_ == "Complete" {
            ctx.control
                .recorder
                .normal(&job, "Completed", "Job completed")
                .await;
        } else {
            let reason = t.reason.unwrap_or_default();
            ctx.control
                .recorder
                .warning(&job, &reason, t.message.as_deref().unwrap_or_default())
                .await;
        }
        ctx.backoff.lock().expect("backoff lock").remove(&key);
        return Ok(Action::await_change());
    }
    if let Some(e) = rm_err.or(manage_err) {
        return Err(e);
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Status fields this sync sets, compared with what is stored.
fn same_status(a: &JobStatus, b: &JobStatus) -> bool {
    let unc = |s: &JobStatus| {
        let u = s.uncounted_terminated_pods.clone().unwrap_or_default();
        (
            u.succeeded.unwrap_or_default(),
            u.failed.unwrap_or_default(),
        )
    };
    a.active.unwrap_or(0) == b.active.unwrap_or(0)
        && a.ready == b.ready
        && a.terminating == b.terminating
        && a.completed_indexes.as_deref().unwrap_or_default()
            == b.completed_indexes.as_deref().unwrap_or_default()
        && a.failed_indexes == b.failed_indexes
        && a.succeeded.unwrap_or(0) == b.succeeded.unwrap_or(0)
        && unc(a) == unc(b)
        && a.start_time == b.start_time
}
