//! Pods made and removed for a Job (`manageJob`, `deleteActivePods`).

use std::collections::HashSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::pods;
use super::sync::View;
use super::Ctx;
use crate::api::objects::generated_name;
use crate::controllers::podcontrol::{slow_start, PodControl};
use crate::reconcile::Error;

const MAX_PODS_PER_SYNC: usize = 500;

/// Deletes pods (at most a sync's worth); how many went, and the first error.
pub(super) async fn delete_pods(
    control: &PodControl,
    job: &Job,
    pods: &[&Pod],
) -> (usize, Option<Error>) {
    let pods = &pods[..pods.len().min(MAX_PODS_PER_SYNC)];
    let results = futures_util::future::join_all(pods.iter().map(|p| control.delete(job, p))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    (ok, results.into_iter().find_map(|r| r.err()))
}

/// `manageJob`: deletes surplus (and, Indexed, duplicate or stray) active pods, or creates
/// the missing ones after the back-off. The active count after it, when to look again, and
/// the first error.
pub(super) async fn manage(
    ctx: &Ctx,
    v: &View<'_>,
    suspended: bool,
    terminating: i32,
    now: Timestamp,
) -> (i32, Option<Duration>, Option<Error>) {
    let job = v.job;
    let spec = job.spec.clone().unwrap_or_default();
    let active = v.active.len() as i64;
    if suspended {
        let (n, err) = delete_pods(&ctx.control, job, &v.active).await;
        return ((active - n as i64) as i32, None, err);
    }
    let parallelism = i64::from(spec.parallelism.unwrap_or(1));
    let want = match v.completions {
        None if v.succeeded > 0 => active,
        None => parallelism,
        Some(c) => (c - v.succeeded).min(parallelism).max(0),
    };
    let mut sorted: Vec<k8s_rules::pods::Ranked<'_>> = v
        .active
        .iter()
        .map(|p| k8s_rules::pods::Ranked { pod: p, rank: 0 })
        .collect();
    k8s_rules::pods::sort_for_deletion(&mut sorted, now);
    let mut to_delete: Vec<&Pod> = Vec::new();
    let mut kept: Vec<&Pod> = Vec::new();
    if v.indexed {
        // Strays first: no valid index, an index already done, or a second pod of an index
        // (the one that would be deleted last stays).
        let mut seen = HashSet::new();
        for r in sorted.iter().rev() {
            match pods::index_of(r.pod) {
                Some(ix)
                    if ix < v.completions.unwrap_or(0)
                        && !v.succeeded_ix.contains(&ix)
                        && seen.insert(ix) =>
                {
                    kept.push(r.pod)
                }
                _ => to_delete.push(r.pod),
            }
        }
        kept.reverse();
    } else {
        kept = sorted.iter().map(|r| r.pod).collect();
    }
    let surplus = (kept.len() as i64 - want).max(0) as usize;
    to_delete.extend(kept.iter().take(surplus));
    if !to_delete.is_empty() {
        let (n, err) = delete_pods(&ctx.control, job, &to_delete).await;
        return ((active - n as i64) as i32, None, err);
    }
    let replacing = if pods::only_replace_failed(job) {
        i64::from(terminating)
    } else {
        0
    };
    let diff = (want - replacing - active).min(MAX_PODS_PER_SYNC as i64);
    if diff <= 0 {
        return (active as i32, None, None);
    }
    let (base, max) = (ctx.opts.backoff_base, ctx.opts.backoff_max);
    if spec.backoff_limit_per_index.is_none() {
        let wait = v.record.remaining(base, max, now);
        if !wait.is_zero() {
            return (active as i32, Some(wait), None);
        }
    }
    let mut template = spec.template.clone();
    if v.indexed {
        pods::with_index_env(&mut template);
    }
    let meta = template.metadata.get_or_insert_with(Default::default);
    let fins = meta.finalizers.get_or_insert_with(Vec::new);
    if !fins.iter().any(|f| f == pods::TRACKING_FINALIZER) {
        fins.push(pods::TRACKING_FINALIZER.into());
    }
    let name = job.name_any();
    // (index, failures before it) of each pod to create.
    let mut plan: Vec<(Option<i64>, Option<i32>)> = Vec::new();
    let mut wait: Option<Duration> = None;
    if v.indexed {
        let busy: HashSet<i64> = v
            .active
            .iter()
            .copied()
            .filter_map(pods::index_of)
            .collect();
        for ix in 0..v.completions.unwrap_or(0) {
            if plan.len() as i64 >= diff {
                break;
            }
            if busy.contains(&ix) || v.succeeded_ix.contains(&ix) || v.failed_ix.contains(&ix) {
                continue;
            }
            let mut failures = None;
            if spec.backoff_limit_per_index.is_some() {
                let last = v.delayed.get(&ix);
                let before = last.map_or(0, |p| {
                    pods::index_failure_count(p) + i32::from(pods::counts(job, p))
                });
                if let Some(p) = last {
                    let left = pods::remaining(
                        base,
                        max,
                        (pods::index_failure_count(p) + 1) as u32,
                        Some(pods::finished_at(p, now)),
                        now,
                    );
                    if !left.is_zero() {
                        wait = Some(wait.map_or(left, |w| w.min(left)));
                        continue;
                    }
                }
                failures = Some(before);
            }
            plan.push((Some(ix), failures));
        }
    } else {
        plan = (0..diff).map(|_| (None, None)).collect();
    }
    let (made, err) = slow_start(plan.len(), |i| {
        let (ix, failures) = plan[i];
        let t = match ix {
            Some(ix) => pods::for_index(&template, &name, ix, failures),
            None => template.clone(),
        };
        let pod =
            PodControl::pod_from_template(job, &t, generated_name(&pods::name_prefix(&name, ix)));
        async move { ctx.control.create(job, pod).await.map(|_| ()) }
    })
    .await;
    let _ = &v.key;
    ((active + made as i64) as i32, wait, err)
}
