//! The node lifecycle controller (`pkg/controller/nodelifecycle`), every
//! `--node-monitor-period`: a Node whose kubelet neither posted its Ready condition's heartbeat
//! nor renewed its Lease in `kube-node-lease` within `--node-monitor-grace-period`
//! (`--node-startup-grace-period` before its first status) gets every condition (Ready,
//! MemoryPressure, DiskPressure, PIDPressure) set Unknown with reason `NodeStatusUnknown`, a
//! `NodeNotReady` event, and its pods' Ready condition set False. Nodes not Ready are then
//! tainted `node.kubernetes.io/unreachable` (Ready Unknown) or `node.kubernetes.io/not-ready`
//! (Ready False) with effect NoExecute, at each zone's rate ([`zones`]), which the taint
//! eviction controller ([`tainteviction`]) turns into pod deletions; NoSchedule taints mirror
//! the conditions at once. When heartbeats resume the kubelet's conditions stand and the taints
//! go. Heartbeats are judged by when this controller saw them change (its own clock), as
//! upstream, so clock skew between nodes does not matter.

pub mod tainteviction;
pub mod taints;
pub mod zones;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use super::events::Recorder;
use crate::reconcile::Cache;
use taints::{NOT_READY, NO_EXECUTE, UNREACHABLE};
use zones::{Disruption, Rates, Zones};

/// Upstream's `NodeEvictionPeriod`: how often the zones' tainting queues are looked at.
const TAINT_PERIOD: Duration = Duration::from_millis(100);
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The controller's flags, with kube-controller-manager's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `--node-monitor-period`.
    pub node_monitor_period: Duration,
    /// `--node-monitor-grace-period`.
    pub node_monitor_grace_period: Duration,
    /// `--node-startup-grace-period`.
    pub node_startup_grace_period: Duration,
    /// `--node-eviction-rate`: nodes tainted per second in a healthy zone.
    pub node_eviction_rate: f32,
    /// `--secondary-node-eviction-rate`: in a partially disrupted large zone.
    pub secondary_node_eviction_rate: f32,
    /// `--unhealthy-zone-threshold`.
    pub unhealthy_zone_threshold: f32,
    /// `--large-cluster-size-threshold`.
    pub large_cluster_size_threshold: i32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_monitor_period: Duration::from_secs(5),
            node_monitor_grace_period: Duration::from_secs(50),
            node_startup_grace_period: Duration::from_secs(60),
            node_eviction_rate: 0.1,
            secondary_node_eviction_rate: 0.01,
            unhealthy_zone_threshold: 0.55,
            large_cluster_size_threshold: 50,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        for (flag, d) in [
            ("--node-monitor-period", self.node_monitor_period),
            (
                "--node-monitor-grace-period",
                self.node_monitor_grace_period,
            ),
            (
                "--node-startup-grace-period",
                self.node_startup_grace_period,
            ),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        for (flag, r) in [
            ("--node-eviction-rate", self.node_eviction_rate),
            (
                "--secondary-node-eviction-rate",
                self.secondary_node_eviction_rate,
            ),
        ] {
            if r.is_nan() || r < 0.0 {
                return Err(format!("{flag} must be 0 or more, not {r}"));
            }
        }
        let t = self.unhealthy_zone_threshold;
        if t.is_nan() || t <= 0.0 || t > 1.0 {
            return Err(format!(
                "--unhealthy-zone-threshold must be above 0 and at most 1, not {t}"
            ));
        }
        if self.large_cluster_size_threshold < 0 {
            return Err("--large-cluster-size-threshold must be 0 or more".into());
        }
        Ok(())
    }

    fn rates(&self) -> Rates {
        Rates {
            eviction: self.node_eviction_rate,
            secondary: self.secondary_node_eviction_rate,
            large_cluster: self.large_cluster_size_threshold,
            unhealthy_threshold: self.unhealthy_zone_threshold,
        }
    }
}

/// What was last seen of a node's heartbeats (`nodeHealthData`).
struct Health {
    had_ready: bool,
    heartbeat: Option<Time>,
    lease_renew: Option<MicroTime>,
    /// When a heartbeat was last seen to change.
    probe: Instant,
}

