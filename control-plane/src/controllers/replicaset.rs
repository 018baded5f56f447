//! The ReplicaSet controller (`pkg/controller/replicaset/replica_set.go`), one implementation
//! for ReplicaSets and ReplicationControllers (upstream runs the same code for both, the RC
//! through a conversion): keep `spec.replicas` active pods matching the selector, adopting
//! orphans and releasing pods that no longer match, and report what it sees in `status`.
//!
//! It acts only when its expectations are met (what it created and deleted has shown up on
//! its pod watch), so a slow watch never makes it create or delete twice; status is updated
//! either way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::TryStreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::NamespaceResourceScope;
use k8s_rules::labels::Selector;
use k8s_rules::pods::{is_active, is_available, ready_since, sort_for_deletion, Ranked};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::podcontrol::{self, claim, controller_of, key_of, slow_start, PodControl};
use crate::reconcile::Cache;
use crate::reconcile::{self, Error, Result};

/// At most this many pods are created or deleted in one sync (upstream's `BurstReplicas`).
const BURST: usize = 500;

/// What the controller needs of the kind it manages.
pub trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The controller's name: its events' source, its log lines.
    const COMPONENT: &'static str;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn pod_selector(&self) -> Selector;
    fn template(&self) -> Option<&PodTemplateSpec>;
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn pod_selector(&self) -> Selector {
        podcontrol::selector(self.spec.as_ref().map(|s| &s.selector))
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn pod_selector(&self) -> Selector {
        match self.spec.as_ref().and_then(|s| s.selector.clone()) {
            Some(m) if !m.is_empty() => podcontrol::selector(Some(&LabelSelector {
                match_labels: Some(m),
                match_expressions: None,
            })),
            _ => Selector::nothing(),
        }
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
}

struct Ctx<K: Replicated> {
    pods: Cache<Pod>,
    owners: Cache<K>,
    control: PodControl,
}

/// Runs the ReplicaSet and ReplicationController controllers.
pub async fn run(client: kube::Client) {
    tokio::join!(
        run_for::<ReplicaSet>(client.clone()),
        run_for::<ReplicationController>(client)
    );
}

/// The owners a pod's change concerns: its controller if it is of kind `K`, else (an orphan)
/// every `K` of its namespace whose selector matches it, which may adopt it.
fn owners_of_pod<K: Replicated>(owners: &Store<K>, pod: &Pod) -> Vec<ObjectRef<K>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_of(pod) {
        let ours = r.kind == K::kind(&()) && r.api_version == K::api_version(&());
        return if ours {
            vec![ObjectRef::new(&r.name).within(&ns)]
        } else {
            vec![]
        };
    }
    if !is_active(pod) {
        return vec![];
    }
    let labels = pod.labels();
    owners
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(&ns) && o.pod_selector().matches(labels))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

pub async fn run_for<K: Replicated>(client: kube::Client) {
    let (owners, owners_writer) = reflector::store::<K>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let ctx = Arc::new(Ctx {
        pods: Cache::new(pods),
        owners: Cache::new(owners.clone()),
        control: PodControl::new(client.clone(), K::COMPONENT),
    });
    let owner_events = reflector(
        owners_writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .applied_objects();
    let observer = ctx.clone();
    // Expectations are lowered only once the pod cache holds what the watch showed, so a
    // reconcile that finds them met also finds the pods.
    let pod_events = reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff(),
    )
    .map_ok(move |ev| {
        observer.control.expectations.observe(&ev);
        ev
    })
    .touched_objects();
    let mapper_owners = owners.clone();
    let controller = Controller::for_stream(owner_events, owners)
        .watches_stream(pod_events, move |pod: Pod| {
            owners_of_pod(&mapper_owners, &pod)
        });
    reconcile::run(K::COMPONENT, controller, reconcile::<K>, ctx).await;
}

/// The error's message as upstream puts it in conditions: the apiserver's own message.
fn message(e: &Error) -> String {
    match e {
        Error::Api(e) => podcontrol::api_message(e),
        e => e.to_string(),
    }
}

