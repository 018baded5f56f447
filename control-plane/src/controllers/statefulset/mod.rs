//! The StatefulSet controller (`pkg/controller/statefulset/stateful_set_control.go`), through
//! the API: pods `<set>-<ordinal>` for the ordinals `[start, start+replicas)`, each with its
//! claims (`pods.rs`); with OrderedReady a pod is created only once every lower ordinal is
//! Running and Ready, and pods beyond the range go highest first, one at a time; Parallel does
//! both at once. Revisions (`history.rs`) give each pod the current or update revision: a
//! rolling update deletes, highest ordinal first, the pods at or above the partition that are
//! not of the update revision, one at a time once the others are healthy; OnDelete leaves that
//! to the user.

mod pods;
mod revisions;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{stream, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::events::Recorder;
use super::history::{self, informer};
use super::podcontrol::{self, claim, controller_of};
use crate::reconcile::Cache;
use crate::reconcile::{self, Error, Result};
use pods::{in_ordinal_range, new_pod, ordinal, parent_and_ordinal, revision_of};
use revisions::{apply_revision, revisions_of, truncate_history};

pub use pods::{POD_INDEX_LABEL, POD_NAME_LABEL};

struct Ctx {
    client: kube::Client,
    sets: Cache<StatefulSet>,
    pods: Cache<Pod>,
    revisions: Cache<ControllerRevision>,
    recorder: Recorder,
}

fn sets_for(store: &Store<StatefulSet>, pod: &Pod) -> Vec<ObjectRef<StatefulSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_of(pod) {
        return if r.kind == "StatefulSet" {
            vec![ObjectRef::new(&r.name).within(&ns)]
        } else {
            vec![]
        };
    }
    let labels = pod.labels().clone();
    store
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| podcontrol::selector(s.spec.as_ref().map(|s| &s.selector)).matches(&labels))
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

pub async fn run(client: kube::Client) {
    let controller = Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let sets = controller.store();
    let (pods, pod_events) = informer(Api::<Pod>::all(client.clone()), |_| {});
    let (revisions, revision_events) =
        informer(Api::<ControllerRevision>::all(client.clone()), |_| {});
    let s1 = sets.clone();
    let controller = controller
        .reconcile_on(pod_events.flat_map(move |p| stream::iter(sets_for(&s1, &p))))
        .reconcile_on(revision_events.filter_map(|r| {
            let set = controller_of(&r)
                .filter(|o| o.kind == "StatefulSet")
                .map(|o| ObjectRef::new(&o.name).within(&r.namespace().unwrap_or_default()));
            std::future::ready(set)
        }));
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "statefulset-controller"),
        client,
        sets: Cache::new(sets),
        pods: Cache::new(pods),
        revisions: Cache::new(revisions),
    });
    reconcile::run("statefulset", controller, reconcile, ctx).await;
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action> {
    ctx.pods.synced().await?;
    ctx.revisions.synced().await?;
    ctx.sets.synced().await?;
    let set = (*set).clone();
    let ns = set.namespace().unwrap_or_default();
    let sel = podcontrol::selector(set.spec.as_ref().map(|s| &s.selector));
    let in_ns = |n: Option<String>| n.as_deref() == Some(ns.as_str());
    let revisions: Vec<ControllerRevision> = ctx
        .revisions
        .state()
        .iter()
        .filter(|r| in_ns(r.namespace()))
        .map(|r| (**r).clone())
        .collect();
    let mut revisions = claim(&ctx.client, &set, &sel, revisions).await?;
    // Only pods named as this set's ordinals are its members (`isMemberOf`).
    let candidates: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| in_ns(p.namespace()))
        .filter(|p| parent_and_ordinal(p).is_some_and(|(parent, _)| parent == set.name_any()))
        .map(|p| (**p).clone())
        .collect();
    let pods = claim(&ctx.client, &set, &sel, candidates).await?;
    history::sort(&mut revisions);
    let (current, update, collisions) = revisions_of(&ctx, &set, &revisions).await?;
    let (status, synced) = update_set(&ctx, &set, &current, &update, collisions, &pods).await;
    write_status(&ctx, &set, status.clone()).await?;
    synced?;
    truncate_history(&ctx, &set, &pods, &revisions, &current, &update).await?;
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    if min_ready > 0 && status.available_replicas.unwrap_or(0) != pods::replicas(&set) {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::await_change())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}
fn is_created(pod: &Pod) -> bool {
    !phase(pod).is_empty()
}
fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}
fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && k8s_rules::pods::is_ready(pod)
}
fn running_and_available(pod: &Pod, min_ready: i32) -> bool {
    phase(pod) == "Running" && k8s_rules::pods::is_available(pod, min_ready, jiff::Timestamp::now())
}
fn healthy(pod: &Pod) -> bool {
    running_and_ready(pod) && !is_terminating(pod)
}