struct Lifecycle {
    client: kube::Client,
    cfg: Config,
    recorder: Recorder,
    nodes: Cache<Node>,
    leases: Cache<Lease>,
    pods: Cache<Pod>,
    health: HashMap<String, Health>,
    known: HashSet<String>,
    zones: Zones,
    /// Nodes whose pods are still to be marked not Ready.
    pods_to_retry: HashSet<String>,
}

fn node_ref(node: &Node) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: node.metadata.name.clone(),
        uid: node.metadata.uid.clone(),
        ..Default::default()
    }
}

fn status_of(c: Option<&NodeCondition>) -> &str {
    c.map_or("Unknown", |c| c.status.as_str())
}

/// The `Instant` of a wall-clock time in the past.
fn instant_of(t: Option<&Time>, now: Instant) -> Instant {
    let ago = t
        .map(|t| jiff::Timestamp::now().duration_since(t.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}

impl Lifecycle {
    /// `tryUpdateNodeHealth`: the Ready condition as observed and as it is after this pass
    /// (Unknown, written to the API, when no heartbeat came within the grace period).
    async fn update_health(&mut self, node: &Node, now: Instant) -> kube::Result<(String, String)> {
        let name = node.name_any();
        let ready = taints::condition(node, "Ready");
        let grace = if ready.is_none() {
            self.cfg.node_startup_grace_period
        } else {
            self.cfg.node_monitor_grace_period
        };
        let heartbeat = ready.and_then(|c| c.last_heartbeat_time.clone());
        let created = node.metadata.creation_timestamp.as_ref();
        let h = self.health.entry(name.clone()).or_insert_with(|| Health {
            had_ready: ready.is_some(),
            heartbeat: heartbeat.clone(),
            lease_renew: None,
            probe: if ready.is_none() {
                instant_of(created, now)
            } else {
                now
            },
        });
        if h.had_ready != ready.is_some() || (ready.is_some() && h.heartbeat != heartbeat) {
            h.probe = now;
        }
        h.had_ready = ready.is_some();
        h.heartbeat = heartbeat;
        let renew = self
            .leases
            .get(&reflector::ObjectRef::new(&name).within(LEASE_NAMESPACE))
            .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone()));
        if renew.is_some() && renew.as_ref().map(|r| r.0) > h.lease_renew.as_ref().map(|r| r.0) {
            h.lease_renew = renew;
            h.probe = now;
        }
        let observed = status_of(ready).to_string();
        if now <= h.probe + grace {
            return Ok((observed.clone(), observed));
        }
        let mut updated = node.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let stamp = Time(jiff::Timestamp::now());
        for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            match conditions.iter_mut().find(|c| c.type_ == type_) {
                None => conditions.push(NodeCondition {
                    type_: type_.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(stamp.clone()),
                }),
                Some(c) if c.status != "Unknown" => {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(stamp.clone());
                }
                Some(_) => {}
            }
        }
        let current = taints::condition(&updated, "Ready").cloned();
        if current.as_ref() == ready {
            return Ok((observed.clone(), observed));
        }
        tracing::info!(node = %name, after = ?grace, "node lifecycle: no heartbeat within the grace period: conditions Unknown");
        Api::<Node>::all(self.client.clone())
            .replace_status(&name, &PostParams::default(), &updated)
            .await?;
        if let Some(h) = self.health.get_mut(&name) {
            h.had_ready = true;
            h.heartbeat = current.as_ref().and_then(|c| c.last_heartbeat_time.clone());
        }
        Ok((observed, status_of(current.as_ref()).to_string()))
    }

    fn queue_for_tainting(&mut self, node: &Node) -> bool {
        let zone = zones::zone_key(node);
        let rate = self.cfg.node_eviction_rate;
        self.zones
            .queues
            .entry(zone)
            .or_insert_with(|| zones::RateLimitedQueue::new(rate, Instant::now()))
            .add(&node.name_any())
    }

    /// `markNodeAsReachable`: its NoExecute taints go and it leaves the tainting queue.
    async fn mark_reachable(&mut self, node: &Node) -> kube::Result<()> {
        if let Some(q) = self.zones.queues.get_mut(&zones::zone_key(node)) {
            q.remove(&node.name_any());
        }
        let gone = [
            taints::taint(UNREACHABLE, NO_EXECUTE),
            taints::taint(NOT_READY, NO_EXECUTE),
        ];
        taints::swap(&self.client, node, &[], &gone)
            .await
            .map(|_| ())
    }

    /// `processTaintBaseEviction`.
    async fn taint_based_eviction(&mut self, node: &Node, observed: &str) -> kube::Result<()> {
        let (want, opposite) = match observed {
            "False" => (NOT_READY, UNREACHABLE),
            "Unknown" => (UNREACHABLE, NOT_READY),
            _ => return self.mark_reachable(node).await,
        };
        if taints::has(node, opposite, NO_EXECUTE) {
            // Already tainted: the taint follows the condition at once.
            taints::swap(
                &self.client,
                node,
                &[taints::taint(want, NO_EXECUTE)],
                &[taints::taint(opposite, NO_EXECUTE)],
            )
            .await?;
        } else if !taints::has(node, want, NO_EXECUTE) && self.queue_for_tainting(node) {
            tracing::info!(node = %node.name_any(), ready = observed, "node lifecycle: node is not Ready, queued for tainting");
        }
        Ok(())
    }

    /// `MarkPodsNotReady`: the Ready condition of the node's pods goes False.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
                continue;
            }
            let mut pod = (*pod).clone();
            let Some(cond) = pod
                .status
                .as_mut()
                .and_then(|s| s.conditions.as_mut())
                .and_then(|c| c.iter_mut().find(|c| c.type_ == "Ready"))
            else {
                continue;
            };
            if cond.status == "False" {
                continue;
            }
            cond.status = "False".into();
            cond.last_transition_time = Some(Time(jiff::Timestamp::now()));
            let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            match Api::<Pod>::namespaced(self.client.clone(), &ns)
                .replace_status(&name, &PostParams::default(), &pod)
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = %format!("{ns}/{name}"), node, "node lifecycle: pod marked not Ready");
                    self.recorder
                        .warning(&pod, "NodeNotReady", "Node is not ready")
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => errors.push(format!("{ns}/{name}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// `monitorNodeHealth`.
    async fn monitor(&mut self) {
        let now = Instant::now();
        let nodes = self.nodes.state();
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        for n in &nodes {
            if self.known.insert(n.name_any()) {
                let msg = format!("Registered Node {} in Controller", n.name_any());
                self.recorder
                    .post(node_ref(n), "Normal", "RegisteredNode", &msg)
                    .await;
                if let Err(e) = self.mark_reachable(n).await {
                    tracing::warn!(node = %n.name_any(), "node lifecycle: {e}");
                }
            }
        }
        for gone in self
            .known
            .iter()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect::<Vec<_>>()
        {
            let msg = format!("Removing Node {gone} from Controller");
            let about = ObjectReference {
                kind: Some("Node".into()),
                name: Some(gone.clone()),
                ..Default::default()
            };
            self.recorder
                .post(about, "Normal", "RemovingNode", &msg)
                .await;
            self.known.remove(&gone);
            self.health.remove(&gone);
            self.pods_to_retry.remove(&gone);
            for q in self.zones.queues.values_mut() {
                q.remove(&gone);
            }
        }

        let mut zone_ready: BTreeMap<String, Vec<bool>> = BTreeMap::new();
        for node in &nodes {
            let name = node.name_any();
            let (observed, current) = match self.update_health(node, now).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = %name, "node lifecycle: updating the node's health: {e}; skipping, no pods will be evicted");
                    continue;
                }
            };
            zone_ready
                .entry(zones::zone_key(node))
                .or_default()
                .push(current == "True");
            if let Err(e) = self.taint_based_eviction(node, &observed).await {
                tracing::warn!(node = %name, "node lifecycle: NoExecute taints: {e}");
            }
            let retry = self.pods_to_retry.contains(&name);
            let became_not_ready = current != "True" && observed == "True";
            if became_not_ready {
                let msg = format!("Node {name} status is now: NodeNotReady");
                self.recorder
                    .post(node_ref(node), "Normal", "NodeNotReady", &msg)
                    .await;
            }
            if became_not_ready || (retry && observed != "True") {
                match self.mark_pods_not_ready(&name).await {
                    Ok(()) => {
                        self.pods_to_retry.remove(&name);
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, "node lifecycle: unable to mark all pods NotReady on node {name}: {e}; queuing for retry");
                        self.pods_to_retry.insert(name.clone());
                    }
                }
            }
            let (add, del) = taints::no_schedule_diff(node);
            if !add.is_empty() || !del.is_empty() {
                if let Err(e) = taints::swap(&self.client, node, &add, &del).await {
                    tracing::debug!(node = %name, "node lifecycle: NoSchedule taints: {e}");
                }
            }
        }

        match self
            .zones
            .handle_disruption(&zone_ready, &self.cfg.rates(), now)
        {
            Disruption::None => {}
            Disruption::Entered => {
                for n in self.nodes.state() {
                    if let Err(e) = self.mark_reachable(&n).await {
                        tracing::warn!(node = %n.name_any(), "node lifecycle: {e}");
                    }
                }
            }
            Disruption::Exited => {
                for h in self.health.values_mut() {
                    h.probe = now;
                }
            }
        }
    }

    /// `doNoExecuteTaintingPass`: the nodes each zone's rate lets through are tainted as their
    /// Ready condition says.
    async fn taint_pass(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .zones
            .queues
            .iter_mut()
            .flat_map(|(z, q)| q.take_ready(now).into_iter().map(|n| (z.clone(), n)))
            .collect();
        for (zone, name) in due {
            let Some(node) = self.nodes.get(&reflector::ObjectRef::new(&name)) else {
                continue;
            };
            let (add, opposite) = match status_of(taints::condition(&node, "Ready")) {
                "False" => (NOT_READY, UNREACHABLE),
                "Unknown" => (UNREACHABLE, NOT_READY),
                _ => continue,
            };
            let add = [taints::taint(add, NO_EXECUTE)];
            let del = [taints::taint(opposite, NO_EXECUTE)];
            if let Err(e) = taints::swap(&self.client, &node, &add, &del).await {
                tracing::warn!(node = %name, "node lifecycle: tainting: {e}");
                if let Some(q) = self.zones.queues.get_mut(&zone) {
                    q.add(&name);
                }
            }
        }
    }
}

