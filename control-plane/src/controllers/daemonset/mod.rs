//! The DaemonSet controller (`pkg/controller/daemon/daemon_controller.go`), through the API: one
//! pod per eligible node (node selector, required node affinity, taints against the template's
//! tolerations and the ones every daemon pod gets), each pinned to its node by a required node
//! affinity term for the scheduler to bind; surplus pods and pods on nodes no longer eligible
//! deleted, failed pods replaced after a per-node back-off; rolling updates and history in
//! `update.rs`; the status counts.

mod placement;
mod update;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{stream, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::history::{informer, HASH_LABEL};
use super::podcontrol::{self, claim, controller_of, key_of, slow_start, PodControl};
use crate::reconcile::Cache;
use crate::reconcile::{self, Result};

pub use placement::{add_daemon_tolerations, pin_to_node, scaled, should_run, target_node};

/// The label naming the template generation a pod was made from (the deprecated
/// `spec.templateGeneration`, kept as an annotation on the DaemonSet).
const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// Creations at most per sync, as upstream's `BurstReplicas`.
const BURST_REPLICAS: usize = 250;
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

struct Ctx {
    client: kube::Client,
    daemonsets: Cache<DaemonSet>,
    pods: Cache<Pod>,
    nodes: Cache<Node>,
    revisions: Cache<ControllerRevision>,
    control: Arc<PodControl>,
    /// Failed pods per (DaemonSet, generation, node): (delay, last failure), as client-go's
    /// `flowcontrol.Backoff` (1 s doubling to 15 min), so a kubelet rejecting pods is not
    /// fought in a hot loop.
    backoff: Mutex<HashMap<String, (Duration, Instant)>>,
}

/// The DaemonSets a pod's change concerns: its controller, or for an orphan every DaemonSet
/// of its namespace that selects it (which may adopt it).
fn daemonsets_for(store: &Store<DaemonSet>, pod: &Pod) -> Vec<ObjectRef<DaemonSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_of(pod) {
        return if r.kind == "DaemonSet" {
            vec![ObjectRef::new(&r.name).within(&ns)]
        } else {
            vec![]
        };
    }
    let labels = pod.labels().clone();
    store
        .state()
        .iter()
        .filter(|ds| ds.namespace().as_deref() == Some(ns.as_str()))
        .filter(|ds| {
            let sel = ds.spec.as_ref().map(|s| &s.selector);
            podcontrol::selector(sel).matches(&labels)
        })
        .map(|ds| ObjectRef::from_obj(&**ds))
        .collect()
}

pub async fn run(client: kube::Client) {
    let control = Arc::new(PodControl::new(client.clone(), "daemonset-controller"));
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let daemonsets = controller.store();
    let observer = control.clone();
    let (pods, pod_events) = informer(Api::<Pod>::all(client.clone()), move |e| {
        observer.expectations.observe(e)
    });
    let (nodes, node_events) = informer(Api::<Node>::all(client.clone()), |_| {});
    let (revisions, revision_events) =
        informer(Api::<ControllerRevision>::all(client.clone()), |_| {});
    let (s1, s2) = (daemonsets.clone(), daemonsets.clone());
    let controller = controller
        .reconcile_on(pod_events.flat_map(move |p| stream::iter(daemonsets_for(&s1, &p))))
        .reconcile_on(node_events.flat_map(move |_| {
            let all: Vec<_> = s2
                .state()
                .iter()
                .map(|d| ObjectRef::from_obj(&**d))
                .collect();
            stream::iter(all)
        }))
        .reconcile_on(revision_events.filter_map(|r| {
            let ds = controller_of(&r)
                .filter(|o| o.kind == "DaemonSet")
                .map(|o| ObjectRef::new(&o.name).within(&r.namespace().unwrap_or_default()));
            std::future::ready(ds)
        }));
    let ctx = Arc::new(Ctx {
        client,
        daemonsets: Cache::new(daemonsets),
        pods: Cache::new(pods),
        nodes: Cache::new(nodes),
        revisions: Cache::new(revisions),
        control,
        backoff: Mutex::default(),
    });
    reconcile::run("daemonset", controller, reconcile, ctx).await;
}

