//! The disruption controller (`pkg/controller/disruption/disruption.go`): keeps each
//! PodDisruptionBudget's status, which the eviction subresource spends: how many selected pods
//! are expected (from their controllers' scale when the budget is a percentage or a
//! `maxUnavailable`), how many are healthy (ready, not being deleted, not just evicted), how
//! many must stay healthy, and so how many disruptions are allowed now; `disruptedPods` (pods
//! evicted, not yet seen deleted) are dropped once deleted or after two minutes; the
//! `DisruptionAllowed` condition (SufficientPods, InsufficientPods, SyncFailed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use super::events::Recorder;
use super::podcontrol::controller_of;
use crate::reconcile::Cache;
use crate::reconcile::{self, Error, Result};

/// How long an evicted pod may take to be deleted before it counts again (`DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

struct Ctx {
    client: kube::Client,
    pods: Cache<Pod>,
    recorder: Recorder,
}

/// The pods the budget selects: a missing selector selects none, an empty one all (policy/v1).
fn pods_of(pods: &Store<Pod>, pdb: &PodDisruptionBudget) -> Vec<Arc<Pod>> {
    let Some(sel) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return vec![];
    };
    let Ok(sel) = k8s_rules::labels::Selector::from_label_selector(Some(sel)) else {
        return vec![];
    };
    let mut out: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace == pdb.metadata.namespace)
        .filter(|p| sel.matches(&p.metadata.labels.clone().unwrap_or_default()))
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// `GetScaledValueFromIntOrPercent` rounding up.
pub fn scaled(v: &IntOrString, total: i32) -> std::result::Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let p: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            Ok(((p * i64::from(total) + 99) / 100) as i32)
        }
    }
}

fn same(uid: &str, meta_uid: Option<&String>) -> bool {
    meta_uid.is_some_and(|u| u == uid)
}

impl Ctx {
    /// The scale of the pod's controller, keyed by the UID of the object that decides it (a
    /// Deployment's ReplicaSets count as the Deployment), or None if it is no controller this
    /// finds (upstream's finders).
    async fn scale_of(&self, r: &OwnerReference, ns: &str) -> Result<Option<(String, i32)>> {
        let c = &self.client;
        let group = r.api_version.split('/').next().unwrap_or_default();
        match (group, r.kind.as_str()) {
            ("apps", "ReplicaSet") => {
                let Some(rs) = Api::<ReplicaSet>::namespaced(c.clone(), ns)
                    .get_opt(&r.name)
                    .await?
                    .filter(|rs| same(&r.uid, rs.metadata.uid.as_ref()))
                else {
                    return Ok(None);
                };
                match controller_of(&rs) {
                    Some(d) if d.kind == "Deployment" => {
                        let dep = Api::<Deployment>::namespaced(c.clone(), ns)
                            .get_opt(&d.name)
                            .await?
                            .filter(|dep| same(&d.uid, dep.metadata.uid.as_ref()));
                        Ok(dep.map(|dep| {
                            let n = dep.spec.and_then(|s| s.replicas).unwrap_or(1);
                            (d.uid.clone(), n)
                        }))
                    }
                    _ => Ok(Some((
                        r.uid.clone(),
                        rs.spec.and_then(|s| s.replicas).unwrap_or(1),
                    ))),
                }
            }
            ("v1", "ReplicationController") => {
                let rc = Api::<ReplicationController>::namespaced(c.clone(), ns)
                    .get_opt(&r.name)
                    .await
                    .or_else(not_served)?
                    .filter(|rc| same(&r.uid, rc.metadata.uid.as_ref()));
                Ok(rc.map(|rc| {
                    let n = rc.spec.and_then(|s| s.replicas).unwrap_or(1);
                    (r.uid.clone(), n)
                }))
            }
            ("apps", "StatefulSet") => {
                let api = Api::<StatefulSet>::namespaced(c.clone(), ns);
                let Some(sts) = api.get_opt(&r.name).await.or_else(not_served)? else {
                    return Ok(None);
                };
                if !same(&r.uid, sts.metadata.uid.as_ref()) {
                    return Ok(None);
                }
                let n = sts.spec.and_then(|s| s.replicas).unwrap_or(1);
                Ok(Some((r.uid.clone(), n)))
            }
            _ => Ok(None),
        }
    }

