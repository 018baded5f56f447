//! The pods the node runs with the status each worker published last: what the node API lists,
//! what the cluster reports to the apiserver, and what metrics and garbage collection look at.

use std::collections::BTreeMap;
use std::sync::RwLock;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

/// Pods by UID with their current status, and a counter bumped whenever one changes or goes.
pub struct StatusCache {
    pods: RwLock<BTreeMap<String, Pod>>,
    changed: watch::Sender<u64>,
}

impl Default for StatusCache {
    fn default() -> Self {
        Self {
            pods: RwLock::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl StatusCache {
    pub fn publish(&self, uid: &str, pod: Pod) {
        self.pods
            .write()
            .expect("pods lock")
            .insert(uid.to_string(), pod);
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn forget(&self, uid: &str) {
        self.pods.write().expect("pods lock").remove(uid);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Wakes whenever a pod's published status changes or a pod goes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Runs `f` on the pods by UID (under the lock: `f` must not wait).
    pub fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, Pod>) -> R) -> R {
        f(&self.pods.read().expect("pods lock"))
    }

    /// A copy of the pods by UID.
    pub fn snapshot(&self) -> BTreeMap<String, Pod> {
        self.read(Clone::clone)
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.read(|p| p.contains_key(uid))
    }

    /// The pod named `namespace/name` as the node runs it, with its live status.
    pub fn pod_named(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.read(|pods| {
            pods.values()
                .find(|p| {
                    p.metadata.namespace.as_deref() == Some(namespace)
                        && p.metadata.name.as_deref() == Some(name)
                })
                .cloned()
        })
    }

    /// The images the containers (init containers too) of the node's pods name.
    pub fn images(&self) -> Vec<String> {
        self.read(|pods| {
            pods.values()
                .filter_map(|p| p.spec.as_ref())
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .filter_map(|c| c.image.clone())
                })
                .collect()
        })
    }
}