async fn caches_ready(ctx: &Ctx) -> Result<()> {
    ctx.pods.synced().await?;
    ctx.nodes.synced().await?;
    ctx.revisions.synced().await?;
    ctx.daemonsets.synced().await?;
    Ok(())
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action> {
    caches_ready(&ctx).await?;
    let ds = (*ds).clone();
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
    {
        ctx.control
            .recorder
            .warning(
                &ds,
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required.",
            )
            .await;
        return Ok(Action::await_change());
    }
    let key = key_of(&ds);
    let nodes: Vec<Node> = ctx.nodes.state().iter().map(|n| (**n).clone()).collect();
    let (cur, old) = update::construct_history(&ctx, &ds).await?;
    let hash = cur.labels().get(HASH_LABEL).cloned().unwrap_or_default();
    if !ctx.control.expectations.satisfied(&key) {
        update_status(&ctx, &ds, &nodes, &hash, false).await?;
        return Ok(Action::await_change());
    }
    let mut requeue = None;
    let synced = async {
        requeue = manage(&ctx, &ds, &nodes, &hash).await?;
        if ctx.control.expectations.satisfied(&key) && update::strategy_type(&ds) == "RollingUpdate"
        {
            update::rolling_update(&ctx, &ds, &nodes, &hash).await?;
        }
        update::cleanup_history(&ctx, &ds, old).await
    }
    .await;
    let status = update_status(&ctx, &ds, &nodes, &hash, true).await;
    synced?;
    let resync = status?;
    Ok(match requeue.into_iter().chain(resync).min() {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// The DaemonSet's pods (after adoption and release), by the node each is on or pinned to;
/// finished pods already being deleted are left out.
async fn pods_by_node(ctx: &Ctx, ds: &DaemonSet) -> Result<HashMap<String, Vec<Pod>>> {
    let ns = ds.namespace().unwrap_or_default();
    let candidates: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .map(|p| (**p).clone())
        .collect();
    let sel = podcontrol::selector(ds.spec.as_ref().map(|s| &s.selector));
    let mine = claim(&ctx.client, ds, &sel, candidates).await?;
    let mut out: HashMap<String, Vec<Pod>> = HashMap::new();
    for pod in mine {
        if k8s_rules::pods::is_finished(&pod) && pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(node) = target_node(&pod) {
            out.entry(node).or_default().push(pod);
        }
    }
    Ok(out)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// `podByCreationTimestampAndPhase`: bound pods first, then the oldest, then by name.
fn sort_oldest_first(pods: &mut [Pod]) {
    pods.sort_by(|a, b| {
        let bound = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty())
        };
        bound(b)
            .cmp(&bound(a))
            .then_with(|| {
                let t = |p: &Pod| p.metadata.creation_timestamp.clone().map(|t| t.0);
                t(a).cmp(&t(b))
            })
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

fn template_generation(ds: &DaemonSet) -> Option<String> {
    ds.annotations()
        .get(TEMPLATE_GENERATION_ANNOTATION)
        .cloned()
}

/// `IsPodUpdated`: made from the current revision (or template generation).
fn is_updated(pod: &Pod, hash: &str, generation: Option<&str>) -> bool {
    let labels = pod.labels();
    (!hash.is_empty() && labels.get(HASH_LABEL).map(String::as_str) == Some(hash))
        || generation
            .is_some_and(|g| labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str) == Some(g))
}

fn surge_allowed(ds: &DaemonSet) -> bool {
    update::strategy_type(ds) == "RollingUpdate"
        && update::max_surge_spec(ds).is_some_and(|s| {
            !matches!(
                s,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)
            ) && s
                != &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("0%".into())
        })
}

/// `manage`: which nodes need a pod and which pods must go, then does it. The earliest time a
/// node in back-off should be looked at again.
async fn manage(ctx: &Ctx, ds: &DaemonSet, nodes: &[Node], hash: &str) -> Result<Option<Duration>> {
    let by_node = pods_by_node(ctx, ds).await?;
    let mut need: Vec<String> = Vec::new();
    let mut delete: Vec<Pod> = Vec::new();
    let mut retry: Option<Duration> = None;
    let observed = ds
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    for node in nodes {
        let name = node.name_any();
        let (run, keep) = should_run(node, ds);
        let pods = by_node.get(&name);
        match (run, keep, pods) {
            (true, _, None) => need.push(name),
            (_, true, Some(pods)) => {
                let mut running = Vec::new();
                for pod in pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                {
                    match phase(pod) {
                        "Failed" => {
                            let key = format!("{}/{observed}/{name}", ds.uid().unwrap_or_default());
                            if let Some(wait) = ctx.in_backoff(&key) {
                                retry = Some(retry.map_or(wait, |r: Duration| r.min(wait)));
                                continue;
                            }
                            ctx.next_backoff(&key);
                            let msg = format!(
                                "Found failed daemon pod {}/{} on node {name}, will try to kill it",
                                pod.namespace().unwrap_or_default(),
                                pod.name_any()
                            );
                            ctx.control
                                .recorder
                                .warning(ds, "FailedDaemonPod", &msg)
                                .await;
                            delete.push(pod.clone());
                        }
                        "Succeeded" => delete.push(pod.clone()),
                        _ => running.push(pod.clone()),
                    }
                }
                if running.len() <= 1 {
                    continue;
                }
                sort_oldest_first(&mut running);
                if !surge_allowed(ds) {
                    delete.extend(running.into_iter().skip(1));
                    continue;
                }
                // With surge, an old and a new pod may share a node while the new one becomes
                // available; anything beyond the oldest of each goes.
                let generation = template_generation(ds);
                let (mut newest, mut oldest) = (None, None);
                for pod in running {
                    let slot = if is_updated(&pod, hash, generation.as_deref()) {
                        &mut newest
                    } else {
                        &mut oldest
                    };
                    if slot.is_none() {
                        *slot = Some(pod);
                    } else {
                        delete.push(pod);
                    }
                }
                if let (Some(new), Some(old)) = (newest, oldest) {
                    let min_ready = ds
                        .spec
                        .as_ref()
                        .and_then(|s| s.min_ready_seconds)
                        .unwrap_or(0);
                    if !k8s_rules::pods::is_ready(&old)
                        || k8s_rules::pods::is_available(&new, min_ready, jiff::Timestamp::now())
                    {
                        delete.push(old);
                    }
                }
            }
            (_, false, Some(pods)) => delete.extend(
                pods.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .cloned(),
            ),
            _ => {}
        }
    }
    // Unbound pods pinned to nodes that no longer exist (bound ones are the pod GC's).
    for (node, pods) in &by_node {
        if nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(node))
        {
            continue;
        }
        delete.extend(
            pods.iter()
                .filter(|p| target_node_unbound(p) && p.metadata.deletion_timestamp.is_none())
                .cloned(),
        );
    }
    sync_nodes(ctx, ds, delete, need, hash).await?;
    Ok(retry)
}

fn target_node_unbound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
}

impl Ctx {
    /// How much longer this node's failed pods wait, if they are in back-off.
    fn in_backoff(&self, key: &str) -> Option<Duration> {
        let m = self.backoff.lock().expect("backoff lock");
        let (delay, at) = m.get(key)?;
        let since = at.elapsed();
        (since < *delay).then(|| *delay - since)
    }

    fn next_backoff(&self, key: &str) {
        let mut m = self.backoff.lock().expect("backoff lock");
        m.retain(|_, (_, at)| at.elapsed() <= 2 * BACKOFF_MAX);
        let delay = match m.get(key) {
            Some((d, _)) => (*d * 2).min(BACKOFF_MAX),
            None => BACKOFF_INITIAL,
        };
        m.insert(key.to_string(), (delay, Instant::now()));
    }
}

/// The pod `ds` runs on `node`: its template, the daemon tolerations, pinned to the node,
/// labelled with the revision hash and template generation, named `<ds>-<5 chars>`.
fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let mut template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let spec = template.spec.get_or_insert_with(Default::default);
    spec.affinity = Some(pin_to_node(spec.affinity.take(), node));
    add_daemon_tolerations(spec);
    let meta = template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    if let Some(g) = template_generation(ds) {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), g);
    }
    labels.insert(HASH_LABEL.into(), hash.into());
    let name = crate::api::objects::generated_name(&format!("{}-", ds.name_any()));
    PodControl::pod_from_template(ds, &template, name)
}

