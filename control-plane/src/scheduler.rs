//! A minimal scheduler on the reconcile framework, acting through the API as kube-scheduler
//! does: pods with no node and `schedulerName: default-scheduler` are bound (`pods/binding`) to
//! the node that fits them (kube-scheduler's filters in its order: not unschedulable unless the
//! pod tolerates the cordon's taint, taints tolerated, nodeSelector and required node affinity,
//! pod count and requests within allocatable including the pods already there) with the most
//! room left (least allocated). Pods that fit nowhere get `PodScheduled=False`, reason
//! `Unschedulable`, with kube-scheduler's message (every reason of the first failing filter per
//! node, the counts sorted as upstream's), and are retried every 5 s and whenever a node
//! changes. One pod is placed at a time (the scheduling cycle); its binding, an API write, runs
//! beside the next pods' cycles (kube-scheduler's binding cycle), and a pod placed counts on its
//! node from the moment it is placed until the watch shows it there (kube-scheduler's
//! "assumed" pods), so two pods never take one place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Binding, Node, ObjectReference, Pod, PodCondition, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_rules::nodeaffinity::{required_node_affinity_matches, NodeFacts};
use k8s_rules::quantity::Milli;
use k8s_rules::resources::pod_request;
use k8s_rules::taints::{blocks_scheduling, find_untolerated, tolerated};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};

use crate::reconcile::Cache;
use crate::reconcile::{self, Result};

/// Unschedulable pods are tried again this often (kube-scheduler flushes them within 5 min;
/// podlet's clusters are small enough to retry sooner).
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(5);

/// Bindings under way at once (the scheduling cycles themselves take turns).
const BINDINGS: u16 = 16;

/// A pod's effective requests.
#[derive(Debug, Clone, Copy, Default)]
struct Requests {
    cpu: Milli,
    memory: Milli,
}

impl Requests {
    fn of(pod: &Pod) -> Self {
        // Read in place: this runs for every pod on every scheduling cycle.
        pod.spec.as_ref().map_or_else(Self::default, |spec| Self {
            cpu: pod_request(spec, "cpu"),
            memory: pod_request(spec, "memory"),
        })
    }

    fn get(&self, res: &str) -> Milli {
        if res == "cpu" {
            self.cpu
        } else {
            self.memory
        }
    }
}

struct Scheduler {
    client: kube::Client,
    pods: Cache<Pod>,
    nodes: Cache<Node>,
    /// Pods placed by this scheduler that the pod cache does not show bound yet: uid → (node,
    /// requests).
    assumed: Mutex<HashMap<String, (String, Requests)>>,
    /// Held through one pod's scheduling cycle.
    cycle: tokio::sync::Mutex<()>,
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Unbound, ours, not going, and not held back by scheduling gates (a gated pod waits, with
/// no status or event from the scheduler, until its gates are removed).
fn is_pending(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    node_name(pod).is_none()
        && spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_none_or(Vec::is_empty)
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler")
            == "default-scheduler"
        && pod.metadata.deletion_timestamp.is_none()
}

fn is_live(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn allocatable(node: &Node, res: &str) -> Option<Milli> {
    node.status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get(res)
        .and_then(|q| Milli::of(q).ok())
}

/// Why `node` cannot take `pod`, or nothing when it fits: the reasons of the first filter that
/// fails, in kube-scheduler's order (NodeUnschedulable, TaintToleration, NodeAffinity,
/// NodeResourcesFit) and with its texts; NodeResourcesFit names every resource short.
/// `on_node` are the requests of the pods already there.
fn misfit(pod: &Pod, wants: Requests, node: &Node, on_node: &[Requests]) -> Vec<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let node_spec = node.spec.clone().unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    // A cordoned node still takes pods that tolerate its unschedulable taint (DaemonSets').
    let cordon = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if node_spec.unschedulable == Some(true) && !tolerated(&tolerations, &cordon) {
        return vec!["node(s) were unschedulable".into()];
    }
    let taints = node_spec.taints.unwrap_or_default();
    if let Some(t) = find_untolerated(&taints, &tolerations, blocks_scheduling) {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or_default()
        )];
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let facts = NodeFacts {
        name: node.metadata.name.as_deref().unwrap_or_default(),
        labels: &labels,
    };
    if !required_node_affinity_matches(&spec, facts) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    let mut short = Vec::new();
    let max_pods = allocatable(node, "pods").map(Milli::value);
    if max_pods.is_some_and(|m| on_node.len() as i128 + 1 > m) {
        short.push("Too many pods".into());
    }
    for res in ["cpu", "memory"] {
        let Some(cap) = allocatable(node, res) else {
            continue;
        };
        let used: Milli = on_node.iter().map(|r| r.get(res)).sum();
        if used + wants.get(res) > cap {
            short.push(format!("Insufficient {res}"));
        }
    }
    short
}

/// The share of the node's allocatable CPU and memory left once `wants` is placed.
fn free_fraction(node: &Node, on_node: &[Requests], wants: Requests) -> f64 {
    let mut score = 0.0;
    for res in ["cpu", "memory"] {
        if let Some(cap) = allocatable(node, res).filter(|c| *c > Milli::ZERO) {
            let used: Milli = on_node.iter().map(|r| r.get(res)).sum::<Milli>() + wants.get(res);
            score += 1.0 - used.milli() as f64 / cap.milli() as f64;
        }
    }
    score
}

/// kube-scheduler's FailedScheduling message.
fn unschedulable_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        // kube-scheduler's ErrNoNodesAvailable, not a fit error over zero nodes.
        return "no nodes available to schedule pods".into();
    }
    let mut msg = format!("0/{nodes} nodes are available");
    if reasons.is_empty() {
        msg.push('.');
    } else {
        // As upstream's FitError: the "<count> <reason>" strings sorted as strings.
        let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        msg = format!("{msg}: {}.", parts.join(", "));
    }
    msg
}

