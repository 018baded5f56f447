//! A DaemonSet's history and rolling updates (`pkg/controller/daemon/update.go`): the current
//! revision found or snapshotted, old ones truncated to `revisionHistoryLimit` (never one a
//! live pod was made from), and old pods replaced within maxUnavailable, or new pods surged
//! beside them within maxSurge.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

use super::placement::scaled;
use super::{is_updated, pods_by_node, should_run, sync_nodes, template_generation, Ctx};
use crate::controllers::history::{self, template_patch, HASH_LABEL};
use crate::controllers::podcontrol::{self, claim, controller_ref, template_hash};
use crate::reconcile::{Error, Result};

pub fn strategy_type(ds: &DaemonSet) -> &str {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

fn rolling(ds: &DaemonSet) -> Option<&k8s_openapi::api::apps::v1::RollingUpdateDaemonSet> {
    ds.spec
        .as_ref()?
        .update_strategy
        .as_ref()?
        .rolling_update
        .as_ref()
}

pub fn max_surge_spec(ds: &DaemonSet) -> Option<&IntOrString> {
    rolling(ds)?.max_surge.as_ref()
}

/// Whether `revision` holds the DaemonSet's template as it is now (`Match`).
fn matches(ds: &DaemonSet, revision: &ControllerRevision) -> bool {
    &template_patch(ds) == history::data(revision)
}

/// `constructHistory`: the DaemonSet's revisions (adopting and releasing by selector), the
/// one holding its current template (made if none does, renumbered to be the newest), and the
/// others.
pub async fn construct_history(
    ctx: &Ctx,
    ds: &DaemonSet,
) -> Result<(ControllerRevision, Vec<ControllerRevision>)> {
    let ns = ds.namespace().unwrap_or_default();
    let candidates: Vec<ControllerRevision> = ctx
        .revisions
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .map(|r| (**r).clone())
        .collect();
    let sel = podcontrol::selector(ds.spec.as_ref().map(|s| &s.selector));
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let (mut current, mut old) = (Vec::new(), Vec::new());
    for mut r in claim(&ctx.client, ds, &sel, candidates).await? {
        // Revisions from before the hash label name themselves (no collision to fear).
        if !r.labels().contains_key(HASH_LABEL) {
            let patch = json!({"metadata": {"labels": {HASH_LABEL: r.name_any()}}});
            r = api
                .patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        if matches(ds, &r) {
            current.push(r);
        } else {
            old.push(r);
        }
    }
    let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let cur = if current.is_empty() {
        snapshot(ctx, ds, next).await?
    } else {
        let cur = dedup(ctx, ds, current).await?;
        history::renumber(&ctx.client, &cur, cur.revision.max(next)).await?
    };
    Ok((cur, old))
}

/// `dedupCurHistories`: of several revisions of the current template, the newest stays; the
/// pods of the others are relabelled to it and the others go.
async fn dedup(
    ctx: &Ctx,
    ds: &DaemonSet,
    mut current: Vec<ControllerRevision>,
) -> Result<ControllerRevision> {
    current.sort_by_key(|r| r.revision);
    let keep = current.pop().expect("at least one current revision");
    let keep_hash = keep.labels().get(HASH_LABEL).cloned().unwrap_or_default();
    for dup in current {
        let dup_hash = dup.labels().get(HASH_LABEL).cloned().unwrap_or_default();
        for pods in pods_by_node(ctx, ds).await?.into_values() {
            for pod in pods
                .iter()
                .filter(|p| p.labels().get(HASH_LABEL) == Some(&dup_hash))
            {
                let api: Api<Pod> =
                    Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
                let patch = json!({"metadata": {"labels": {HASH_LABEL: keep_hash}}});
                api.patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            }
        }
        history::delete(&ctx.client, &dup).await?;
    }
    Ok(keep)
}

/// `snapshot`: a revision of the current template named by its hash (with the collision
/// count). A different revision under that name is a collision: the count goes up (unless
/// ours was stale) and the sync is retried with the next name.
async fn snapshot(ctx: &Ctx, ds: &DaemonSet, revision: i64) -> Result<ControllerRevision> {
    let ns = ds.namespace().unwrap_or_default();
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let template = ds.spec.as_ref().map(|s| &s.template);
    let hash = template_hash(&template, collisions);
    let name = format!("{}-{hash}", ds.name_any());
    let labels: Option<BTreeMap<String, String>> = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone());
    let mut r = ControllerRevision {
        data: Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
            template_patch(ds),
        )),
        revision,
        ..Default::default()
    };
    r.metadata.name = Some(name.clone());
    r.metadata.namespace = Some(ns.clone());
    r.metadata.labels = Some(podcontrol::with_label(labels.as_ref(), HASH_LABEL, &hash));
    r.metadata.annotations = ds.metadata.annotations.clone();
    r.metadata.owner_references = Some(vec![controller_ref(ds)]);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &r).await {
        Ok(made) => Ok(made),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&name).await?;
            if matches(ds, &existing) {
                return Ok(existing);
            }
            let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
            let fresh = dss.get(&ds.name_any()).await?;
            let fresh_count = fresh.status.as_ref().and_then(|s| s.collision_count);
            if fresh_count != collisions {
                return Err(Error::Invalid(format!(
                    "found a stale collision count ({}, expected {}) of DaemonSet {:?} while processing; will retry until it is updated",
                    collisions.unwrap_or(0),
                    fresh_count.unwrap_or(0),
                    ds.name_any()
                )));
            }
            let mut fresh = fresh;
            fresh
                .status
                .get_or_insert_with(Default::default)
                .collision_count = Some(fresh_count.unwrap_or(0) + 1);
            dss.replace_status(&ds.name_any(), &PostParams::default(), &fresh)
                .await?;
            Err(Error::Invalid(format!(
                "controllerrevision {name:?} already holds another revision (hash collision); collisionCount raised"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// `cleanupHistory`: the oldest old revisions beyond `revisionHistoryLimit` go, except those
/// some pod of the DaemonSet was made from.
pub async fn cleanup_history(
    ctx: &Ctx,
    ds: &DaemonSet,
    mut old: Vec<ControllerRevision>,
) -> Result<()> {
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let mut excess = old.len().saturating_sub(limit);
    if excess == 0 {
        return Ok(());
    }
    let live: HashSet<String> = pods_by_node(ctx, ds)
        .await?
        .into_values()
        .flatten()
        .filter_map(|p| p.labels().get(HASH_LABEL).cloned())
        .collect();
    old.sort_by_key(|r| r.revision);
    for r in old {
        if excess == 0 {
            break;
        }
        if r.labels().get(HASH_LABEL).is_some_and(|h| live.contains(h)) {
            continue;
        }
        history::delete(&ctx.client, &r).await?;
        excess -= 1;
    }
    Ok(())
}

/// The one new and the one old pod on a node (`findUpdatedPodsOnNode`); None when there are
/// more, which the manage loop sorts out first.
fn updated_and_old<'a>(
    pods: &'a [Pod],
    hash: &str,
    generation: Option<&str>,
) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_updated(pod, hash, generation) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod);
    }
    Some((new, old))
}

