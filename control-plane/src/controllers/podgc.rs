//! PodGC (`pkg/controller/podgc/gc_controller.go`), every 20 s: deletes the oldest finished
//! pods beyond `--terminated-pod-gc-threshold`; pods bound to a node that no longer exists
//! (once it has been missing for the 40 s quarantine and the API confirms it is gone), marked
//! Failed with the `DisruptionTarget` condition (reason `DeletionByPodGC`) first; terminating
//! pods that were never scheduled; and terminating pods on a node tainted out-of-service that is
//! not ready. Deletions are forced (grace period 0): no kubelet will finish them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::reconcile::Result;

/// `--terminated-pod-gc-threshold`'s default.
pub const DEFAULT_THRESHOLD: i64 = 12500;
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// How often PodGC runs, and how long a node must be missing before its pods are orphans.
#[derive(Clone, Copy)]
pub struct Timing {
    pub period: Duration,
    pub quarantine: Duration,
}

/// Upstream's `gcCheckPeriod` and `quarantineTime`.
pub const TIMING: Timing = Timing {
    period: Duration::from_secs(20),
    quarantine: Duration::from_secs(40),
};

struct PodGc {
    client: kube::Client,
    threshold: i64,
    timing: Timing,
    /// Nodes pods are bound to that were missing, since when.
    missing_since: HashMap<String, Instant>,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn is_terminated(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

impl PodGc {
    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// `markFailedAndDeletePodWithCondition`: a pod still running (as far as the API knows) is
    /// marked Failed, with `condition`, before it is force-deleted.
    async fn fail_and_delete(&self, pod: &Pod, condition: Option<serde_json::Value>) -> Result<()> {
        let ns = pod.namespace().unwrap_or_default();
        let api = self.pods(&ns);
        if !is_terminated(pod) {
            let mut status = json!({"phase": "Failed"});
            if let Some(c) = condition {
                status["conditions"] = json!([c]);
            }
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"status": status})),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        match api
            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{}", pod.name_any()), "PodGC deleted the pod");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_all<'a>(
        &self,
        pods: impl IntoIterator<Item = &'a Pod>,
        condition: Option<serde_json::Value>,
    ) {
        let results = join_all(
            pods.into_iter()
                .map(|p| self.fail_and_delete(p, condition.clone())),
        )
        .await;
        for e in results.into_iter().filter_map(|r| r.err()) {
            tracing::warn!("PodGC: deleting a pod: {e}");
        }
    }

    /// `gcTerminated`: the oldest finished pods above the threshold (evicted ones first).
    async fn terminated(&self, pods: &[Pod]) {
        if self.threshold <= 0 {
            return;
        }
        let mut done: Vec<&Pod> = pods.iter().filter(|p| is_terminated(p)).collect();
        let excess = done.len() as i64 - self.threshold;
        if excess <= 0 {
            return;
        }
        done.sort_by_key(|p| {
            let evicted = p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
            (
                !evicted,
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        });
        tracing::info!(
            count = excess,
            threshold = self.threshold,
            "PodGC: too many terminated pods"
        );
        self.delete_all(done.into_iter().take(excess as usize), None)
            .await;
    }

    /// `gcOrphaned`: pods on nodes gone for longer than the quarantine.
    async fn orphaned(&mut self, pods: &[Pod], nodes: &HashSet<String>) -> Result<()> {
        let now = Instant::now();
        let bound: HashSet<&str> = pods.iter().map(node_of).filter(|n| !n.is_empty()).collect();
        self.missing_since
            .retain(|n, _| bound.contains(n.as_str()) && !nodes.contains(n));
        for n in bound.iter().filter(|n| !nodes.contains(**n)) {
            self.missing_since.entry(n.to_string()).or_insert(now);
        }
        let mut gone = HashSet::new();
        for (n, since) in &self.missing_since {
            if now.duration_since(*since) < self.timing.quarantine {
                continue;
            }
            // The cache may lag: only a node the API does not have is gone.
            if Api::<Node>::all(self.client.clone())
                .get_opt(n)
                .await?
                .is_none()
            {
                gone.insert(n.clone());
            }
        }
        let orphans: Vec<&Pod> = pods.iter().filter(|p| gone.contains(node_of(p))).collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let condition = json!({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
            "message": "PodGC: node no longer exists",
            "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()});
        self.delete_all(orphans, Some(condition)).await;
        for n in gone {
            self.missing_since.remove(&n);
        }
        Ok(())
    }

    /// `gcUnscheduledTerminating`.
    async fn unscheduled_terminating(&self, pods: &[Pod]) {
        let doomed = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_empty());
        self.delete_all(doomed, None).await;
    }

    /// `gcTerminating`: terminating pods on a not-ready node tainted out-of-service.
    async fn terminating(&self, pods: &[Pod], nodes: &[Node]) {
        let out_of_service: HashSet<String> = nodes
            .iter()
            .filter(|n| {
                let tainted = n
                    .spec
                    .iter()
                    .flat_map(|s| s.taints.iter().flatten())
                    .any(|t| {
                        t.key == OUT_OF_SERVICE_TAINT && matches!(t.effect.as_str(), "NoExecute")
                    });
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .is_some_and(|c| c.status == "True");
                tainted && !ready
            })
            .map(|n| n.name_any())
            .collect();
        let doomed = pods.iter().filter(|p| {
            p.metadata.deletion_timestamp.is_some() && out_of_service.contains(node_of(p))
        });
        self.delete_all(doomed, None).await;
    }

    async fn gc(&mut self) -> Result<()> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.terminated(&pods).await;
        self.terminating(&pods, &nodes).await;
        self.orphaned(&pods, &names).await?;
        self.unscheduled_terminating(&pods).await;
        Ok(())
    }
}

/// Runs PodGC with upstream's timing until the process ends (or the task is aborted).
pub async fn run(client: kube::Client, threshold: i64) {
    run_with(client, threshold, TIMING).await
}

pub async fn run_with(client: kube::Client, threshold: i64, timing: Timing) {
    let mut gc = PodGc {
        client,
        threshold,
        timing,
        missing_since: HashMap::new(),
    };
    let mut tick = tokio::time::interval(timing.period);
    loop {
        tick.tick().await;
        if let Err(e) = gc.gc().await {
            tracing::warn!("PodGC: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
