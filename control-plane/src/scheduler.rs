//! The scheduler, kube-scheduler's design acting through the API: one task owns the cache of
//! nodes and placed pods and the scheduling queue, fed by watches between cycles; a cycle
//! (PreFilter, Filter, Score of the pod's profile) picks a node, the pod is assumed there and
//! its binding (`pods/binding`) runs beside the next cycles. A pod that fits nowhere gets
//! `PodScheduled=False` with kube-scheduler's message and a `FailedScheduling` event, may
//! preempt lower-priority pods (DefaultPreemption: `nominatedNodeName`, DisruptionTarget,
//! graceful deletion, `Preempted` events), and waits in the queue for an event that could
//! help it. Pods whose `schedulerName` names no profile are left alone.

mod cache;
pub mod config;
mod cycle;
mod listers;
mod plugins;
mod podgroups;
mod preemption;
mod queue;
#[cfg(test)]
mod testing;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event as Watched};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::json;

use crate::controllers::events::Recorder;
use cache::{Cache, PodInfo};
use config::SchedulerConfig;
use cycle::{Algorithm, Decision, Nominator};
use listers::Listers;
use queue::{Event, Queue};

/// FailedScheduling notes longer than this are cut (the message in the condition is not).
const NOTE_LIMIT: usize = 1024;
/// Events waiting to be posted; beyond this they are dropped, as client-go's broadcaster does.
const EVENT_BACKLOG: usize = 1000;
/// API writes (bindings, status patches, preemption's) under way at once: enough for the
/// store's group commit to batch them.
const WRITERS: usize = 512;
/// Events posted at once.
const EVENT_POSTERS: usize = 16;

/// Runs the scheduler with the default profile.
pub async fn run(client: kube::Client) {
    run_with(client, Arc::new(SchedulerConfig::default())).await
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Report {
    /// A binding failed: the pod is forgotten and tried again after its back-off, unless the
    /// API says it is bound or gone.
    BindFailed(Arc<PodInfo>, bool),
}

struct Scheduler {
    client: kube::Client,
    cfg: Arc<SchedulerConfig>,
    cache: Cache,
    queue: Queue,
    nominator: Nominator,
    algo: Algorithm,
    listers: Listers,
    events: tokio::sync::mpsc::Sender<Note>,
    writers: Arc<tokio::sync::Semaphore>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    pods_relist: Option<HashSet<String>>,
    nodes_relist: Option<HashSet<String>>,
    synced: (bool, bool),
}

/// An event to post: (reporting scheduler, pod, type, reason, message).
type Note = (Arc<str>, Arc<Pod>, &'static str, &'static str, String);

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn scheduler_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(config::DEFAULT_SCHEDULER)
}

/// How a node changed, as the queue's events.
fn node_events(old: &Node, new: &Node) -> Vec<Event> {
    let mut out = Vec::new();
    let (os, ns) = (
        old.spec.clone().unwrap_or_default(),
        new.spec.clone().unwrap_or_default(),
    );
    if os.taints != ns.taints || os.unschedulable != ns.unschedulable {
        out.push(Event::NodeTaint);
    }
    if old.metadata.labels != new.metadata.labels {
        out.push(Event::NodeLabel);
    }
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    if alloc(old) != alloc(new) {
        out.push(Event::NodeAllocatable);
    }
    out
}

