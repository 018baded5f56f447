//! The pod sync loop: one manager keeps a worker per desired pod (and tears down pods that are
//! no longer desired, including ones found on disk after a restart); each worker drives its pod's
//! shim towards the spec and publishes the pod's status.
//!
//! What the node's pods share is split by job: `NodeInfo` (the node's fixed facts), `ApiNode`
//! (its Node as the apiserver has it), `Admission`, `StatusCache`, `EventSink`, `ApiObjects`,
//! `Images`, plus the eviction requests and the network from their own modules. A worker holds
//! them all (`Services`); everything else takes only the pieces it uses.

mod admission;
mod apinode;
mod apiobjects;
mod cache;
mod dns;
mod events;
mod images;
mod node;
pub mod resources;
pub mod security;
pub mod status;
pub mod translate;
pub mod userns;
mod worker;

pub use admission::{Admission, Refusal};
#[cfg(test)]
pub(crate) use apinode::testing;
pub use apinode::ApiNode;
pub use apiobjects::ApiObjects;
pub use cache::StatusCache;
pub use events::{EventSink, PodEvent};
pub use images::Images;
pub use node::NodeInfo;
pub use worker::POD_FILE;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_rules::qos::QosClass;
use tokio::sync::watch;

use crate::config::Config;
use crate::eviction::Evictions;
use crate::manifest::Desired;
use crate::network::Network;
use crate::util::send_if_changed;

/// The pieces of the node a pod worker uses.
pub struct Services {
    pub info: Arc<NodeInfo>,
    /// The Node as the apiserver has it (admission's view of the node in a cluster).
    pub node: Arc<ApiNode>,
    pub admission: Arc<Admission>,
    pub evictions: Arc<Evictions>,
    pub statuses: Arc<StatusCache>,
    pub events: Arc<EventSink>,
    pub api: Arc<ApiObjects>,
    pub images: Arc<Images>,
    pub network: Arc<Network>,
    /// Host ID ranges of `hostUsers: false` pods.
    pub userns: userns::Allocator,
    /// NetworkPolicy enforcement: a new sandbox's address is registered before its
    /// containers start.
    pub netpol: Arc<crate::netpol::Netpol>,
}

/// A pod's cgroup below the root, by QoS class (the kubelet's layout).
pub fn pod_cgroup(root: &str, qos: QosClass, uid: &str) -> String {
    match qos.cgroup_dir() {
        Some(d) => format!("/{root}/{d}/pod{uid}"),
        None => format!("/{root}/pod{uid}"),
    }
}

struct Handle {
    stop: watch::Sender<bool>,
    /// The latest spec of the pod (only resources can change for the same UID).
    pod: watch::Sender<Pod>,
    task: tokio::task::JoinHandle<()>,
}

/// UIDs of the pods the runtime holds on disk (from a previous run of the agent too).
fn uids_on_disk(cfg: &Config) -> Vec<String> {
    std::fs::read_dir(cfg.run_dir.join("pods"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The pod a sandbox on disk was made for; a sandbox whose spec was never written gets a
/// minimal pod, enough to tear it down.
fn pod_on_disk(cfg: &Config, uid: &str) -> Pod {
    std::fs::read(cfg.pod_run_dir(uid).join(worker::POD_FILE))
        .ok()
        .and_then(|d| serde_json::from_slice::<Pod>(&d).ok())
        .unwrap_or_else(|| {
            let mut p = Pod::default();
            p.metadata.uid = Some(uid.to_string());
            p.metadata.name = Some(uid.to_string());
            p.metadata.namespace = Some("default".into());
            p
        })
}

/// The network namespace of a pod's running sandbox (its pause process's).
pub fn sandbox_netns(cfg: &Config, uid: &str) -> Option<PathBuf> {
    let st = podlet_runtime::shim::read_state(&cfg.pod_run_dir(uid))?;
    if st.pause_exited || st.pause_pid <= 0 {
        return None;
    }
    let p = PathBuf::from(format!("/proc/{}/ns/net", st.pause_pid));
    p.exists().then_some(p)
}

/// The pods the runtime holds on disk, with the spec each was made from.
pub fn pods_on_disk(cfg: &Config) -> Vec<(String, Pod)> {
    uids_on_disk(cfg)
        .into_iter()
        .map(|uid| {
            let pod = pod_on_disk(cfg, &uid);
            (uid, pod)
        })
        .collect()
}

/// Releases network attachments and user namespace ranges of sandboxes that no longer exist
/// (after a crash or reboot).
pub fn network_gc(svc: &Services) {
    let live = uids_on_disk(&svc.info.cfg);
    svc.userns.retain(&live);
    if let Err(e) = svc.network.gc(&live) {
        tracing::warn!("CNI GC: {}", crate::util::chain(&e));
    }
}

/// Runs until the process ends: starts, keeps and stops pod workers as `desired` changes.
pub async fn run_manager(svc: Arc<Services>, mut desired: watch::Receiver<Desired>) {
    let mut workers: HashMap<String, Handle> = HashMap::new();
    loop {
        let want = desired.borrow_and_update().clone();
        workers.retain(|_, h| !h.task.is_finished());
        for (uid, sp) in &want {
            // A pod being deleted from the apiserver: its worker gets the deletion's grace
            // period, then stops.
            if sp.pod.metadata.deletion_timestamp.is_some() {
                match workers.get(uid) {
                    Some(h) => {
                        send_if_changed(&h.pod, &sp.pod);
                        let _ = h.stop.send(true);
                    }
                    None if svc.info.cfg.pod_run_dir(uid).exists() => {
                        tracing::info!(pod = %uid, "tearing down a pod being deleted");
                        workers.insert(uid.clone(), spawn(svc.clone(), sp.pod.clone(), true));
                    }
                    None => {}
                }
                continue;
            }
            match workers.get(uid) {
                Some(h) => {
                    send_if_changed(&h.pod, &sp.pod);
                }
                None => {
                    workers.insert(uid.clone(), spawn(svc.clone(), sp.pod.clone(), false));
                }
            }
        }
        for (uid, h) in &workers {
            if !want.contains_key(uid) {
                let _ = h.stop.send(true);
            }
        }
        // Only sandboxes nobody handles are read from disk.
        for uid in uids_on_disk(&svc.info.cfg) {
            if !want.contains_key(&uid) && !workers.contains_key(&uid) {
                tracing::info!(pod = %uid, "tearing down a pod that is no longer wanted");
                let pod = pod_on_disk(&svc.info.cfg, &uid);
                workers.insert(uid, spawn(svc.clone(), pod, true));
            }
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

fn spawn(svc: Arc<Services>, pod: Pod, stopping: bool) -> Handle {
    let (stop, rx) = watch::channel(stopping);
    let (pod_tx, pod_rx) = watch::channel(pod.clone());
    let task = tokio::spawn(worker::run(svc, pod, rx, pod_rx));
    Handle {
        stop,
        pod: pod_tx,
        task,
    }
}