/// A reflector's cache of `api` and the stream that fills it.
pub(crate) fn cached<K>(api: Api<K>) -> (Cache<K>, impl std::future::Future<Output = ()>)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer): (Store<K>, _) = reflector::store();
    let fill = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| std::future::ready(()));
    (Cache::new(store), fill)
}

/// Runs the controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client, cfg: Config) {
    let (nodes, fill_nodes) = cached(Api::<Node>::all(client.clone()));
    let (leases, fill_leases) = cached(Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE));
    let (pods, fill_pods) = cached(Api::<Pod>::all(client.clone()));
    let mut lc = Lifecycle {
        recorder: Recorder::new(client.clone(), "node-controller"),
        client,
        cfg,
        nodes,
        leases,
        pods,
        health: HashMap::new(),
        known: HashSet::new(),
        zones: Zones::default(),
        pods_to_retry: HashSet::new(),
    };
    let main = async move {
        for synced in [
            lc.nodes.synced().await,
            lc.leases.synced().await,
            lc.pods.synced().await,
        ] {
            if let Err(e) = synced {
                tracing::warn!("node lifecycle: {e}");
                return;
            }
        }
        let mut monitor = tokio::time::interval(lc.cfg.node_monitor_period);
        let mut tainting = tokio::time::interval(TAINT_PERIOD);
        monitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tainting.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = monitor.tick() => lc.monitor().await,
                _ = tainting.tick() => lc.taint_pass().await,
            }
        }
    };
    tokio::select! {
        _ = fill_nodes => {}
        _ = fill_leases => {}
        _ = fill_pods => {}
        _ = main => {}
    }
}

#[cfg(test)]
mod tests;
