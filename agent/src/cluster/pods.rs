//! Pods from the apiserver: a watcher on `spec.nodeName=<node>` (kube-rs relists on 410 and backs
//! off on errors), merged with the static pods into what the pod manager runs; statuses patched
//! back as they change; deletions confirmed with grace 0 once the pod is gone from the node;
//! mirror pods kept for static pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use tokio::sync::watch;

use crate::config::Config;
use crate::manifest::{Desired, StaticPod};
use crate::pod::{NodeInfo, StatusCache};
use crate::util::Limiter;

pub const SOURCE: &str = "kubernetes.io/config.source";
pub const MIRROR: &str = "kubernetes.io/config.mirror";
const HASH: &str = "kubernetes.io/config.hash";

/// Pods bound to this node by UID, or None until the first complete list.
pub type ApiPods = Option<BTreeMap<String, Pod>>;

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub fn is_mirror(p: &Pod) -> bool {
    annotation(p, MIRROR).is_some()
}

fn is_static(p: &Pod) -> bool {
    annotation(p, SOURCE) == Some("file")
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn key(p: &Pod) -> (String, String) {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// Follows the pods bound to `node` until the process ends; a new client (renewed
/// certificate) restarts the watch.
pub async fn watch(
    node: String,
    mut client: watch::Receiver<kube::Client>,
    tx: watch::Sender<ApiPods>,
) {
    loop {
        let api: Api<Pod> = Api::all(client.borrow_and_update().clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut buffer: Option<BTreeMap<String, Pod>> = None;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                r = client.changed() => { if r.is_err() { return } break }
            };
            match ev {
                Some(Ok(Event::Init)) => buffer = Some(BTreeMap::new()),
                Some(Ok(Event::InitApply(p))) => {
                    buffer.get_or_insert_with(BTreeMap::new).insert(uid(&p), p);
                }
                Some(Ok(Event::InitDone)) => {
                    let all = buffer.take().unwrap_or_default();
                    tracing::debug!(pods = all.len(), "pods listed from the apiserver");
                    tx.send_replace(Some(all));
                }
                Some(Ok(Event::Apply(p))) => tx.send_modify(|m| {
                    if let Some(m) = m {
                        m.insert(uid(&p), p);
                    }
                }),
                Some(Ok(Event::Delete(p))) => tx.send_modify(|m| {
                    if let Some(m) = m {
                        m.remove(&uid(&p));
                    }
                }),
                Some(Err(e)) => tracing::warn!("watching pods: {e}"),
                None => break,
            }
        }
    }
}

/// The pod as its worker gets it: marked as coming from the apiserver, without the fields that
/// change with every status write.
fn desired_form(p: &Pod) -> Pod {
    let mut p = p.clone();
    p.status = None;
    p.metadata.resource_version = None;
    p.metadata.managed_fields = None;
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SOURCE.into(), "api".into());
    p
}

fn on_disk(cfg: &Config, uid: &str) -> bool {
    cfg.pod_run_dir(uid).exists()
}

/// Static pods plus the apiserver's pods for this node. Until the apiserver has been listed,
/// pods it gave earlier that still run are kept as they are (never torn down for lack of news).
pub fn merge(cfg: &Config, statics: &Desired, api: &ApiPods) -> Desired {
    let mut want = statics.clone();
    match api {
        None => {
            for (uid, pod) in crate::pod::pods_on_disk(cfg) {
                if annotation(&pod, SOURCE) == Some("api") {
                    want.insert(uid, StaticPod { file: None, pod });
                }
            }
        }
        Some(pods) => {
            for (uid, p) in pods {
                if is_mirror(p) || want.contains_key(uid) {
                    continue;
                }
                let terminal = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                // A finished pod is not started again (after an agent restart, say).
                if terminal && !on_disk(cfg, uid) {
                    continue;
                }
                want.insert(
                    uid.clone(),
                    StaticPod {
                        file: None,
                        pod: desired_form(p),
                    },
                );
            }
        }
    }
    want
}

/// Keeps `tx` (what the pod manager runs) up to date with both sources.
pub async fn feed(
    info: Arc<NodeInfo>,
    mut statics: watch::Receiver<Desired>,
    mut api: watch::Receiver<ApiPods>,
    tx: watch::Sender<Desired>,
) {
    loop {
        let want = merge(
            &info.cfg,
            &statics.borrow_and_update(),
            &api.borrow_and_update(),
        );
        crate::util::send_if_changed(&tx, &want);
        tokio::select! {
            r = statics.changed() => if r.is_err() { return },
            r = api.changed() => if r.is_err() { return },
        }
    }
}

/// A mirror pod for a static pod: its spec, the config hash, owned by the Node.
fn mirror_of(p: &Pod, owner: &OwnerReference) -> Pod {
    let mut m = p.clone();
    m.status = None;
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata.creation_timestamp = None;
    let ann = m.metadata.annotations.get_or_insert_with(Default::default);
    let hash = ann.get(HASH).cloned().unwrap_or_default();
    ann.insert(MIRROR.into(), hash);
    m.metadata.owner_references = Some(vec![owner.clone()]);
    m
}

/// Where statuses were last written, so that only changes are sent.
#[derive(Default)]
struct Sent {
    status: HashMap<String, serde_json::Value>,
    /// Deletions confirmed (uid), mirror pods asked for (namespace/name).
    confirmed: HashSet<String>,
}