impl Scheduler {
    fn on_pod(&mut self, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(seen) = &mut self.pods_relist {
            seen.insert(uid.clone());
        }
        if terminal(&pod) {
            return self.on_pod_gone(&uid);
        }
        let now = Instant::now();
        let info = Arc::new(PodInfo::new(Arc::new(pod)));
        if let Some(node) = node_name(&info.pod).map(str::to_owned) {
            self.queue.remove(&uid);
            self.nominator.remove(&uid);
            let old = self.cache.pod(&uid).cloned();
            let was_assumed = self.cache.is_assumed(&uid);
            let relabelled = old.as_ref().is_some_and(|o| o.labels() != info.labels());
            self.cache.set_pod(&node, info);
            if old.is_none() && !was_assumed {
                self.queue.on_event(Event::AssignedPodAdd, now);
            } else if relabelled {
                self.queue.on_event(Event::AssignedPodLabel, now);
            }
            return;
        }
        if self.cache.is_assumed(&uid) {
            // Its binding is under way.
            return;
        }
        if info.terminating() || self.cfg.profile(scheduler_name(&info.pod)).is_none() {
            self.queue.remove(&uid);
            self.nominator.remove(&uid);
            return;
        }
        let nominated = info
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone());
        if nominated.is_some() || self.nominator.node_of(&uid).is_some() {
            // The status is the record; a nomination made this cycle arrives there soon.
            if let Some(n) = nominated {
                self.nominator.set(info.clone(), Some(&n));
            }
        }
        self.queue.upsert(info, now);
    }

    fn on_pod_gone(&mut self, uid: &str) {
        self.queue.remove(uid);
        self.nominator.remove(uid);
        if self.cache.remove_pod(uid).is_some() {
            self.queue
                .on_event(Event::AssignedPodDelete, Instant::now());
        }
    }

    fn on_pods(&mut self, ev: Watched<Pod>) {
        match ev {
            Watched::Init => self.pods_relist = Some(HashSet::new()),
            Watched::InitApply(p) | Watched::Apply(p) => self.on_pod(p),
            Watched::Delete(p) => self.on_pod_gone(p.metadata.uid.as_deref().unwrap_or_default()),
            Watched::InitDone => {
                let seen = self.pods_relist.take().unwrap_or_default();
                for uid in self.cache.pod_uids().into_iter().chain(self.queue.uids()) {
                    if !seen.contains(&uid) {
                        self.on_pod_gone(&uid);
                    }
                }
                self.synced.0 = true;
            }
        }
    }

    fn on_nodes(&mut self, ev: Watched<Node>) {
        let now = Instant::now();
        match ev {
            Watched::Init => self.nodes_relist = Some(HashSet::new()),
            Watched::InitApply(n) | Watched::Apply(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = &mut self.nodes_relist {
                    seen.insert(name.clone());
                }
                let old = self.cache.node(&name).map(|i| i.node.clone());
                let n = Arc::new(n);
                self.cache.set_node(n.clone());
                match old {
                    None => self.queue.on_event(Event::NodeAdd, now),
                    Some(old) => {
                        for e in node_events(&old, &n) {
                            self.queue.on_event(e, now);
                        }
                    }
                }
            }
            Watched::Delete(n) => {
                self.cache
                    .remove_node(n.metadata.name.as_deref().unwrap_or_default());
                self.queue.on_event(Event::NodeDelete, now);
            }
            Watched::InitDone => {
                let seen = self.nodes_relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .cache
                    .node_names()
                    .filter(|n| !seen.contains(*n))
                    .map(str::to_owned)
                    .collect();
                for n in gone {
                    self.cache.remove_node(&n);
                    self.queue.on_event(Event::NodeDelete, now);
                }
                self.synced.1 = true;
            }
        }
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::BindFailed(info, settled) => {
                self.cache.forget(&info.uid);
                self.queue
                    .on_event(Event::AssignedPodDelete, Instant::now());
                if !settled {
                    self.queue.retry_later(info, Instant::now());
                }
            }
        }
    }

    /// Reported by `scheduler`, the profile acting (each profile is its own event source).
    fn note(
        &self,
        scheduler: &str,
        pod: &Arc<Pod>,
        type_: &'static str,
        reason: &'static str,
        msg: String,
    ) {
        // Dropped when the backlog is full, as client-go's event broadcaster drops them.
        let _ = self
            .events
            .try_send((scheduler.into(), pod.clone(), type_, reason, msg));
    }

    /// One pod's scheduling cycle.
    fn schedule_one(&mut self) {
        let Some(q) = self.queue.pop() else { return };
        let pod = q.info;
        let cfg = self.cfg.clone();
        let Some(profile) = cfg.profile(scheduler_name(&pod.pod)) else {
            self.queue.remove(&pod.uid);
            return;
        };
        self.cache.track_keys(&pod);
        let decision = self.algo.schedule(
            profile,
            cfg.percentage_of_nodes_to_score,
            &self.cache,
            &self.listers,
            &self.nominator,
            &pod,
        );
        let now = Instant::now();
        match decision {
            Decision::Node(node) => {
                self.queue.done(&pod.uid);
                self.nominator.remove(&pod.uid);
                self.cache.assume(&node, pod.clone());
                self.bind(pod, node);
            }
            Decision::NoNodes => {
                self.queue.failed(&pod.uid, HashSet::new(), now);
                self.nominator.remove(&pod.uid);
                self.report_failure(
                    pod,
                    "no nodes available to schedule pods".into(),
                    Some(None),
                );
            }
            Decision::Unfit(unfit) => {
                let (diag, state) = *unfit;
                let mut msg = diag.message(self.cache.nodes.len());
                let mut nominate = None;
                if profile.preemption {
                    match preemption::preempt(
                        profile,
                        &self.cache,
                        &self.listers,
                        &self.nominator,
                        &state,
                        &diag,
                    ) {
                        preemption::Outcome::NotEligible(why) => {
                            msg = format!("{msg} preemption: {why}")
                        }
                        preemption::Outcome::NoCandidates(why) => {
                            msg = format!("{msg} preemption: {why}");
                            nominate = Some(None);
                            self.nominator.remove(&pod.uid);
                        }
                        preemption::Outcome::Preempt(c) => {
                            self.nominator.set(pod.clone(), Some(&c.node));
                            self.evict(&pod, &c, &profile.scheduler_name);
                            nominate = Some(Some(c.node));
                        }
                    }
                }
                self.queue.failed(&pod.uid, diag.plugins, now);
                self.report_failure(pod, msg, nominate);
            }
        }
    }

    fn bind(&self, pod: Arc<PodInfo>, node: String) {
        let client = self.client.clone();
        let writers = self.writers.clone();
        let reports = self.reports.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let _permit = writers.acquire_owned().await;
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(pod.name.clone()),
                    namespace: Some(pod.namespace.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    ..Default::default()
                },
            };
            let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
            let r = api
                .create_subresource::<Binding, serde_json::Value>(
                    "binding",
                    &pod.name,
                    &PostParams::default(),
                    &binding,
                )
                .await;
            match r {
                Ok(_) => {
                    let msg = format!("Successfully assigned {} to {node}", pod.key());
                    let by: Arc<str> = scheduler_name(&pod.pod).into();
                    let _ = events.try_send((by, pod.pod.clone(), "Normal", "Scheduled", msg));
                }
                Err(e) => {
                    tracing::info!(pod = %pod.key(), %node, "binding failed: {e}");
                    // Bound elsewhere or gone: the watch brings the news.
                    let settled =
                        matches!(&e, kube::Error::Api(s) if s.code == 409 || s.code == 404);
                    let _ = reports.send(Report::BindFailed(pod, settled));
                }
            }
        });
    }

    /// The condition, the event and the nomination of a pod that fits nowhere.
    /// `nominate`: None leaves `nominatedNodeName`, Some(x) sets it to x.
    fn report_failure(&self, pod: Arc<PodInfo>, msg: String, nominate: Option<Option<String>>) {
        let note = if msg.len() > NOTE_LIMIT {
            let mut cut = NOTE_LIMIT - 4;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{} ...", &msg[..cut])
        } else {
            msg.clone()
        };
        self.note(
            scheduler_name(&pod.pod),
            &pod.pod,
            "Warning",
            "FailedScheduling",
            note,
        );
        let status = pod.pod.status.as_ref();
        let current = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        let same_condition = current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(msg.as_str())
        });
        let nominated = status
            .and_then(|s| s.nominated_node_name.clone())
            .filter(|n| !n.is_empty());
        let nominate = nominate.filter(|n| *n != nominated);
        if same_condition && nominate.is_none() {
            return;
        }
        let since = match current {
            Some(c) if c.status == "False" => c.last_transition_time.clone(),
            _ => None,
        }
        .unwrap_or(Time(jiff::Timestamp::now()));
        let mut patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": msg, "lastProbeTime": null, "lastTransitionTime": since,
        }]}});
        if let Some(n) = nominate {
            patch["status"]["nominatedNodeName"] = json!(n);
        }
        self.patch_status(&pod, patch);
    }

    fn patch_status(&self, pod: &PodInfo, patch: serde_json::Value) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let (name, writers) = (pod.name.clone(), self.writers.clone());
        tokio::spawn(async move {
            let _permit = writers.acquire_owned().await;
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::debug!(pod = %name, "status not written: {e}");
            }
        });
    }

    /// Evicts the victims gracefully (DisruptionTarget first, then DELETE), each with a
    /// `Preempted` event, and takes lower-priority nominations off the node.
    fn evict(&mut self, preemptor: &PodInfo, c: &preemption::Candidate, scheduler: &str) {
        let lower: Vec<Arc<PodInfo>> = self
            .nominator
            .on(&c.node)
            .iter()
            .filter(|p| p.priority < preemptor.priority)
            .cloned()
            .collect();
        for p in lower {
            self.nominator.remove(&p.uid);
            self.patch_status(&p, json!({"status": {"nominatedNodeName": null}}));
        }
        for v in &c.victims {
            if v.terminating() {
                continue;
            }
            let msg = format!("Preempted by pod {} on node {}", preemptor.uid, c.node);
            self.note(scheduler, &v.pod, "Normal", "Preempted", msg);
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &v.namespace);
            let name = v.name.clone();
            let condition = json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
                "lastTransitionTime": Time(jiff::Timestamp::now()),
            }]}});
            let writers = self.writers.clone();
            tokio::spawn(async move {
                let _permit = writers.acquire_owned().await;
                let patched = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
                    .await;
                if let Err(e) = patched {
                    tracing::info!(pod = %name, "preemption: condition not written: {e}");
                }
                if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                    tracing::info!(pod = %name, "preemption: victim not deleted: {e}");
                }
            });
        }
    }
}