/// `updateStatus`: counts over the given pods.
fn count(
    status: &mut StatefulSetStatus,
    min_ready: i32,
    current: &str,
    update: &str,
    pods: &[&Pod],
) {
    let (mut replicas, mut ready, mut available, mut cur, mut upd) = (0, 0, 0, 0, 0);
    for pod in pods {
        if is_created(pod) {
            replicas += 1;
        }
        if running_and_ready(pod) {
            ready += 1;
            if running_and_available(pod, min_ready) {
                available += 1;
            }
        }
        if is_created(pod) && !is_terminating(pod) {
            cur += i32::from(revision_of(pod) == current);
            upd += i32::from(revision_of(pod) == update);
        }
    }
    status.replicas = replicas;
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(cur);
    status.updated_replicas = Some(upd);
}

/// Runs `f` over `0..n`: in order, stopping at the first that blocks or fails (OrderedReady),
/// or all at once, failing if any failed (Parallel).
async fn run_for_all<F, Fut>(n: usize, monotonic: bool, f: F) -> Result<bool>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    if monotonic {
        for i in 0..n {
            if f(i).await? {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let (_, err) = podcontrol::slow_start(n, |i| {
        let fut = f(i);
        async move { fut.await.map(|_| ()) }
    })
    .await;
    match err {
        Some(e) => Err(e),
        None => Ok(false),
    }
}

/// `updateStatefulSet`: the status, and whether the sync went through.
async fn update_set(
    ctx: &Ctx,
    set: &StatefulSet,
    current: &ControllerRevision,
    update: &ControllerRevision,
    collisions: i32,
    pods: &[Pod],
) -> (StatefulSetStatus, Result<()>) {
    let (cur_name, upd_name) = (current.name_any(), update.name_any());
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        current_revision: Some(cur_name.clone()),
        update_revision: Some(upd_name.clone()),
        collision_count: Some(collisions),
        ..Default::default()
    };
    count(
        &mut status,
        min_ready,
        &cur_name,
        &upd_name,
        &pods.iter().collect::<Vec<_>>(),
    );
    let (current_set, update_set) =
        match (apply_revision(set, current), apply_revision(set, update)) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => return (status, Err(e)),
        };
    let start = pods::start_ordinal(set);
    let n = pods::replicas(set).max(0) as usize;
    let mut replicas: Vec<Option<Pod>> = vec![None; n];
    let mut condemned: Vec<Pod> = Vec::new();
    for pod in pods {
        if in_ordinal_range(pod, set) {
            replicas[(ordinal(pod) - start) as usize] = Some(pod.clone());
        } else if ordinal(pod) >= 0 {
            condemned.push(pod.clone());
        }
    }
    let partition = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .map(|r| r.partition.unwrap_or(0))
    };
    let strategy = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.type_.clone())
            .unwrap_or_else(|| "RollingUpdate".into())
    };
    // `newVersionedStatefulSetPod`: ordinals below the partition stay at the current revision.
    let versioned = |ord: i32| {
        let below = match partition(&current_set) {
            None => strategy(&current_set) == "RollingUpdate" && ord < start,
            Some(p) => ord < start + p,
        };
        if below {
            new_pod(&current_set, ord, &cur_name)
        } else {
            new_pod(&update_set, ord, &upd_name)
        }
    };
    for (i, slot) in replicas.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(versioned(start + i as i32));
        }
    }
    let mut replicas: Vec<Pod> = replicas.into_iter().flatten().collect();
    condemned.sort_by_key(|p| std::cmp::Reverse(ordinal(p)));
    let first_unhealthy = replicas
        .iter()
        .chain(condemned.iter().rev())
        .find(|p| !healthy(p))
        .map(|p| p.name_any());
    let recount = |status: &mut StatefulSetStatus, replicas: &[Pod], condemned: &[Pod]| {
        let all: Vec<&Pod> = replicas.iter().chain(condemned).collect();
        count(status, min_ready, &cur_name, &upd_name, &all);
    };
    if set.metadata.deletion_timestamp.is_some() {
        return (status, Ok(()));
    }
    let monotonic = set
        .spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        != Some("Parallel");

    // Living replicas: replace finished pods, create missing ones, and in OrderedReady stop
    // at the first that is not yet Running and Ready.
    let fresh: Vec<std::sync::Mutex<Option<Pod>>> = replicas
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let r = run_for_all(replicas.len(), monotonic, |i| {
        let mut pod = replicas[i].clone();
        let fresh = &fresh[i];
        let versioned = &versioned;
        async move {
            if matches!(phase(&pod), "Failed" | "Succeeded") {
                let (reason, kind, what) = if phase(&pod) == "Failed" {
                    ("RecreatingFailedPod", "Warning", "failed")
                } else {
                    ("RecreatingTerminatedPod", "Normal", "terminated")
                };
                let msg = format!(
                    "StatefulSet {}/{} is recreating {what} Pod {}",
                    set.namespace().unwrap_or_default(),
                    set.name_any(),
                    pod.name_any()
                );
                let about = super::events::reference(set);
                ctx.recorder.post(about, kind, reason, &msg).await;
                ctx.delete_pod(set, &pod).await?;
                pod = versioned(ordinal(&pod));
                *fresh.lock().expect("replica lock") = Some(pod.clone());
            }
            if !is_created(&pod) {
                if ctx.claim_is_stale(set, &pod).await? {
                    return Ok(true);
                }
                ctx.create_pod(set, &pod).await?;
                return Ok(monotonic);
            }
            if phase(&pod) == "Pending" {
                ctx.create_missing_claims(set, &pod).await?;
            }
            if monotonic
                && (is_terminating(&pod)
                    || !running_and_ready(&pod)
                    || !running_and_available(&pod, min_ready))
            {
                return Ok(true);
            }
            if !pods::identity_matches(set, &pod)
                || !pods::storage_matches(set, &pod)
                || !ctx.claims_match_policy(set, &pod).await.unwrap_or(true)
            {
                ctx.restore_pod(set, &pod).await?;
            }
            Ok(false)
        }
    })
    .await;
    for (slot, f) in replicas.iter_mut().zip(fresh) {
        if let Some(p) = f.into_inner().expect("replica lock") {
            *slot = p;
        }
    }
    match r {
        Ok(false) => {}
        Ok(true) => {
            recount(&mut status, &replicas, &condemned);
            return (status, Ok(()));
        }
        Err(e) => {
            recount(&mut status, &replicas, &condemned);
            return (status, Err(e));
        }
    }

    // Condemned pods' claims get the owners the retention policy gives scaled-down pods.
    let fixed = run_for_all(condemned.len(), monotonic, |i| {
        let pod = &condemned[i];
        async move {
            if !ctx.claims_match_policy(set, pod).await? {
                ctx.update_claim_owners(set, pod).await?;
            }
            Ok(false)
        }
    })
    .await;
    if let Err(e) = fixed {
        recount(&mut status, &replicas, &condemned);
        return (status, Err(e));
    }

    // Scale down: highest ordinal first; in OrderedReady one at a time, and only while the
    // rest are healthy (or it is itself the first unhealthy pod).
    let r = run_for_all(condemned.len(), monotonic, |i| {
        let pod = &condemned[i];
        let first_unhealthy = &first_unhealthy;
        async move {
            if is_terminating(pod) {
                return Ok(monotonic);
            }
            let is_first = first_unhealthy.as_deref() == Some(pod.name_any().as_str());
            if monotonic
                && !is_first
                && (!running_and_ready(pod) || !running_and_available(pod, min_ready))
            {
                return Ok(true);
            }
            ctx.delete_pod(set, pod).await?;
            Ok(true)
        }
    })
    .await;
    recount(&mut status, &replicas, &condemned);
    match r {
        Ok(false) => {}
        Ok(true) => return (status, Ok(())),
        Err(e) => return (status, Err(e)),
    }
    if strategy(set) == "OnDelete" {
        return (status, Ok(()));
    }

    // Rolling update: from the highest ordinal down to the partition, the first pod not of
    // the update revision is deleted (its replacement comes at the update revision), once
    // every pod above it is healthy.
    let update_min = partition(set).unwrap_or(0).max(0) as usize;
    let max_unavailable = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let Some(max_unavailable) = max_unavailable else {
        for pod in replicas.iter().skip(update_min).rev() {
            if revision_of(pod) != upd_name && !is_terminating(pod) {
                let r = ctx.delete_pod(set, pod).await;
                status.current_replicas = Some(status.current_replicas.unwrap_or(0) - 1);
                return (status, r);
            }
            if !healthy(pod) {
                break;
            }
        }
        return (status, Ok(()));
    };
    // maxUnavailable (`updateStatefulSetAfterInvariantEstablished`): as many at once as
    // leaves at most that many pods unhealthy.
    let max = super::daemonset::scaled(Some(max_unavailable), replicas.len() as i32, 1);
    let unhealthy = replicas.iter().filter(|p| !healthy(p)).count() as i32;
    let room = (max - unhealthy).max(0) as usize;
    let doomed: Vec<&Pod> = replicas
        .iter()
        .skip(update_min)
        .rev()
        .filter(|p| revision_of(p) != upd_name && !is_terminating(p))
        .take(room)
        .collect();
    let deleted = join_all(doomed.iter().map(|p| ctx.delete_pod(set, p))).await;
    let n = deleted.iter().filter(|r| r.is_ok()).count() as i32;
    status.current_replicas = Some(status.current_replicas.unwrap_or(0) - n);
    (status, deleted.into_iter().collect())
}

/// `updateStatefulSetStatus`: a finished rolling update makes the update revision current;
/// written only when it changed.
async fn write_status(ctx: &Ctx, set: &StatefulSet, mut status: StatefulSetStatus) -> Result<()> {
    let rolling = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling
        && status.updated_replicas.unwrap_or(0) == status.replicas
        && status.ready_replicas.unwrap_or(0) == status.replicas
    {
        status.current_replicas = status.updated_replicas;
        status.current_revision = status.update_revision.clone();
    }
    let old = set.status.clone().unwrap_or_default();
    let status = StatefulSetStatus {
        conditions: old.conditions.clone(),
        ..status
    };
    if status == old {
        return Ok(());
    }
    let api: Api<StatefulSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let mut obj = set.clone();
    obj.status = Some(status.clone());
    match api
        .replace_status(&set.name_any(), &PostParams::default(), &obj)
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let mut fresh = api.get(&set.name_any()).await?;
            fresh.status = Some(status);
            api.replace_status(&set.name_any(), &PostParams::default(), &fresh)
                .await?;
            Ok(())
        }
        r => r.map(|_| ()).map_err(Error::from),
    }
}