async fn reconcile<K: Replicated>(rs: Arc<K>, ctx: Arc<Ctx<K>>) -> Result<Action> {
    // The pod cache must have listed before pods are counted.
    ctx.pods.synced().await?;
    let key = key_of(&*rs);
    let satisfied = ctx.control.expectations.satisfied(&key);
    let ns = rs.namespace();
    let (uid, selector) = (rs.meta().uid.as_deref(), rs.pod_selector());
    // Only the pods `claim` can keep, release or adopt are copied out of the cache: ours and
    // matching orphans, not every pod of the namespace on every pod event.
    let candidates: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && is_active(p))
        .filter(|p| match controller_of(&***p) {
            Some(r) => Some(r.uid.as_str()) == uid,
            None => selector.matches(p.labels()),
        })
        .map(|p| (**p).clone())
        .collect();
    let pods = claim(&ctx.control.client, &*rs, &selector, candidates).await?;
    let diff = pods.len() as i64 - i64::from(rs.replicas());
    let manage_err = if satisfied && rs.meta().deletion_timestamp.is_none() {
        manage(&*rs, &pods, &ctx).await.err()
    } else {
        None
    };
    let now = Timestamp::now();
    let status = calculate_status(&*rs, &pods, manage_err.as_ref(), diff, now);
    update_status(&ctx.control.client, &*rs, status).await?;
    if let Some(e) = manage_err {
        return Err(e);
    }
    Ok(match until_available(&*rs, &pods, now) {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Creates or deletes pods to reach `spec.replicas` (`manageReplicas`).
async fn manage<K: Replicated>(rs: &K, pods: &[Pod], ctx: &Ctx<K>) -> Result<()> {
    let want = usize::try_from(rs.replicas()).unwrap_or(0);
    if pods.len() < want {
        let Some(template) = rs.template() else {
            return Err(Error::Invalid(format!(
                "{} has no pod template",
                key_of(rs)
            )));
        };
        let prefix = format!("{}-", rs.name_any());
        let missing = (want - pods.len()).min(BURST);
        let (_, err) = slow_start(missing, |_| {
            let pod = PodControl::pod_from_template(
                rs,
                template,
                crate::api::objects::generated_name(&prefix),
            );
            async move { ctx.control.create(rs, pod).await.map(|_| ()) }
        })
        .await;
        return err.map_or(Ok(()), Err);
    }
    if pods.len() > want {
        let surplus = (pods.len() - want).min(BURST);
        let related = related_pods(rs, ctx);
        let mut on_node: HashMap<String, usize> = HashMap::new();
        for p in &related {
            *on_node.entry(node_of(p)).or_default() += 1;
        }
        let mut ranked: Vec<Ranked<'_>> = pods
            .iter()
            .map(|pod| Ranked {
                pod,
                rank: on_node.get(&node_of(pod)).copied().unwrap_or(0),
            })
            .collect();
        sort_for_deletion(&mut ranked, Timestamp::now());
        let results = join_all(
            ranked[..surplus]
                .iter()
                .map(|r| ctx.control.delete(rs, r.pod)),
        )
        .await;
        return results.into_iter().collect();
    }
    Ok(())
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The active pods of this owner and of its siblings under the same controller (a
/// Deployment's ReplicaSets), for the doubled-up ranks: a pod sharing its node with more of
/// them goes first (`getIndirectlyRelatedPods`).
fn related_pods<K: Replicated>(rs: &K, ctx: &Ctx<K>) -> Vec<Arc<Pod>> {
    let mut uids: HashSet<String> = rs.meta().uid.clone().into_iter().collect();
    if let Some(parent) = controller_of(rs) {
        for o in ctx.owners.state() {
            if o.namespace() == rs.namespace()
                && controller_of(&*o).is_some_and(|r| r.uid == parent.uid)
            {
                uids.extend(o.meta().uid.clone());
            }
        }
    }
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| is_active(p) && controller_of(&**p).is_some_and(|r| uids.contains(&r.uid)))
        .collect()
}

/// `calculateStatus`: counts of the owner's pods, `observedGeneration`, and the
/// `ReplicaFailure` condition while creating or deleting fails.
fn calculate_status<K: Replicated>(
    rs: &K,
    pods: &[Pod],
    manage_err: Option<&Error>,
    diff: i64,
    now: Timestamp,
) -> Value {
    let template_labels: BTreeMap<String, String> = rs
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = pods
        .iter()
        .filter(|p| {
            let l = p.labels();
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .count();
    let ready = pods.iter().filter(|p| k8s_rules::pods::is_ready(p)).count();
    let available = pods
        .iter()
        .filter(|p| is_available(p, rs.min_ready_seconds(), now))
        .count();
    let old = current_status(rs);
    let mut conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    let has_failure = conditions.iter().any(|c| c["type"] == "ReplicaFailure");
    match manage_err {
        Some(e) if !has_failure => {
            let reason = if diff < 0 {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            conditions.push(json!({"type": "ReplicaFailure", "status": "True",
                "lastTransitionTime": crate::api::objects::now(), "reason": reason, "message": message(e)}));
        }
        None if has_failure => conditions.retain(|c| c["type"] != "ReplicaFailure"),
        _ => {}
    }
    let mut status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.meta().generation.unwrap_or(0),
    });
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    status
}

fn current_status<K: Replicated>(rs: &K) -> Value {
    serde_json::to_value(rs)
        .map(|v| v["status"].clone())
        .unwrap_or(Value::Null)
}

/// The status as compared: missing counts are zero, missing conditions none.
fn normalized(status: &Value) -> Vec<Value> {
    let mut v: Vec<Value> = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .map(|f| json!(status[f].as_i64().unwrap_or(0)))
    .collect();
    v.push(
        status["conditions"]
            .as_array()
            .map_or(json!([]), |c| json!(c)),
    );
    v
}

/// Writes `status` through the status subresource, if it changed.
async fn update_status<K: Replicated>(client: &kube::Client, rs: &K, status: Value) -> Result<()> {
    if normalized(&current_status(rs)) == normalized(&status) {
        return Ok(());
    }
    let mut obj = serde_json::to_value(rs).map_err(|e| Error::Invalid(e.to_string()))?;
    obj["status"] = status;
    let obj: K = serde_json::from_value(obj).map_err(|e| Error::Invalid(e.to_string()))?;
    let api: Api<K> = Api::namespaced(client.clone(), &rs.namespace().unwrap_or_default());
    api.replace_status(&rs.name_any(), &PostParams::default(), &obj)
        .await?;
    Ok(())
}

/// With `minReadySeconds`, how long until the next ready pod becomes available (nothing
/// else will wake the owner then).
fn until_available<K: Replicated>(rs: &K, pods: &[Pod], now: Timestamp) -> Option<Duration> {
    let min = rs.min_ready_seconds();
    if min <= 0 {
        return None;
    }
    pods.iter()
        .filter(|p| !is_available(p, min, now))
        .filter_map(|p| ready_since(p).flatten())
        .map(|since| {
            let at = since + jiff::SignedDuration::from_secs(min.into());
            let left = at.duration_since(now);
            // Just past the boundary: availability is "ready for longer than".
            Duration::try_from(left).unwrap_or_default() + Duration::from_millis(50)
        })
        .min()
}

#[cfg(test)]
pub(crate) mod tests;
