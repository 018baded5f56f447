//! The Job controller (`pkg/controller/job/job_controller.go`), through the API: it keeps
//! `min(parallelism, completions - succeeded)` pods of a Job active (NonIndexed, or one per
//! pending index when Indexed), and counts finished pods exactly once: every pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer, a finished pod's UID goes into
//! `status.uncountedTerminatedPods` before its finalizer is removed, and once the finalizer is
//! gone it moves into `succeeded`/`failed`, so a pod deleted meanwhile is never missed.
//! Failed pods are replaced after the pod-failure back-off (10 s doubling to 6 min); the Job
//! fails past `backoffLimit`, `backoffLimitPerIndex`/`maxFailedIndexes`, its
//! `activeDeadlineSeconds`, or a pod failure policy's FailJob; it succeeds on its completions
//! or its success policy. As upstream since 1.31, the interim `FailureTarget` /
//! `SuccessCriteriaMet` condition comes first and `Failed` / `Complete` only once no pod is
//! left terminating.

mod manage;
mod pods;
pub mod sync;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use super::podcontrol::{controller_of, PodControl};
use crate::reconcile::Cache;
use crate::reconcile::{self, Result};
pub use pods::{COMPLETION_INDEX, INDEX_FAILURE_COUNT, TRACKING_FINALIZER};

/// The clock and back-off of the controller; tests shorten the back-off (the rule stays).
#[derive(Clone)]
pub struct Options {
    /// The first pod-failure back-off (upstream's `DefaultJobPodFailureBackOff`, 10 s).
    pub backoff_base: Duration,
    /// Its cap (`MaxJobPodFailureBackOff`, 6 min).
    pub backoff_max: Duration,
    pub now: fn() -> Timestamp,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(360),
            now: Timestamp::now,
        }
    }
}

pub struct Ctx {
    client: kube::Client,
    control: PodControl,
    pods: Cache<Pod>,
    jobs: Mutex<Option<Store<Job>>>,
    opts: Options,
    /// Each job's pod-failure back-off.
    backoff: Mutex<HashMap<String, pods::BackoffRecord>>,
    /// UIDs of pods whose finalizer this controller removed and the watch has not yet shown
    /// without it: they are counted already.
    finalizers_removed: Mutex<HashSet<String>>,
}

impl Ctx {
    fn now(&self) -> Timestamp {
        (self.opts.now)()
    }

    /// Lowers the finalizer expectations from one pod event.
    fn observe(&self, ev: &watcher::Event<Pod>) {
        let (pod, gone) = match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            _ => return,
        };
        if gone || !pods::has_finalizer(pod) {
            self.finalizers_removed
                .lock()
                .expect("finalizers lock")
                .remove(&pods::uid(pod));
        }
    }

    fn removal_expected(&self, uid: &str) -> bool {
        self.finalizers_removed
            .lock()
            .expect("finalizers lock")
            .contains(uid)
    }

    /// Removes the tracking finalizer from each pod (this UID only); the UIDs it is gone from.
    async fn remove_finalizers(&self, pods: &[&Pod]) -> (Vec<String>, Option<reconcile::Error>) {
        let mut done = Vec::new();
        let mut first_err = None;
        for p in pods {
            let uid = pods::uid(p);
            let keep: Vec<&String> = p
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != TRACKING_FINALIZER)
                .collect();
            let patch = json!({"metadata": {"finalizers": keep, "uid": uid, "resourceVersion": p.metadata.resource_version}});
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            self.finalizers_removed
                .lock()
                .expect("finalizers lock")
                .insert(uid.clone());
            match api
                .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => done.push(uid),
                Err(kube::Error::Api(s)) if s.code == 404 => done.push(uid),
                Err(e) => {
                    self.finalizers_removed
                        .lock()
                        .expect("finalizers lock")
                        .remove(&uid);
                    first_err.get_or_insert(e.into());
                }
            }
        }
        (done, first_err)
    }

    /// Pods still holding the finalizer whose Job is gone or finished: nothing will count them
    /// any more (`cleanupOrphanPods`).
    async fn release_orphans(&self) -> Result<()> {
        let Some(jobs) = self.jobs.lock().expect("jobs lock").clone() else {
            return Ok(());
        };
        let orphans: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| pods::has_finalizer(p) && !self.removal_expected(&pods::uid(p)))
            .filter(|p| {
                let owner = controller_of(&**p).filter(|r| r.kind == "Job");
                let job = owner.and_then(|r| {
                    jobs.get(&reflector::ObjectRef::new(&r.name).within(&p.namespace()?))
                        .filter(|j| j.metadata.uid.as_deref() == Some(r.uid.as_str()))
                });
                match job {
                    None => true,
                    Some(j) => sync::finished(&j),
                }
            })
            .collect();
        let refs: Vec<&Pod> = orphans.iter().map(|p| &**p).collect();
        match self.remove_finalizers(&refs).await.1 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action> {
    ctx.pods.synced().await?;
    sync::sync(&ctx, (*job).clone()).await
}

/// Runs the controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    run_with(client, Options::default()).await
}

pub async fn run_with(client: kube::Client, opts: Options) {
    let (pod_store, pod_writer) = reflector::store();
    let ctx = Arc::new(Ctx {
        control: PodControl::new(client.clone(), "job-controller"),
        client: client.clone(),
        pods: Cache::new(pod_store),
        jobs: Mutex::new(None),
        opts,
        backoff: Mutex::default(),
        finalizers_removed: Mutex::default(),
    });
    let observer = ctx.clone();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .inspect_ok(move |ev| {
            observer.control.expectations.observe(ev);
            observer.observe(ev);
        })
        .touched_objects();
    let controller = Controller::new(Api::<Job>::all(client), watcher::Config::default())
        .owns_stream(pod_events);
    *ctx.jobs.lock().expect("jobs lock") = Some(controller.store());
    let orphans = {
        let ctx = ctx.clone();
        async move {
            // The pod watch drives the jobs; orphans are looked for on its rhythm, not per pod.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if ctx.pods.synced().await.is_err() {
                    return;
                }
                if let Err(e) = ctx.release_orphans().await {
                    tracing::warn!(controller = "job-controller", "orphan pods: {e}");
                }
            }
        }
    };
    let main = reconcile::run("job-controller", controller, reconcile, ctx);
    tokio::join!(main, orphans);
}

#[cfg(test)]
mod tests;
