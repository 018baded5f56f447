//! The Node object: registration (labels, taints, an explicit podCIDR, capacity), the coordination Lease
//! renewed every 10 s, and NodeStatus written when it changes or every 5 minutes — the kubelet's
//! `nodeLeaseDurationSeconds` 40, `nodeStatusUpdateFrequency` 10 s, `nodeStatusReportFrequency`
//! 5 min.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node as K8sNode, NodeDaemonEndpoints, NodeSpec, NodeStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::eviction::Evictions;
use crate::pod::NodeInfo;
use crate::util::Limiter;

const LEASE_DURATION: i32 = 40;
const RENEW_EVERY: Duration = Duration::from_secs(10);
const REPORT_EVERY: Duration = Duration::from_secs(300);
/// Images reported in `status.images` at most (the kubelet's `nodeStatusMaxImages`).
const MAX_IMAGES: usize = 50;

/// The node's images for `status.images` (the scheduler's ImageLocality weighs them), largest
/// first, each by its digest and its tag reference, as the kubelet lists them. None when the
/// store cannot be read (the field is then left as it was).
fn node_images(dir: &std::path::Path) -> Option<Vec<ContainerImage>> {
    let mut list = podlet_runtime::image::ImageStore::open(dir)
        .ok()?
        .list()
        .ok()?;
    list.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
    list.truncate(MAX_IMAGES);
    let images = list
        .into_iter()
        .map(|r| {
            // `repo:tag` → `repo@digest` (a registry's port is not a tag); an image pulled by
            // digest has only that name.
            let repo = match r.name.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => repo,
                _ => r.name.as_str(),
            };
            let names = if r.name.contains('@') {
                vec![r.name.clone()]
            } else {
                vec![format!("{repo}@{}", r.manifest_digest), r.name.clone()]
            };
            ContainerImage {
                names: Some(names),
                size_bytes: Some(r.size as i64),
            }
        })
        .collect();
    Some(images)
}

/// Registers the node and reports its status: the node's facts, the conditions eviction
/// drives, and the budget of writes to the apiserver.
pub struct Reporter {
    pub info: Arc<NodeInfo>,
    pub evictions: Arc<Evictions>,
    pub limit: Arc<Limiter>,
}

/// The status without heartbeat times, to tell a change from a heartbeat.
fn comparable(st: &NodeStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(st).unwrap_or_default();
    if let Some(cs) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    v
}

impl Reporter {
    /// The Node as registered: its status, plus what only registration sets.
    fn registration(&self) -> K8sNode {
        let info = &self.info;
        let mut n = K8sNode {
            status: Some(self.status()),
            ..Default::default()
        };
        n.metadata.name = Some(info.cfg.node_name.clone());
        n.metadata.labels = Some(info.labels());
        n.metadata.annotations = Some(std::collections::BTreeMap::from([(
            "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
            "true".to_string(),
        )]));
        // Without --pod-cidr the node IPAM controller sets the range (see `overlay`).
        let cidrs: Option<Vec<String>> = info
            .cfg
            .pod_cidr
            .as_ref()
            .map(|c| c.iter().map(ToString::to_string).collect());
        n.spec = Some(NodeSpec {
            pod_cidr: cidrs.as_ref().map(|c| c[0].clone()),
            pod_cidrs: cidrs,
            taints: (!info.cfg.taints.is_empty()).then(|| info.cfg.taints.clone()),
            ..Default::default()
        });
        n
    }

    /// The status to report now: node_object()'s, with heartbeat times and the kubelet port.
    fn status(&self) -> NodeStatus {
        let info = &self.info;
        let mut st = info.node_object(&self.evictions).status.unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        for c in st.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = Some(now.clone());
        }
        st.images = node_images(&info.cfg.images_dir());
        st.daemon_endpoints = Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: info.cfg.port as i32,
            }),
        });
        st
    }

    /// Creates the Node, or brings an existing one's labels and taints up to date. Retries until
    /// the apiserver takes it.
    pub async fn register(&self, client: &watch::Receiver<kube::Client>) -> K8sNode {
        let info = &self.info;
        let mut delay = Duration::from_millis(200);
        loop {
            let api: Api<K8sNode> = Api::all(client.borrow().clone());
            let want = self.registration();
            let result = match api.create(&PostParams::default(), &want).await {
                Ok(n) => {
                    tracing::info!(node = %info.cfg.node_name, "node registered");
                    Ok(n)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Re-registration keeps what others set and re-asserts ours.
                    let mut patch = json!({"metadata": {"labels": want.metadata.labels}});
                    if let Some(c) = &info.cfg.pod_cidr {
                        let all: Vec<String> = c.iter().map(ToString::to_string).collect();
                        patch["spec"] = json!({"podCIDR": all[0], "podCIDRs": all});
                    }
                    api.patch(
                        &info.cfg.node_name,
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => return n,
                Err(e) => {
                    tracing::warn!("registering the node: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(7));
                }
            }
        }
    }

    async fn renew_lease(&self, client: &kube::Client, owner: &K8sNode) -> kube::Result<()> {
        let info = &self.info;
        let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let name = &info.cfg.node_name;
        let now = MicroTime(jiff::Timestamp::now());
        match api.get_opt(name).await? {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(now);
                spec.holder_identity = Some(name.clone());
                spec.lease_duration_seconds = Some(LEASE_DURATION);
                api.replace(name, &PostParams::default(), &lease).await?;
            }
            None => {
                let mut lease = Lease {
                    spec: Some(LeaseSpec {
                        holder_identity: Some(name.clone()),
                        lease_duration_seconds: Some(LEASE_DURATION),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                lease.metadata.name = Some(name.clone());
                lease.metadata.owner_references = owner.metadata.uid.clone().map(|uid| {
                    vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid,
                        ..Default::default()
                    }]
                });
                api.create(&PostParams::default(), &lease).await?;
            }
        }
        Ok(())
    }

    /// Registers the node, then heartbeats until the process ends. A Node deleted by someone is
    /// registered again, as the kubelet does.
    pub async fn run(self, client: watch::Receiver<kube::Client>, mut owner: K8sNode) {
        let info = self.info.clone();
        let mut last: Option<(serde_json::Value, Instant)> = None;
        loop {
            let c = client.borrow().clone();
            self.limit.acquire().await;
            if let Err(e) = self.renew_lease(&c, &owner).await {
                tracing::warn!("renewing the node lease: {e}");
            }
            let st = self.status();
            let cmp = comparable(&st);
            let due = match &last {
                None => true,
                Some((prev, at)) => *prev != cmp || at.elapsed() >= REPORT_EVERY,
            };
            if due {
                self.limit.acquire().await;
                let api: Api<K8sNode> = Api::all(c);
                match api
                    .patch_status(
                        &info.cfg.node_name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": st })),
                    )
                    .await
                {
                    Ok(_) => last = Some((cmp, Instant::now())),
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        tracing::warn!("the Node object is gone: registering again");
                        owner = self.register(&client).await;
                        last = None;
                        continue;
                    }
                    Err(e) => tracing::warn!("updating the node status: {e}"),
                }
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }
}
