//! The pod sync loop: one manager keeps a worker per desired pod (and tears down pods that are
//! no longer desired, including ones found on disk after a restart); each worker drives its pod's
//! shim towards the spec and publishes the pod's status.

pub mod status;
pub mod translate;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use podlet_runtime::image::ImageStore;
use tokio::sync::watch;

use crate::config::Config;
use crate::manifest::Desired;

/// Everything workers share.
pub struct Node {
    pub cfg: Config,
    pub images: ImageStore,
    /// Pods with their current status, by UID, for the node API.
    pub pods: RwLock<BTreeMap<String, Pod>>,
    pub host_ip: Option<IpAddr>,
    pub memory_capacity: f64,
    /// The podlet binary, re-executed as each pod's shim.
    pub exe: PathBuf,
    pub network: crate::network::Network,
}

impl Node {
    pub fn new(cfg: Config) -> anyhow::Result<Self> {
        let images = ImageStore::open(cfg.images_dir())?;
        let host_ip = cfg.node_ip.or_else(first_global_ip);
        let exe = std::env::current_exe()?;
        let network = crate::network::Network::init(&cfg, &exe)?;
        Ok(Self {
            images,
            pods: RwLock::new(BTreeMap::new()),
            host_ip,
            memory_capacity: memory_capacity(),
            exe,
            network,
            cfg,
        })
    }

    pub fn publish(&self, uid: &str, pod: Pod) {
        self.pods
            .write()
            .expect("pods lock")
            .insert(uid.to_string(), pod);
    }

    pub fn forget(&self, uid: &str) {
        self.pods.write().expect("pods lock").remove(uid);
    }
}

fn memory_capacity() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(1024.0 * 1024.0 * 1024.0)
}

fn first_global_ip() -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut v6 = None;
    for a in addrs {
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            let ip = v4.ip();
            if !ip.is_loopback() && !ip.is_link_local() {
                return Some(IpAddr::V4(ip));
            }
        } else if let Some(s6) = addr.as_sockaddr_in6() {
            let ip = s6.ip();
            if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 && v6.is_none() {
                v6 = Some(IpAddr::V6(ip));
            }
        }
    }
    v6
}

struct Handle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Pods the runtime holds on disk, by UID (from a previous run of the agent).
fn pods_on_disk(node: &Node) -> BTreeMap<String, Pod> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(node.cfg.run_dir.join("pods")) else {
        return out;
    };
    for e in rd.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        match std::fs::read(e.path().join(worker::POD_FILE))
            .ok()
            .and_then(|d| serde_json::from_slice::<Pod>(&d).ok())
        {
            Some(p) => {
                out.insert(uid, p);
            }
            None => {
                // A sandbox that never got its spec written: build a minimal pod to tear down.
                let mut p = Pod::default();
                p.metadata.uid = Some(uid.clone());
                p.metadata.name = Some(uid.clone());
                p.metadata.namespace = Some("default".into());
                out.insert(uid, p);
            }
        }
    }
    out
}

/// Releases network attachments of sandboxes that no longer exist (after a crash or reboot).
pub fn network_gc(node: &Node) {
    let live: Vec<String> = pods_on_disk(node).into_keys().collect();
    if let Err(e) = node.network.gc(&live) {
        tracing::warn!("CNI GC: {e}");
    }
}

/// Runs until the process ends: starts, keeps and stops pod workers as `desired` changes.
pub async fn run_manager(node: Arc<Node>, mut desired: watch::Receiver<Desired>) {
    let mut workers: HashMap<String, Handle> = HashMap::new();
    loop {
        let want = desired.borrow_and_update().clone();
        workers.retain(|_, h| !h.task.is_finished());
        for (uid, sp) in &want {
            if !workers.contains_key(uid) {
                workers.insert(uid.clone(), spawn(node.clone(), sp.pod.clone(), false));
            }
        }
        for (uid, h) in &workers {
            if !want.contains_key(uid) {
                let _ = h.stop.send(true);
            }
        }
        for (uid, pod) in pods_on_disk(&node) {
            if !want.contains_key(&uid) && !workers.contains_key(&uid) {
                tracing::info!(pod = %uid, "tearing down a pod that is no longer wanted");
                workers.insert(uid, spawn(node.clone(), pod, true));
            }
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

fn spawn(node: Arc<Node>, pod: Pod, stopping: bool) -> Handle {
    let (stop, rx) = watch::channel(stopping);
    let task = tokio::spawn(worker::run(node, pod, rx));
    Handle { stop, task }
}