impl Scheduler {
    /// Requests of the live pods on each node, the assumed ones included.
    fn usage(&self) -> HashMap<String, Vec<Requests>> {
        let pods = self.pods.state();
        let mut assumed = self.assumed.lock().expect("assumed lock");
        // An assumed pod is settled once the cache shows it bound, or gone. (One pass over
        // the pods: a search per assumed pod made scheduling N pods cost N³.)
        if !assumed.is_empty() {
            let unbound: HashSet<&str> = pods
                .iter()
                .filter(|p| node_name(p).is_none())
                .filter_map(|p| p.metadata.uid.as_deref())
                .collect();
            assumed.retain(|uid, _| unbound.contains(uid.as_str()));
        }
        let mut usage: HashMap<String, Vec<Requests>> = HashMap::new();
        for p in pods.iter().filter(|p| is_live(p)) {
            if let Some(n) = node_name(p) {
                usage
                    .entry(n.to_string())
                    .or_default()
                    .push(Requests::of(p));
            }
        }
        for (node, r) in assumed.values() {
            usage.entry(node.clone()).or_default().push(*r);
        }
        usage
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<()> {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        pods.create_subresource::<Binding, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await?;
        tracing::info!(pod = %format!("{ns}/{name}"), node, "scheduled");
        Ok(())
    }

    /// Records why the pod fits nowhere, unless that is what it already says.
    async fn mark_unschedulable(&self, pod: &Pod, message: String) -> Result<()> {
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if conditions.iter().any(|c| {
            c.type_ == "PodScheduled"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message.as_str())
        }) {
            return Ok(());
        }
        let mut updated = pod.clone();
        let status = updated.status.get_or_insert_with(PodStatus::default);
        let conds = status.conditions.get_or_insert_with(Vec::new);
        conds.retain(|c| c.type_ != "PodScheduled");
        conds.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message),
            last_transition_time: Some(Time(jiff::Timestamp::now())),
            ..Default::default()
        });
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        pods.replace_status(&pod.name_any(), &PostParams::default(), &updated)
            .await?;
        Ok(())
    }
}

async fn reconcile(pod: Arc<Pod>, s: Arc<Scheduler>) -> Result<Action> {
    if !is_pending(&pod) {
        return Ok(Action::await_change());
    }
    // No pod is judged against a node list that has not been read yet. The reconcile runs in
    // its own task while the controller keeps polling the node watch, so this wait ends.
    if s.nodes.synced().await.is_err() {
        return Ok(Action::requeue(RETRY_UNSCHEDULABLE));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let wants = Requests::of(&pod);
    let node = {
        // The scheduling cycle: one pod at a time, against what is placed so far.
        let _cycle = s.cycle.lock().await;
        if s.assumed.lock().expect("assumed lock").contains_key(&uid) {
            // Placed already; its binding is under way.
            return Ok(Action::await_change());
        }
        let usage = s.usage();
        let nodes = s.nodes.state();
        let mut best: Option<(f64, &str)> = None;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for node in &nodes {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let on = usage.get(name).map(Vec::as_slice).unwrap_or_default();
            let why = misfit(&pod, wants, node, on);
            if why.is_empty() {
                let score = free_fraction(node, on, wants);
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, name));
                }
            }
            for w in why {
                *reasons.entry(w).or_default() += 1;
            }
        }
        let Some((_, node)) = best else {
            drop(_cycle);
            s.mark_unschedulable(&pod, unschedulable_message(nodes.len(), &reasons))
                .await?;
            return Ok(Action::requeue(RETRY_UNSCHEDULABLE));
        };
        s.assumed
            .lock()
            .expect("assumed lock")
            .insert(uid.clone(), (node.to_string(), wants));
        node.to_string()
    };
    // The binding cycle, beside the next pods' scheduling cycles.
    match s.bind(&pod, &node).await {
        Ok(()) => Ok(Action::await_change()),
        Err(e) => {
            s.assumed.lock().expect("assumed lock").remove(&uid);
            match e {
                // Bound or deleted meanwhile: the watch brings the news.
                reconcile::Error::Api(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    Ok(Action::await_change())
                }
                e => Err(e),
            }
        }
    }
}