async fn patch_status(
    client: &kube::Client,
    p: &Pod,
    api_uid: &str,
    status: &serde_json::Value,
) -> kube::Result<()> {
    let (ns, name) = key(p);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"metadata": {"uid": api_uid}, "status": status});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

async fn delete_now(client: &kube::Client, p: &Pod) -> kube::Result<()> {
    let (ns, name) = key(p);
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: p.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reports the node's pods to the apiserver: their published statuses, paced by `limit`.
pub struct Report {
    pub info: Arc<NodeInfo>,
    pub statuses: Arc<StatusCache>,
    pub limit: Arc<Limiter>,
}

impl Report {
    /// Writes statuses, confirms deletions and keeps mirror pods, whenever a pod's status or the
    /// apiserver's view changes (and every 10 s).
    pub async fn run(
        &self,
        client: watch::Receiver<kube::Client>,
        mut api: watch::Receiver<ApiPods>,
        statics: watch::Receiver<Desired>,
        owner: OwnerReference,
    ) {
        let mut changed = self.statuses.subscribe();
        let mut sent = Sent::default();
        loop {
            let view = api.borrow_and_update().clone();
            if let Some(view) = view {
                let c = client.borrow().clone();
                let statics = statics.borrow().clone();
                self.sync_once(&c, &view, &statics, &owner, &mut sent).await;
            }
            tokio::select! {
                _ = changed.changed() => {}
                r = api.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
            // Coalesce a burst of changes into one pass.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn sync_once(
        &self,
        client: &kube::Client,
        view: &BTreeMap<String, Pod>,
        statics: &Desired,
        owner: &OwnerReference,
        sent: &mut Sent,
    ) {
        let local: BTreeMap<String, Pod> = self.statuses.snapshot();
        let mirrors: HashMap<(String, String), &Pod> = view
            .values()
            .filter(|p| is_mirror(p))
            .map(|p| (key(p), p))
            .collect();
        for (local_uid, p) in &local {
            let status = serde_json::to_value(&p.status).unwrap_or_default();
            let target = if is_static(p) {
                match mirrors.get(&key(p)) {
                    Some(m)
                        if annotation(m, MIRROR) == annotation(p, HASH)
                            && m.metadata.deletion_timestamp.is_none() =>
                    {
                        sent.confirmed.remove(&format!("{}/{}", key(p).0, key(p).1));
                        Some(uid(m))
                    }
                    Some(m) => {
                        // Deleted by someone, or made from an older manifest: replaced.
                        self.limit.acquire().await;
                        if let Err(e) = delete_now(client, m).await {
                            tracing::warn!(pod = ?key(p), "deleting an outdated mirror pod: {e}");
                        }
                        None
                    }
                    None => {
                        let k = format!("{}/{}", key(p).0, key(p).1);
                        if !sent.confirmed.contains(&k) {
                            let api: Api<Pod> = Api::namespaced(client.clone(), &key(p).0);
                            match api
                                .create(&PostParams::default(), &mirror_of(p, owner))
                                .await
                            {
                                Ok(_) => {
                                    sent.confirmed.insert(k);
                                }
                                Err(kube::Error::Api(e)) if e.code == 409 => {}
                                Err(e) => tracing::warn!(pod = %k, "creating the mirror pod: {e}"),
                            }
                        }
                        None
                    }
                }
            } else {
                view.get(local_uid).map(uid)
            };
            let Some(api_uid) = target else { continue };
            if sent.status.get(&api_uid) == Some(&status) {
                continue;
            }
            self.limit.acquire().await;
            match patch_status(client, p, &api_uid, &status).await {
                Ok(()) => {
                    sent.status.insert(api_uid, status);
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => tracing::warn!(pod = ?key(p), "updating the pod status: {e}"),
            }
        }
        let static_keys: HashSet<(String, String)> =
            statics.values().map(|s| key(&s.pod)).collect();
        for (uid, p) in view {
            if is_mirror(p) {
                // A mirror pod whose static pod is gone goes too.
                if !static_keys.contains(&key(p)) && !sent.confirmed.contains(uid) {
                    self.limit.acquire().await;
                    self.limit.acquire().await;
                    match delete_now(client, p).await {
                        Ok(()) => {
                            sent.confirmed.insert(uid.clone());
                        }
                        Err(e) => {
                            tracing::warn!(pod = ?key(p), "deleting an orphaned mirror pod: {e}")
                        }
                    }
                }
                continue;
            }
            // Deletion is confirmed once nothing of the pod is left on the node.
            if p.metadata.deletion_timestamp.is_some()
                && !local.contains_key(uid)
                && !on_disk(&self.info.cfg, uid)
                && !sent.confirmed.contains(uid)
            {
                self.limit.acquire().await;
                match delete_now(client, p).await {
                    Ok(()) => {
                        sent.confirmed.insert(uid.clone());
                    }
                    Err(e) => tracing::warn!(pod = ?key(p), "confirming the pod's deletion: {e}"),
                }
            }
        }
        // Forget what no longer exists.
        sent.status.retain(|u, _| view.contains_key(u));
        sent.confirmed
            .retain(|u| u.contains('/') || view.contains_key(u));
    }
}