/// `rollingUpdate`: without surge, deletes old pods (unavailable ones first) while no more
/// than maxUnavailable nodes lack an available pod, and lets the manage loop create their
/// replacements; with surge, creates new pods beside available old ones (at most maxSurge at
/// once) and deletes each old pod once its replacement is available.
pub async fn rolling_update(ctx: &Ctx, ds: &DaemonSet, nodes: &[Node], hash: &str) -> Result<()> {
    let mut by_node = pods_by_node(ctx, ds).await?;
    let mut desired = 0;
    for node in nodes {
        if should_run(node, ds).0 {
            desired += 1;
            by_node.entry(node.name_any()).or_default();
        }
    }
    let ru = rolling(ds);
    let mut max_unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), desired, 1);
    let max_surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, 0);
    if desired > 0 && max_unavailable == 0 && max_surge == 0 {
        max_unavailable = 1;
    }
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let available = |p: &Pod| k8s_rules::pods::is_available(p, min_ready, now);
    let generation = template_generation(ds);
    let mut names: Vec<&String> = by_node.keys().collect();
    names.sort();

    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace: Vec<Pod> = Vec::new();
        let mut candidates: Vec<Pod> = Vec::new();
        for node in names {
            let Some((new, old)) = updated_and_old(&by_node[node], hash, generation.as_deref())
            else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !available(old) {
                        replace.push(old.clone());
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push(old.clone());
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).max(0) as usize;
        replace.extend(candidates.into_iter().take(room));
        return sync_nodes(ctx, ds, replace, vec![], hash).await;
    }

    let (mut delete, mut not_running): (Vec<Pod>, Vec<Pod>) = (Vec::new(), Vec::new());
    let (mut candidates, mut allowed): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let (mut surging, mut n_available) = (0, 0);
    for node in names {
        let Some((new, old)) = updated_and_old(&by_node[node], hash, generation.as_deref()) else {
            surging += 1;
            continue;
        };
        if let Some(p) = old.or(new) {
            if available(p) {
                n_available += 1;
            }
        }
        let Some(n) = nodes
            .iter()
            .find(|n| n.metadata.name.as_ref() == Some(node))
        else {
            continue;
        };
        let (run, keep) = should_run(n, ds);
        if !run && !keep {
            not_running.extend(old.cloned());
            continue;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                if !available(old) {
                    allowed.push(node.clone());
                } else if surging < max_surge {
                    candidates.push(node.clone());
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    delete.push(old.clone());
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Pods on nodes that should no longer run one go only as replacements become available.
    let deletable = (n_available - desired).max(0) as usize;
    delete.extend(not_running.into_iter().take(deletable));
    let room = (max_surge - surging).max(0) as usize;
    allowed.extend(candidates.into_iter().take(room));
    sync_nodes(ctx, ds, delete, allowed, hash).await
}
