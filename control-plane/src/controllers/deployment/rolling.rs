//! The two strategies (`rolling.go`, `recreate.go`) and the rollout's progress
//! (`progress.go`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::sync::{self, all_and_sync_revision, scale_and_record};
use super::util::{self, rs_replicas, rs_status};
use super::Ctx;
use crate::controllers::podcontrol::controller_of;
use crate::reconcile::Result;

/// `rolloutRolling`: scale the new ReplicaSet up within maxSurge, else the old ones down
/// within maxUnavailable; clean up once complete. The delay after which to look again for
/// a stuck rollout, if any.
pub async fn rollout_rolling(
    ctx: &Ctx,
    d: &mut Deployment,
    rs_list: &[ReplicaSet],
) -> Result<Option<Duration>> {
    let (new, mut old) = all_and_sync_revision(ctx, d, rs_list, true).await?;
    let Some(mut new) = new else {
        return Ok(None);
    };
    let all = |new: &ReplicaSet, old: &[ReplicaSet]| -> Vec<ReplicaSet> {
        std::iter::once(new.clone())
            .chain(old.iter().cloned())
            .collect()
    };
    if let Some(scaled) = reconcile_new(ctx, d, &all(&new, &old), &new).await? {
        new = scaled;
        return sync_rollout_status(ctx, d, Some(&new), &old).await;
    }
    if reconcile_old(ctx, d, &new, &mut old).await? {
        return sync_rollout_status(ctx, d, Some(&new), &old).await;
    }
    if util::complete(d, &d.status.clone().unwrap_or_default()) {
        sync::cleanup(ctx, &old, d).await?;
    }
    sync_rollout_status(ctx, d, Some(&new), &old).await
}

/// `reconcileNewReplicaSet`: the new ReplicaSet as scaled, if it was.
async fn reconcile_new(
    ctx: &Ctx,
    d: &Deployment,
    all: &[ReplicaSet],
    new: &ReplicaSet,
) -> Result<Option<ReplicaSet>> {
    let want = util::replicas(d);
    let target = match rs_replicas(new) {
        n if n == want => return Ok(None),
        n if n > want => want,
        _ => util::new_rs_new_replicas(d, &all.iter().collect::<Vec<_>>(), new),
    };
    let (scaled, rs) = scale_and_record(ctx, new, target, d).await?;
    Ok(scaled.then_some(rs))
}

/// `reconcileOldReplicaSets`: first the old ReplicaSets' unavailable pods, then available
/// ones, never below `replicas - maxUnavailable` available. Whether any was scaled.
async fn reconcile_old(
    ctx: &Ctx,
    d: &Deployment,
    new: &ReplicaSet,
    old: &mut [ReplicaSet],
) -> Result<bool> {
    let old_pods = util::spec_total(old.iter());
    if old_pods == 0 {
        return Ok(false);
    }
    let all_pods = old_pods + rs_replicas(new);
    let min_available = util::replicas(d) - util::max_unavailable(d);
    let new_unavailable = rs_replicas(new) - rs_status(new).2;
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(false);
    }
    old.sort_by(util::by_creation);
    // Unhealthy replicas first: they would block the rollout otherwise.
    let mut cleaned = 0;
    for rs in old.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let (spec, available) = (rs_replicas(rs), rs_status(rs).2);
        if spec == 0 || spec == available {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(spec - available);
        let (_, stored) = scale_and_record(ctx, rs, spec - down, d).await?;
        *rs = stored;
        cleaned += down;
    }
    // Then available ones, keeping the minimum available.
    let available: i32 = std::iter::once(new)
        .chain(old.iter())
        .map(|rs| rs_status(rs).2)
        .sum();
    let mut scaled_down = 0;
    if available > min_available {
        let total = available - min_available;
        for rs in old.iter_mut() {
            if scaled_down >= total {
                break;
            }
            let spec = rs_replicas(rs);
            if spec == 0 {
                continue;
            }
            let down = spec.min(total - scaled_down);
            let (_, stored) = scale_and_record(ctx, rs, spec - down, d).await?;
            *rs = stored;
            scaled_down += down;
        }
    }
    Ok(cleaned + scaled_down > 0)
}

/// `rolloutRecreate`: all old pods gone before the new ReplicaSet is scaled up.
pub async fn rollout_recreate(
    ctx: &Ctx,
    d: &mut Deployment,
    rs_list: &[ReplicaSet],
) -> Result<Option<Duration>> {
    let (mut new, mut old) = all_and_sync_revision(ctx, d, rs_list, false).await?;
    let mut scaled_down = false;
    for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
        let (scaled, stored) = scale_and_record(ctx, rs, 0, d).await?;
        *rs = stored;
        scaled_down |= scaled;
    }
    if scaled_down || old_pods_running(ctx, new.as_ref(), &old, rs_list) {
        return sync_rollout_status(ctx, d, new.as_ref(), &old).await;
    }
    if new.is_none() {
        (new, old) = all_and_sync_revision(ctx, d, rs_list, true).await?;
    }
    if let Some(rs) = new.as_mut() {
        let (_, stored) = scale_and_record(ctx, rs, util::replicas(d), d).await?;
        *rs = stored;
    }
    if util::complete(d, &d.status.clone().unwrap_or_default()) {
        sync::cleanup(ctx, &old, d).await?;
    }
    sync_rollout_status(ctx, d, new.as_ref(), &old).await
}