    /// `getExpectedScale`: the sum of the pods' controllers' scales; the unmanaged pods.
    async fn expected_scale(&self, pods: &[Arc<Pod>]) -> Result<(i32, Vec<String>)> {
        let mut scales: HashMap<String, i32> = HashMap::new();
        let mut seen_refs: HashMap<String, ()> = HashMap::new();
        let mut unmanaged = Vec::new();
        for pod in pods {
            let Some(r) = controller_of(&**pod) else {
                unmanaged.push(pod.name_any());
                continue;
            };
            if seen_refs.insert(r.uid.clone(), ()).is_some() {
                continue;
            }
            let ns = pod.namespace().unwrap_or_default();
            match self.scale_of(r, &ns).await? {
                Some((uid, n)) => {
                    scales.insert(uid, n);
                }
                None => {
                    return Err(Error::Invalid(format!(
                        "found no controllers for pod {:?}",
                        pod.name_any()
                    )))
                }
            }
        }
        Ok((scales.values().sum(), unmanaged))
    }

    /// `getExpectedPodCount`: (expected pods, desired healthy, unmanaged pods).
    async fn expected(
        &self,
        pdb: &PodDisruptionBudget,
        pods: &[Arc<Pod>],
    ) -> Result<(i32, i32, Vec<String>)> {
        let spec = pdb.spec.clone().unwrap_or_default();
        let invalid = |e: String| Error::Invalid(e);
        if let Some(max) = &spec.max_unavailable {
            let (expected, unmanaged) = self.expected_scale(pods).await?;
            let max = scaled(max, expected).map_err(invalid)?;
            return Ok((expected, (expected - max).max(0), unmanaged));
        }
        match &spec.min_available {
            Some(IntOrString::Int(n)) => Ok((pods.len() as i32, *n, vec![])),
            Some(min) => {
                let (expected, unmanaged) = self.expected_scale(pods).await?;
                Ok((expected, scaled(min, expected).map_err(invalid)?, unmanaged))
            }
            None => Ok((0, 0, vec![])),
        }
    }
}

fn not_served<T>(e: kube::Error) -> std::result::Result<Option<T>, kube::Error> {
    match e {
        // A kind this apiserver does not serve has no objects to find.
        kube::Error::Api(s) if s.code == 404 => Ok(None),
        e => Err(e),
    }
}

/// `countHealthyPods`.
fn count_healthy(pods: &[Arc<Pod>], disrupted: &BTreeMap<String, Time>, now: Timestamp) -> i32 {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            disrupted
                .get(&p.name_any())
                .is_none_or(|t| t.0 + DELETION_TIMEOUT <= now)
        })
        .filter(|p| k8s_rules::pods::is_ready(p))
        .count() as i32
}

/// `apimeta.SetStatusCondition` of the DisruptionAllowed condition.
fn set_condition(status: &mut PodDisruptionBudgetStatus, ok: bool, reason: &str, message: &str) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    let st = if ok { "True" } else { "False" };
    let gen = status.observed_generation;
    match conds.iter_mut().find(|c| c.type_ == "DisruptionAllowed") {
        Some(c) => {
            if c.status != st {
                c.status = st.into();
                c.last_transition_time = Time(Timestamp::now());
            }
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = gen;
        }
        None => conds.push(Condition {
            type_: "DisruptionAllowed".into(),
            status: st.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: gen,
            last_transition_time: Time(Timestamp::now()),
        }),
    }
}

