//! What every Deployment sync shares (`sync.go`): finding or creating the new ReplicaSet and
//! numbering revisions, scaling (proportionally when the Deployment is resized
//! mid-rollout), the paused conditions, old-ReplicaSet clean-up and the status.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use kube::api::{DeleteParams, PostParams};
use kube::ResourceExt;

use super::util::{self, rs_replicas, rs_status};
use super::Ctx;
use crate::controllers::podcontrol::{api_message, controller_ref, template_hash, with_label};
use crate::reconcile::{Error, Result};

fn is_active(rs: &ReplicaSet) -> bool {
    rs_replicas(rs) > 0
}

/// `getAllReplicaSetsAndSyncRevision`: the new ReplicaSet (created if asked and missing) with
/// its revision brought up to date, and the old ones.
pub async fn all_and_sync_revision(
    ctx: &Ctx,
    d: &mut Deployment,
    rs_list: &[ReplicaSet],
    create: bool,
) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>)> {
    let (new, old) = util::split_new_old(d, rs_list);
    let new = new_replica_set(ctx, d, new, &old, create).await?;
    Ok((new, old))
}

/// `getNewReplicaSet`.
async fn new_replica_set(
    ctx: &Ctx,
    d: &mut Deployment,
    existing: Option<ReplicaSet>,
    old: &[ReplicaSet],
    create: bool,
) -> Result<Option<ReplicaSet>> {
    let new_revision = util::max_revision(old) + 1;
    let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
    let ns = d.namespace().unwrap_or_default();
    if let Some(rs) = existing {
        let mut copy = rs.clone();
        let annotations_changed = util::set_new_rs_annotations(d, &mut copy, new_revision, true);
        let spec = copy.spec.get_or_insert_with(ReplicaSetSpec::default);
        let min_ready_changed = spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0);
        if annotations_changed || min_ready_changed {
            spec.min_ready_seconds = min_ready;
            let updated = ctx
                .rs_api(&ns)
                .replace(&copy.name_any(), &PostParams::default(), &copy)
                .await?;
            return Ok(Some(updated));
        }
        let meta_changed = util::set_deployment_revision(d, &util::revision(&copy).to_string());
        let status = d.status.get_or_insert_with(Default::default);
        let mut status_changed = false;
        if util::get_condition(status, util::PROGRESSING).is_none() {
            let msg = format!("Found new replica set {:?}", copy.name_any());
            util::set_condition(
                status,
                util::condition(util::PROGRESSING, "True", util::FOUND_NEW_RS_REASON, msg),
            );
            status_changed = true;
        }
        if meta_changed {
            ctx.update_meta(d).await?;
        }
        if status_changed {
            ctx.update_status(d).await?;
        }
        return Ok(Some(copy));
    }
    if !create {
        return Ok(None);
    }
    let template = util::template(d);
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&template, collisions);
    let mut rs_template = template.clone();
    let meta = rs_template.metadata.get_or_insert_with(Default::default);
    let labels = with_label(meta.labels.as_ref(), util::HASH_LABEL, &hash);
    meta.labels = Some(labels.clone());
    let mut selector = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    selector.match_labels = Some(with_label(
        selector.match_labels.as_ref(),
        util::HASH_LABEL,
        &hash,
    ));
    let mut rs = ReplicaSet {
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: min_ready,
            selector,
            template: Some(rs_template),
        }),
        ..Default::default()
    };
    rs.metadata.name = Some(format!("{}-{hash}", d.name_any()));
    rs.metadata.namespace = Some(ns.clone());
    rs.metadata.labels = Some(labels);
    rs.metadata.owner_references = Some(vec![controller_ref(d)]);
    let mut all: Vec<&ReplicaSet> = old.iter().collect();
    all.push(&rs);
    let count = util::new_rs_new_replicas(d, &all, &rs);
    if let Some(spec) = rs.spec.as_mut() {
        spec.replicas = Some(count);
    }
    util::set_new_rs_annotations(d, &mut rs, new_revision, false);
    let name = rs.name_any();
    let created = match ctx.rs_api(&ns).create(&PostParams::default(), &rs).await {
        Ok(made) => {
            if count > 0 {
                let msg = format!("Scaled up replica set {name} from 0 to {count}");
                ctx.recorder.normal(d, "ScalingReplicaSet", &msg).await;
            }
            made
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Ours already (a stale cache), or another template's: a hash collision.
            let current = ctx.rs_api(&ns).get(&name).await?;
            let ours = crate::controllers::podcontrol::controller_of(&current)
                .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
            let same = current
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| util::equal_ignore_hash(t, &template));
            if ours && same {
                return Ok(Some(current));
            }
            let status = d.status.get_or_insert_with(Default::default);
            status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
            ctx.update_status(d).await?;
            return Err(Error::Invalid(format!(
                "hash collision for ReplicaSet {name}: collisionCount raised"
            )));
        }
        Err(e) => {
            let msg = format!(
                "Failed to create new replica set {name:?}: {}",
                api_message(&e)
            );
            if util::progress_deadline(d).is_some() {
                let status = d.status.get_or_insert_with(Default::default);
                util::set_condition(
                    status,
                    util::condition(
                        util::PROGRESSING,
                        "False",
                        util::FAILED_RS_CREATE_REASON,
                        msg.clone(),
                    ),
                );
                let _ = ctx.update_status(d).await;
            }
            ctx.recorder
                .warning(d, util::FAILED_RS_CREATE_REASON, &msg)
                .await;
            return Err(e.into());
        }
    };
    let meta_changed = util::set_deployment_revision(d, &new_revision.to_string());
    if meta_changed {
        ctx.update_meta(d).await?;
    }
    if util::progress_deadline(d).is_some() {
        let msg = format!("Created new replica set {name:?}");
        let status = d.status.get_or_insert_with(Default::default);
        util::set_condition(
            status,
            util::condition(util::PROGRESSING, "True", util::NEW_RS_REASON, msg),
        );
        ctx.update_status(d).await?;
    }
    Ok(Some(created))
}

