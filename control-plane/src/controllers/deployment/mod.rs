//! The Deployment controller (`pkg/controller/deployment/`): a Deployment owns one
//! ReplicaSet per pod template it has had (`<name>-<pod-template-hash>`), rolls pods from the
//! old ones to the new one (RollingUpdate within maxSurge and maxUnavailable, or Recreate),
//! numbers revisions so `kubectl rollout history|undo` work, scales proportionally when
//! resized mid-rollout, removes old ReplicaSets beyond `revisionHistoryLimit`, and reports
//! progress in its conditions (`Progressing`, `Available`, `ReplicaFailure`).

mod rolling;
mod sync;
pub mod util;

use std::sync::Arc;

use futures_util::TryStreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use super::events::Recorder;
use super::podcontrol::{self, claim, controller_of};
use crate::reconcile::Cache;
use crate::reconcile::{self, Result};

const COMPONENT: &str = "deployment-controller";

pub(crate) struct Ctx {
    client: kube::Client,
    deployments: Cache<Deployment>,
    rss: Cache<ReplicaSet>,
    pods: Cache<Pod>,
    recorder: Recorder,
}

impl Ctx {
    fn rs_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn api(&self, d: &Deployment) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default())
    }

    /// Writes the Deployment's status (`UpdateStatus`), keeping the answer's metadata.
    async fn update_status(&self, d: &mut Deployment) -> Result<()> {
        let stored = self
            .api(d)
            .replace_status(&d.name_any(), &PostParams::default(), d)
            .await?;
        d.metadata = stored.metadata;
        Ok(())
    }

    /// Writes the Deployment's metadata (its revision annotation), keeping the local status.
    async fn update_meta(&self, d: &mut Deployment) -> Result<()> {
        let stored = self
            .api(d)
            .replace(&d.name_any(), &PostParams::default(), d)
            .await?;
        d.metadata = stored.metadata;
        Ok(())
    }
}

fn selector(d: &Deployment) -> k8s_rules::labels::Selector {
    podcontrol::selector(d.spec.as_ref().map(|s| &s.selector))
}

/// The Deployments a ReplicaSet's change concerns: its controller, or (an orphan) those of
/// its namespace that select it.
fn deployments_of(deployments: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.namespace().unwrap_or_default();
    if let Some(r) = controller_of(rs) {
        return if r.kind == "Deployment" && r.api_version == "apps/v1" {
            vec![ObjectRef::new(&r.name).within(&ns)]
        } else {
            vec![]
        };
    }
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(&ns) && selector(d).matches(rs.labels()))
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}

pub async fn run(client: kube::Client) {
    let (deployments, d_writer) = reflector::store::<Deployment>();
    let (rss, rs_writer) = reflector::store::<ReplicaSet>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        deployments: Cache::new(deployments.clone()),
        rss: Cache::new(rss.clone()),
        pods: Cache::new(pods),
        recorder: Recorder::new(client.clone(), COMPONENT),
    });
    let d_events = reflector(
        d_writer,
        watcher(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .applied_objects();
    let rs_events = reflector(
        rs_writer,
        watcher(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    // Only a pod's deletion concerns a Deployment: Recreate waits for the old pods to go.
    let pod_deletions = reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff(),
    )
    .try_filter_map(|ev| async move {
        Ok(match ev {
            watcher::Event::Delete(p) => Some(p),
            _ => None,
        })
    });
    let for_rs = deployments.clone();
    let for_pods = (deployments.clone(), rss);
    let controller = Controller::for_stream(d_events, deployments)
        .watches_stream(rs_events, move |rs: ReplicaSet| {
            deployments_of(&for_rs, &rs)
        })
        .watches_stream(pod_deletions, move |pod: Pod| {
            let (deployments, rss) = &for_pods;
            let Some(owner) = controller_of(&pod).filter(|r| r.kind == "ReplicaSet") else {
                return vec![];
            };
            let key = ObjectRef::new(&owner.name).within(&pod.namespace().unwrap_or_default());
            rss.get(&key)
                .map(|rs| deployments_of(deployments, &rs))
                .unwrap_or_default()
        });
    reconcile::run(COMPONENT, controller, reconcile, ctx).await;
}

/// The ReplicaSets this Deployment controls, after adopting and releasing by selector.
async fn claim_replica_sets(ctx: &Ctx, d: &Deployment) -> Result<Vec<ReplicaSet>> {
    let ns = d.namespace();
    let candidates: Vec<ReplicaSet> = ctx
        .rss
        .state()
        .iter()
        .filter(|rs| rs.namespace() == ns)
        .map(|rs| (**rs).clone())
        .collect();
    claim(&ctx.client, d, &selector(d), candidates).await
}

/// `syncDeployment`.
async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action> {
    ctx.rss.synced().await?;
    ctx.pods.synced().await?;
    ctx.deployments.synced().await?;
    let mut d = (*d).clone();
    let rs_list = claim_replica_sets(&ctx, &d).await?;
    if d.metadata.deletion_timestamp.is_some() {
        sync::sync_status_only(&ctx, &mut d, &rs_list).await?;
        return Ok(Action::await_change());
    }
    // Conditions the pause and resume leave, before anything else happens.
    sync::check_paused_conditions(&ctx, &mut d).await?;
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if paused || sync::is_scaling_event(&ctx, &mut d, &rs_list).await? {
        sync::sync(&ctx, &mut d, &rs_list).await?;
        return Ok(Action::await_change());
    }
    let requeue = if util::is_rolling(&d) {
        rolling::rollout_rolling(&ctx, &mut d, &rs_list).await?
    } else {
        rolling::rollout_recreate(&ctx, &mut d, &rs_list).await?
    };
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests;