/// Posts events one at a time from a bounded backlog.
async fn post_events(client: kube::Client, mut rx: tokio::sync::mpsc::Receiver<Note>) {
    let mut recorders: std::collections::HashMap<Arc<str>, Arc<Recorder>> = Default::default();
    let posting = Arc::new(tokio::sync::Semaphore::new(EVENT_POSTERS));
    while let Some((by, pod, type_, reason, msg)) = rx.recv().await {
        let recorder = recorders
            .entry(by.clone())
            .or_insert_with(|| Arc::new(Recorder::new(client.clone(), &*by)))
            .clone();
        let Ok(permit) = posting.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let about = crate::controllers::events::reference(&*pod);
            recorder.post(about, type_, reason, &msg).await;
            drop(permit);
        });
    }
}

fn watch<K>(
    client: &kube::Client,
) -> impl Stream<Item = Result<Watched<K>, watcher::Error>> + Send + Unpin
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    Box::pin(
        watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default())
            .default_backoff(),
    )
}

/// Runs the scheduler with `cfg`'s profiles until the process ends (or the task is aborted
/// when the lease is lost).
pub async fn run_with(client: kube::Client, cfg: Arc<SchedulerConfig>) {
    let (listers, feed) = Listers::start(&client);
    let _feed = AbortOnDrop(tokio::spawn(feed));
    let (events, rx) = tokio::sync::mpsc::channel(EVENT_BACKLOG);
    let _events = AbortOnDrop(tokio::spawn(post_events(client.clone(), rx)));
    let (reports, mut report_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut pods = watch::<Pod>(&client);
    let mut nodes = watch::<Node>(&client);
    let mut s = Scheduler {
        queue: Queue::new(cfg.initial_backoff, cfg.max_backoff),
        client,
        cfg,
        cache: Cache::default(),
        nominator: Nominator::default(),
        algo: Algorithm::default(),
        listers,
        events,
        writers: Arc::new(tokio::sync::Semaphore::new(WRITERS)),
        reports,
        pods_relist: None,
        nodes_relist: None,
        synced: (false, false),
    };
    let tick = Duration::from_secs(1);
    let mut next_flush = Instant::now() + tick;
    loop {
        // Everything the watches have ready goes into the cache first.
        loop {
            let mut any = false;
            while let Some(Some(ev)) = pods.next().now_or_never() {
                any = true;
                match ev {
                    Ok(ev) => s.on_pods(ev),
                    Err(e) => tracing::debug!("scheduler: pod watch: {e}"),
                }
            }
            while let Some(Some(ev)) = nodes.next().now_or_never() {
                any = true;
                match ev {
                    Ok(ev) => s.on_nodes(ev),
                    Err(e) => tracing::debug!("scheduler: node watch: {e}"),
                }
            }
            while let Ok(r) = report_rx.try_recv() {
                any = true;
                s.on_report(r);
            }
            if !any {
                break;
            }
        }
        let now = Instant::now();
        if now >= next_flush {
            s.queue.flush(now);
            next_flush = now + tick;
        }
        if s.synced == (true, true) && s.queue.has_active() {
            s.schedule_one();
            tokio::task::consume_budget().await;
            continue;
        }
        let wake = s
            .queue
            .next_backoff()
            .map_or(next_flush, |b| b.min(next_flush));
        tokio::select! {
            Some(ev) = pods.next() => match ev {
                Ok(ev) => s.on_pods(ev),
                Err(e) => tracing::debug!("scheduler: pod watch: {e}"),
            },
            Some(ev) = nodes.next() => match ev {
                Ok(ev) => s.on_nodes(ev),
                Err(e) => tracing::debug!("scheduler: node watch: {e}"),
            },
            Some(r) = report_rx.recv() => s.on_report(r),
            _ = tokio::time::sleep_until(wake.into()) => s.queue.flush(Instant::now()),
        }
    }
}

#[cfg(test)]
mod loop_tests;