/// `scaleReplicaSet`: the size and the replica annotations; an event when the size changed.
/// Whether it scaled, and the ReplicaSet as stored.
pub async fn scale_replica_set(
    ctx: &Ctx,
    rs: &ReplicaSet,
    to: i32,
    d: &Deployment,
) -> Result<(bool, ReplicaSet)> {
    let from = rs_replicas(rs);
    let (desired, max) = (util::replicas(d), util::replicas(d) + util::max_surge(d));
    if from == to && !util::replicas_annotations_need_update(rs, desired, max) {
        return Ok((false, rs.clone()));
    }
    let mut copy = rs.clone();
    copy.spec.get_or_insert_with(Default::default).replicas = Some(to);
    util::set_replicas_annotations(&mut copy, desired, max);
    let ns = rs.namespace().unwrap_or_default();
    let stored = ctx
        .rs_api(&ns)
        .replace(&rs.name_any(), &PostParams::default(), &copy)
        .await?;
    if from != to {
        let op = if from < to { "up" } else { "down" };
        let msg = format!(
            "Scaled {op} replica set {} from {from} to {to}",
            rs.name_any()
        );
        ctx.recorder.normal(d, "ScalingReplicaSet", &msg).await;
    }
    Ok((from != to, stored))
}

/// `scaleReplicaSetAndRecordEvent`: nothing when the size is right already.
pub async fn scale_and_record(
    ctx: &Ctx,
    rs: &ReplicaSet,
    to: i32,
    d: &Deployment,
) -> Result<(bool, ReplicaSet)> {
    if rs_replicas(rs) == to {
        return Ok((false, rs.clone()));
    }
    scale_replica_set(ctx, rs, to, d).await
}