/// `oldPodsRunning`: an old ReplicaSet still reports pods, or a pod of one is not finished
/// (terminating ones included).
fn old_pods_running(
    ctx: &Ctx,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    rs_list: &[ReplicaSet],
) -> bool {
    if old.iter().map(|rs| rs_status(rs).0).sum::<i32>() > 0 {
        return true;
    }
    let new_uid = new.and_then(|rs| rs.metadata.uid.clone());
    let old_uids: Vec<String> = rs_list
        .iter()
        .filter_map(|rs| rs.metadata.uid.clone())
        .filter(|u| Some(u) != new_uid.as_ref())
        .collect();
    ctx.pods.state().iter().any(|p: &std::sync::Arc<Pod>| {
        controller_of(&**p).is_some_and(|r| old_uids.contains(&r.uid))
            && !k8s_rules::pods::is_finished(p)
    })
}

/// `syncRolloutStatus`: the status with `Progressing` brought up to date (complete,
/// progressing, or past its deadline) and ReplicaSets' failures carried over. When nothing
/// changed, the delay after which the deadline must be checked again.
pub async fn sync_rollout_status(
    ctx: &Ctx,
    d: &mut Deployment,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Result<Option<Duration>> {
    let mut st = sync::calculate_status(d, new, old);
    let deadline = util::progress_deadline(d);
    if deadline.is_none() {
        util::remove_condition(&mut st, util::PROGRESSING);
    }
    let current = d
        .status
        .as_ref()
        .and_then(|s| util::get_condition(s, util::PROGRESSING))
        .cloned();
    let completed = st.replicas == st.updated_replicas
        && current.as_ref().and_then(|c| c.reason.as_deref())
            == Some(util::NEW_RS_AVAILABLE_REASON);
    if deadline.is_some() && !completed {
        let what = |tail: &str| match new {
            Some(rs) => format!("ReplicaSet {:?} {tail}", rs.name_any()),
            None => format!("Deployment {:?} {tail}", d.name_any()),
        };
        if util::complete(d, &st) {
            let c = util::condition(
                util::PROGRESSING,
                "True",
                util::NEW_RS_AVAILABLE_REASON,
                what("has successfully progressed."),
            );
            util::set_condition(&mut st, c);
        } else if util::progressing(d, &st) {
            let mut c = util::condition(
                util::PROGRESSING,
                "True",
                util::RS_UPDATED_REASON,
                what("is progressing."),
            );
            // Everything but the transition time is renewed while it stays True.
            if let Some(cur) = &current {
                if cur.status == "True" {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                util::remove_condition(&mut st, util::PROGRESSING);
            }
            util::set_condition(&mut st, c);
        } else if util::timed_out(d, &st) {
            let c = util::condition(
                util::PROGRESSING,
                "False",
                util::TIMED_OUT_REASON,
                what("has timed out progressing."),
            );
            util::set_condition(&mut st, c);
        }
    }
    match replica_failure(new, old) {
        Some(c) => util::set_condition(&mut st, c),
        None => util::remove_condition(&mut st, util::REPLICA_FAILURE),
    }
    if sync::same_status(&d.status.clone().unwrap_or_default(), &st) {
        return Ok(requeue_stuck(d, &st));
    }
    d.status = Some(st);
    ctx.update_status(d).await?;
    Ok(None)
}

/// `getReplicaFailures`: the new ReplicaSet's `ReplicaFailure` (else an old one's) as the
/// Deployment's.
fn replica_failure(
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Option<k8s_openapi::api::apps::v1::DeploymentCondition> {
    new.into_iter().chain(old.iter()).find_map(|rs| {
        let c = rs
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == util::REPLICA_FAILURE)?;
        Some(k8s_openapi::api::apps::v1::DeploymentCondition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: c.last_transition_time.clone(),
            last_update_time: c.last_transition_time.clone(),
        })
    })
}

/// `requeueStuckDeployment`: a rollout in progress is looked at again when its deadline
/// passes, as nothing else would wake it then.
fn requeue_stuck(
    d: &Deployment,
    st: &k8s_openapi::api::apps::v1::DeploymentStatus,
) -> Option<Duration> {
    let deadline = util::progress_deadline(d)?;
    let cond = d
        .status
        .as_ref()
        .and_then(|s| util::get_condition(s, util::PROGRESSING))?;
    if util::complete(d, st) || cond.reason.as_deref() == Some(util::TIMED_OUT_REASON) {
        return None;
    }
    let updated = cond.last_update_time.as_ref()?.0;
    let at = updated + jiff::SignedDuration::from_secs(deadline.into());
    let left = Duration::try_from(at.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    Some(left + Duration::from_millis(50))
}