async fn write_status(
    c: &Ctx,
    pdb: &PodDisruptionBudget,
    status: PodDisruptionBudgetStatus,
) -> Result<()> {
    if pdb.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut new = pdb.clone();
    new.status = Some(status);
    Api::<PodDisruptionBudget>::namespaced(c.client.clone(), &pdb.namespace().unwrap_or_default())
        .replace_status(&pdb.name_any(), &PostParams::default(), &new)
        .await?;
    Ok(())
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, c: Arc<Ctx>) -> Result<Action> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    c.pods.synced().await?;
    let pods = pods_of(&c.pods, &pdb);
    if pods.is_empty() {
        c.recorder
            .normal(&*pdb, "NoPods", "No matching pods found")
            .await;
    }
    let old = pdb.status.clone().unwrap_or_default();
    let (expected, desired, unmanaged) = match c.expected(&pdb, &pods).await {
        Ok(v) => v,
        Err(e) => {
            // failSafe: no disruption is allowed while the budget cannot be computed.
            c.recorder
                .warning(
                    &*pdb,
                    "CalculateExpectedPodCountFailed",
                    &format!("Failed to calculate the number of expected pods: {e}"),
                )
                .await;
            let mut st = old.clone();
            st.disruptions_allowed = 0;
            set_condition(&mut st, false, "SyncFailed", &e.to_string());
            write_status(&c, &pdb, st).await?;
            return Err(e);
        }
    };
    if !unmanaged.is_empty() {
        let sel = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .unwrap_or_default();
        c.recorder.warning(&*pdb, "UnmanagedPods", &format!("Pods selected by this PodDisruptionBudget (selector: {sel}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.")).await;
    }
    let now = Timestamp::now();
    let old_disrupted = old.disrupted_pods.clone().unwrap_or_default();
    let healthy = count_healthy(&pods, &old_disrupted, now);
    // `buildDisruptedPodMap`: evicted pods stay listed until deleted or two minutes passed.
    let mut disrupted = BTreeMap::new();
    let mut recheck: Option<Timestamp> = None;
    for pod in &pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(t) = old_disrupted.get(&pod.name_any()) else {
            continue;
        };
        let expected_deletion = t.0 + DELETION_TIMEOUT;
        if expected_deletion < now {
            c.recorder
                .warning(
                    &**pod,
                    "NotDeleted",
                    &format!(
                        "Pod was expected by PDB {}/{} to be deleted but it wasn't",
                        pdb.namespace().unwrap_or_default(),
                        pdb.name_any()
                    ),
                )
                .await;
            continue;
        }
        disrupted.insert(pod.name_any(), t.clone());
        recheck = Some(recheck.map_or(expected_deletion, |r| r.min(expected_deletion)));
    }
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    let mut st = PodDisruptionBudgetStatus {
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: old.conditions.clone(),
    };
    if allowed > 0 {
        set_condition(&mut st, true, "SufficientPods", "");
    } else {
        set_condition(&mut st, false, "InsufficientPods", "");
    }
    write_status(&c, &pdb, st).await?;
    Ok(match recheck {
        Some(t) => Action::requeue(
            Duration::try_from(t.duration_since(now))
                .unwrap_or_default()
                .max(Duration::from_millis(100)),
        ),
        None => Action::await_change(),
    })
}

/// Runs the disruption controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    let (pods, writer) = reflector::store::<Pod>();
    let pod_events = reflector(
        writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    );
    let pdbs = controller.store();
    let in_namespace = move |ns: Option<String>| {
        pdbs.state()
            .into_iter()
            .filter(|p| p.metadata.namespace == ns)
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    };
    let (for_pods, for_rs, for_deploy) = (in_namespace.clone(), in_namespace.clone(), in_namespace);
    // A pod that comes, goes, turns ready or changes labels; a scale that changes.
    let controller = controller
        .watches_stream(pod_events, move |p: Pod| for_pods(p.metadata.namespace))
        .watches(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
            move |rs: ReplicaSet| for_rs(rs.metadata.namespace),
        )
        .watches(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
            move |d: Deployment| for_deploy(d.metadata.namespace),
        );
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "controllermanager"),
        client,
        pods: Cache::new(pods),
    });
    reconcile::run("disruption-controller", controller, reconcile, ctx).await;
}

#[cfg(test)]
mod tests;