/// Runs the scheduler with `client` until the process ends (or the task is aborted when the
/// lease is lost).
pub async fn run(client: kube::Client) {
    let (nodes, writer) = reflector::store::<Node>();
    let node_events = reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .with_config(Config::default().concurrency(BINDINGS));
    let pods = controller.store();
    let pending = pods.clone();
    // A node that comes, goes or changes may fit the pods waiting for one.
    let controller = controller.watches_stream(node_events, move |_node: Node| {
        pending
            .state()
            .into_iter()
            .filter(|p| is_pending(p))
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    });
    let ctx = Arc::new(Scheduler {
        client,
        pods: Cache::new(pods),
        nodes: Cache::new(nodes),
        assumed: Mutex::new(HashMap::new()),
        cycle: tokio::sync::Mutex::new(()),
    });
    reconcile::run("scheduler", controller, reconcile, ctx).await;
}

#[cfg(test)]
mod loop_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_rules::quantity::milli;
    use serde_json::{json, Value};

    #[test]
    fn quantities_and_fit() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(milli("1e3"), Some(1_000_000));
        assert_eq!(milli("bogus"), None);
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n", "labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "2"}}})).unwrap();
        let pod = |cpu: &str, extra: Value| {
            let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}], "tolerations": [{"key": "gpu", "operator": "Exists"}]}});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    p["spec"][k] = v.clone();
                }
            }
            serde_json::from_value::<Pod>(p).unwrap()
        };
        let fit = |p: &Pod, on: &[Requests]| misfit(p, Requests::of(p), &node, on);
        assert!(fit(&pod("500m", json!({})), &[]).is_empty());
        assert_eq!(fit(&pod("2", json!({})), &[]), ["Insufficient cpu"]);
        assert_eq!(
            fit(&pod("1m", json!({"nodeSelector": {"disk": "hdd"}})), &[]),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}}});
        assert_eq!(
            fit(&pod("1m", affinity), &[]),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        // Taints are checked before affinity (upstream's filter order): only the first
        // failing filter's reason.
        assert_eq!(
            fit(
                &pod(
                    "1m",
                    json!({"tolerations": [], "nodeSelector": {"disk": "hdd"}})
                ),
                &[]
            ),
            ["node(s) had untolerated taint {gpu: yes}"]
        );
        let a = Requests::of(&pod("600m", json!({})));
        assert_eq!(fit(&pod("500m", json!({})), &[a]), ["Insufficient cpu"]);
        // NodeResourcesFit names every resource short.
        assert_eq!(
            fit(&pod("500m", json!({})), &[a, a]),
            ["Too many pods", "Insufficient cpu"]
        );
        let big = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "memory": "2Gi"}}}]});
        assert_eq!(
            fit(&pod("1m", big), &[]),
            ["Insufficient cpu", "Insufficient memory"]
        );
        // Requests and capacity compare exactly: 1000m of a 1-CPU node fits.
        assert!(fit(&pod("1000m", json!({})), &[]).is_empty());
        // A cordoned node takes a pod tolerating its unschedulable taint.
        let mut cordoned = node.clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let on_cordoned = |p: &Pod| misfit(p, Requests::of(p), &cordoned, &[]);
        assert_eq!(
            on_cordoned(&pod("1m", json!({}))),
            ["node(s) were unschedulable"]
        );
        let tolerant = json!({"tolerations": [{"key": "gpu", "operator": "Exists"},
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]});
        assert!(on_cordoned(&pod("1m", tolerant)).is_empty());
        // Upstream sorts the "<count> <reason>" strings: "1 node(s)…" before "2 Insufficient…".
        let reasons = BTreeMap::from([
            ("Insufficient cpu".to_string(), 2),
            ("node(s) were unschedulable".to_string(), 1),
        ]);
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu."
        );
        assert_eq!(
            unschedulable_message(0, &BTreeMap::new()),
            "no nodes available to schedule pods"
        );
    }
}