/// `isScalingEvent`: an active ReplicaSet was sized for another `spec.replicas`.
pub async fn is_scaling_event(
    ctx: &Ctx,
    d: &mut Deployment,
    rs_list: &[ReplicaSet],
) -> Result<bool> {
    let (new, old) = all_and_sync_revision(ctx, d, rs_list, false).await?;
    Ok(new
        .iter()
        .chain(old.iter())
        .filter(|rs| is_active(rs))
        .filter_map(util::desired_annotation)
        .any(|desired| desired != util::replicas(d)))
}

/// `sync`: scaling only (a resize, or a paused Deployment), clean-up when paused, status.
pub async fn sync(ctx: &Ctx, d: &mut Deployment, rs_list: &[ReplicaSet]) -> Result<()> {
    let (new, old) = all_and_sync_revision(ctx, d, rs_list, false).await?;
    scale(ctx, d, new.as_ref(), &old).await?;
    if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
        cleanup(ctx, &old, d).await?;
    }
    // As upstream, the status is computed from the ReplicaSets as they were before the
    // scale; their watch events bring the next sync.
    sync_status(ctx, d, new.as_ref(), &old).await
}

/// `scale`: to the Deployment's size, all at once when one ReplicaSet is active, else in
/// proportion to each one's share.
async fn scale(
    ctx: &Ctx,
    d: &Deployment,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Result<()> {
    let want = util::replicas(d);
    let mut active: Vec<&ReplicaSet> = new
        .into_iter()
        .chain(old.iter())
        .filter(|rs| is_active(rs))
        .collect();
    let only = match active.len() {
        0 => new.or_else(|| old.iter().max_by(|a, b| util::by_creation(a, b))),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(rs) = only {
        if rs_replicas(rs) != want {
            scale_and_record(ctx, rs, want, d).await?;
        }
        return Ok(());
    }
    if util::is_saturated(d, new) {
        for rs in old.iter().filter(|rs| is_active(rs)) {
            scale_and_record(ctx, rs, 0, d).await?;
        }
        return Ok(());
    }
    if !util::is_rolling(d) {
        return Ok(());
    }
    let total = util::spec_total(active.iter().copied());
    let allowed = if want > 0 {
        want + util::max_surge(d)
    } else {
        0
    };
    let to_add = allowed - total;
    // Larger first; on a tie newer first when growing, older first when shrinking.
    active.sort_by(|a, b| {
        rs_replicas(b).cmp(&rs_replicas(a)).then_with(|| {
            if to_add > 0 {
                util::by_creation(b, a)
            } else {
                util::by_creation(a, b)
            }
        })
    });
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::new();
    for rs in &active {
        if to_add != 0 {
            let p = util::proportion(rs, d, to_add, added);
            sizes.push(rs_replicas(rs) + p);
            added += p;
        } else {
            sizes.push(rs_replicas(rs));
        }
    }
    for (i, rs) in active.iter().enumerate() {
        if i == 0 && to_add != 0 {
            // Leftovers go to the largest.
            sizes[0] = (sizes[0] + to_add - added).max(0);
        }
        scale_replica_set(ctx, rs, sizes[i], d).await?;
    }
    Ok(())
}

/// `checkPausedConditions`: `DeploymentPaused` / `DeploymentResumed` in `Progressing`,
/// unless progress was already reported lost.
pub async fn check_paused_conditions(ctx: &Ctx, d: &mut Deployment) -> Result<()> {
    if util::progress_deadline(d).is_none() {
        return Ok(());
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let status = d.status.get_or_insert_with(Default::default);
    let reason = util::get_condition(status, util::PROGRESSING).and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(util::TIMED_OUT_REASON) {
        return Ok(());
    }
    let paused_cond = reason.as_deref() == Some(util::PAUSED_REASON);
    let cond = if paused && !paused_cond {
        util::condition(
            util::PROGRESSING,
            "Unknown",
            util::PAUSED_REASON,
            "Deployment is paused".into(),
        )
    } else if !paused && paused_cond {
        util::condition(
            util::PROGRESSING,
            "Unknown",
            util::RESUMED_REASON,
            "Deployment is resumed".into(),
        )
    } else {
        return Ok(());
    };
    util::set_condition(status, cond);
    ctx.update_status(d).await
}

/// `cleanupDeployment`: old ReplicaSets beyond `revisionHistoryLimit`, lowest revision
/// first, and only those scaled to nothing and settled.
pub async fn cleanup(ctx: &Ctx, old: &[ReplicaSet], d: &Deployment) -> Result<()> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
        return Ok(());
    };
    let mut cleanable: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let diff = cleanable.len() as i64 - i64::from(limit);
    if diff <= 0 {
        return Ok(());
    }
    cleanable.sort_by(|a, b| {
        util::revision(a)
            .cmp(&util::revision(b))
            .then_with(|| util::by_creation(a, b))
    });
    for rs in cleanable.into_iter().take(diff as usize) {
        let observed = rs
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .unwrap_or(0);
        if rs_status(rs).0 != 0
            || rs_replicas(rs) != 0
            || rs.metadata.generation.unwrap_or(0) > observed
        {
            continue;
        }
        match ctx
            .rs_api(&rs.namespace().unwrap_or_default())
            .delete(&rs.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `calculateStatus`: the counts over all ReplicaSets, and `Available`.
pub fn calculate_status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> DeploymentStatus {
    let all: Vec<&ReplicaSet> = new.into_iter().chain(old.iter()).collect();
    let available: i32 = all.iter().map(|rs| rs_status(rs).2).sum();
    let total = util::spec_total(all.iter().copied());
    let prev = d.status.clone().unwrap_or_default();
    let mut st = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(|rs| rs_status(rs).0).sum()),
        updated_replicas: Some(new.map_or(0, |rs| rs_status(rs).0)),
        ready_replicas: Some(all.iter().map(|rs| rs_status(rs).1).sum()),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: prev.collision_count,
        conditions: prev.conditions.clone(),
        terminating_replicas: prev.terminating_replicas,
    };
    let cond = if available >= util::replicas(d) - util::max_unavailable(d) {
        util::condition(
            util::AVAILABLE,
            "True",
            util::MIN_AVAILABLE_REASON,
            "Deployment has minimum availability.".into(),
        )
    } else {
        util::condition(
            util::AVAILABLE,
            "False",
            util::MIN_UNAVAILABLE_REASON,
            "Deployment does not have minimum availability.".into(),
        )
    };
    util::set_condition(&mut st, cond);
    st
}

/// Counts as the API gives them back: zero counts are omitted there.
pub fn same_status(a: &DeploymentStatus, b: &DeploymentStatus) -> bool {
    let norm = |s: &DeploymentStatus| {
        let z = |v: Option<i32>| v.filter(|n| *n != 0);
        (
            s.observed_generation.filter(|n| *n != 0),
            z(s.replicas),
            z(s.updated_replicas),
            z(s.ready_replicas),
            z(s.available_replicas),
            z(s.unavailable_replicas),
            s.collision_count,
            s.conditions.clone().unwrap_or_default(),
        )
    };
    norm(a) == norm(b)
}

/// `syncDeploymentStatus`: writes the status if it changed.
pub async fn sync_status(
    ctx: &Ctx,
    d: &mut Deployment,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Result<()> {
    let st = calculate_status(d, new, old);
    if same_status(&d.status.clone().unwrap_or_default(), &st) {
        return Ok(());
    }
    d.status = Some(st);
    ctx.update_status(d).await
}

/// `syncStatusOnly`: a Deployment being deleted only reports.
pub async fn sync_status_only(ctx: &Ctx, d: &mut Deployment, rs_list: &[ReplicaSet]) -> Result<()> {
    let (new, old) = all_and_sync_revision(ctx, d, rs_list, false).await?;
    sync_status(ctx, d, new.as_ref(), &old).await
}