/// `syncNodes`: deletes `delete` and creates a pod on each of `nodes` (at most
/// `BURST_REPLICAS`, in slow-start batches).
async fn sync_nodes(
    ctx: &Ctx,
    ds: &DaemonSet,
    delete: Vec<Pod>,
    nodes: Vec<String>,
    hash: &str,
) -> Result<()> {
    let nodes = &nodes[..nodes.len().min(BURST_REPLICAS)];
    let (_, err) = slow_start(nodes.len(), |i| {
        let pod = daemon_pod(ds, &nodes[i], hash);
        async move { ctx.control.create(ds, pod).await.map(|_| ()) }
    })
    .await;
    let deleted = join_all(delete.iter().map(|p| ctx.control.delete(ds, p))).await;
    if let Some(e) = err {
        return Err(e);
    }
    deleted.into_iter().collect()
}

/// `updateDaemonSetStatus`: the counts over eligible nodes, written when they changed. When
/// ready pods are still short of available, a resync after minReadySeconds.
async fn update_status(
    ctx: &Ctx,
    ds: &DaemonSet,
    nodes: &[Node],
    hash: &str,
    observed: bool,
) -> Result<Option<Duration>> {
    let by_node = pods_by_node(ctx, ds).await?;
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let generation = template_generation(ds);
    let now = jiff::Timestamp::now();
    let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) =
        (0, 0, 0, 0, 0, 0);
    for node in nodes {
        let (run, _) = should_run(node, ds);
        let pods = by_node.get(&node.name_any()).filter(|p| !p.is_empty());
        match (run, pods) {
            (true, None) => desired += 1,
            (true, Some(pods)) => {
                desired += 1;
                current += 1;
                let mut pods = pods.clone();
                sort_oldest_first(&mut pods);
                let pod = &pods[0];
                if k8s_rules::pods::is_ready(pod) {
                    ready += 1;
                    if k8s_rules::pods::is_available(pod, min_ready, now) {
                        available += 1;
                    }
                }
                if is_updated(pod, hash, generation.as_deref()) {
                    updated += 1;
                }
            }
            (false, Some(_)) => misscheduled += 1,
            (false, None) => {}
        }
    }
    let old = ds.status.clone().unwrap_or_default();
    let generation = ds.metadata.generation;
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        updated_number_scheduled: Some(updated),
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        observed_generation: if observed {
            generation
        } else {
            old.observed_generation
        },
        ..old.clone()
    };
    if status != old {
        // `storeDaemonSetStatus`: an update of the status (what the role allows), once more
        // on a fresh copy after a conflict.
        let api: Api<DaemonSet> =
            Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
        let mut obj = ds.clone();
        obj.status = Some(status.clone());
        let pp = PostParams::default();
        match api.replace_status(&ds.name_any(), &pp, &obj).await {
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let mut fresh = api.get(&ds.name_any()).await?;
                fresh.status = Some(status);
                api.replace_status(&ds.name_any(), &pp, &fresh).await?;
            }
            r => {
                r?;
            }
        }
    }
    Ok((min_ready > 0 && ready != available).then(|| Duration::from_secs(min_ready as u64)))
}
