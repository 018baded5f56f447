//! Admission as the kubelet does it: a pod is placed only where its node selector, affinity and
//! the node's NoExecute taints allow — by the Node as the apiserver has it in a cluster
//! (`ApiNode`), by the local labels and `--register-with-taints` on a standalone node — and only
//! while the requests of the admitted pods fit the node's allocatable resources; the QoS-level
//! cgroups follow the admitted pods.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodSpec, Taint};
use k8s_rules::nodeaffinity::{required_node_affinity_matches, NodeFacts};
use k8s_rules::qos::QosClass;
use k8s_rules::taints::find_untolerated;

use super::apinode::{ApiNode, NodeView};
use super::cache::StatusCache;
use super::security::{AppArmorProblem, SysctlProblem};
use super::{pod_cgroup, resources, NodeInfo};
use crate::eviction::Candidate;

/// Why the node refused a pod, or took it back: its status reason and message, worded as the
/// kubelet words them (`lifecycle/predicate.go`, the sysctl and AppArmor admit handlers).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("Node didn't have enough resource: {}, requested: {requested}, used: {used}, capacity: {capacity}", resource.as_str())]
    OutOfResource {
        resource: Resource,
        requested: i64,
        used: i64,
        capacity: i64,
    },
    #[error("Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector")]
    NodeAffinity,
    /// A NoExecute taint the pod does not tolerate (the kubelet names none of them).
    #[error("Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate")]
    TaintToleration,
    #[error("forbidden sysctl: {0}")]
    SysctlForbidden(SysctlProblem),
    #[error("{0}")]
    AppArmor(AppArmorProblem),
    /// Node-pressure eviction took the pod back; the message says which resource ran low.
    #[error("{0}")]
    Evicted(String),
}

/// A resource admission counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
}

impl Refusal {
    /// The pod status's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::OutOfResource {
                resource: Resource::Cpu,
                ..
            } => "OutOfcpu",
            Refusal::OutOfResource {
                resource: Resource::Memory,
                ..
            } => "OutOfmemory",
            Refusal::NodeAffinity => "NodeAffinity",
            Refusal::TaintToleration => "TaintToleration",
            Refusal::SysctlForbidden(_) => "SysctlForbidden",
            Refusal::AppArmor(_) => "AppArmor",
            Refusal::Evicted(_) => "Evicted",
        }
    }

    /// The admission result's message: the event's.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The pod status's `message`: a refusal at admission is "Pod was rejected: " and the
    /// event's message (the kubelet's `rejectPod`); an eviction says what ran low.
    pub fn status_message(&self) -> String {
        match self {
            Refusal::Evicted(m) => m.clone(),
            r => format!("Pod was rejected: {r}"),
        }
    }

    /// Whether the pod was refused at admission (it never ran), not evicted.
    pub fn at_admission(&self) -> bool {
        !matches!(self, Refusal::Evicted(_))
    }
}

/// The placement checks' findings for a pod on a node.
#[derive(Debug, PartialEq)]
struct Placement<'a> {
    /// The node selector and required node affinity match.
    affinity: bool,
    /// The first NoExecute taint the pod does not tolerate (not checked for static pods).
    untolerated: Option<&'a Taint>,
}

impl Placement<'_> {
    /// The kubelet's order: node affinity (with the other scheduler predicates), then taints.
    fn verdict(&self) -> Result<(), Refusal> {
        if !self.affinity {
            return Err(Refusal::NodeAffinity);
        }
        if self.untolerated.is_some() {
            return Err(Refusal::TaintToleration);
        }
        Ok(())
    }
}

fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/config.source"))
        .is_some_and(|s| s == "file")
}

/// The kubelet's `generalFilter` for placement: `pod` on the node `name` with `node`'s labels
/// and taints.
fn place<'a>(pod: &Pod, name: &str, node: &'a NodeView) -> Placement<'a> {
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let affinity = required_node_affinity_matches(
        spec,
        NodeFacts {
            name,
            labels: &node.labels,
        },
    );
    let untolerated = if is_static(pod) {
        None
    } else {
        let tolerations = spec.tolerations.as_deref().unwrap_or_default();
        find_untolerated(&node.taints, tolerations, |t| t.effect == "NoExecute")
    };
    Placement {
        affinity,
        untolerated,
    }
}

/// What an admitted pod takes.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    qos: QosClass,
    /// Millicores.
    cpu: i64,
    /// Bytes.
    memory: i64,
}

/// The pods admitted to the node, and the QoS cgroups sized for them.
pub struct Admission {
    info: Arc<NodeInfo>,
    /// The Node as the apiserver has it, which placement goes by in a cluster.
    node: Arc<ApiNode>,
    admitted: Mutex<BTreeMap<String, Admitted>>,
    qos_update: Mutex<()>,
}

impl Admission {
    pub fn new(info: Arc<NodeInfo>, node: Arc<ApiNode>) -> Self {
        Self {
            info,
            node,
            admitted: Mutex::new(BTreeMap::new()),
            qos_update: Mutex::new(()),
        }
    }

    fn requests(spec: &PodSpec, qos: QosClass) -> Admitted {
        Admitted {
            qos,
            cpu: resources::pod_request(spec, "cpu"),
            memory: resources::pod_request(spec, "memory"),
        }
    }

    /// Admits a pod if its requests fit next to the admitted ones.
    pub fn admit(&self, uid: &str, spec: &PodSpec, qos: QosClass) -> Result<(), Refusal> {
        let want = Self::requests(spec, qos);
        let mut admitted = self.admitted.lock().expect("admitted lock");
        if admitted.contains_key(uid) {
            return Ok(());
        }
        let (cap_cpu, cap_mem) = self.info.allocatable();
        let used_cpu: i64 = admitted.values().map(|a| a.cpu).sum();
        let used_mem: i64 = admitted.values().map(|a| a.memory).sum();
        for (resource, requested, used, capacity) in [
            (Resource::Cpu, want.cpu, used_cpu, cap_cpu),
            (Resource::Memory, want.memory, used_mem, cap_mem),
        ] {
            if requested > 0 && used + requested > capacity {
                return Err(Refusal::OutOfResource {
                    resource,
                    requested,
                    used,
                    capacity,
                });
            }
        }
        admitted.insert(uid.to_string(), want);
        Ok(())
    }

    /// The kubelet's placement checks at admission (the scheduler may have raced a label or
    /// taint change, or the pod was bound by hand): node selector and required node affinity,
    /// then NoExecute taints the pod does not tolerate (not for static pods). In a cluster they
    /// go by the Node as the apiserver has it: the watch's copy, and when node affinity is all
    /// that fails, a fresh read, as the kubelet reads the Node again past its informer's cache
    /// (a fresh read too before the watch has seen the Node). A standalone node — or a cluster
    /// node whose apiserver does not answer before the watch has seen its Node — goes by the
    /// local labels and `--register-with-taints` (the kubelet's `initialNode`).
    pub async fn placement(&self, pod: &Pod) -> Result<(), Refusal> {
        let name = &self.info.cfg.node_name;
        let local = || {
            Arc::new(NodeView {
                labels: self.info.labels(),
                taints: self.info.cfg.taints.clone(),
            })
        };
        let (node, fresh) = match self.node.current() {
            Some(n) => (n, false),
            None if self.node.connected() => match self.node.fetch().await {
                Some(n) => (Arc::new(n), true),
                None => (local(), false),
            },
            None => (local(), false),
        };
        let found = place(pod, name, &node);
        if !fresh && !found.affinity && found.untolerated.is_none() && self.node.connected() {
            if let Some(n) = self.node.fetch().await {
                return self.verdict(place(pod, name, &n));
            }
        }
        self.verdict(found)
    }

    fn verdict(&self, found: Placement<'_>) -> Result<(), Refusal> {
        if let Some(t) = found.untolerated {
            tracing::info!(
                key = t.key,
                value = t.value.as_deref().unwrap_or_default(),
                effect = t.effect,
                "the pod does not tolerate the node's taint"
            );
        }
        found.verdict()
    }

    /// Records a pod that already runs (adopted after a restart), whether or not it fits now.
    pub fn admit_running(&self, uid: &str, spec: &PodSpec, qos: QosClass) {
        self.admitted
            .lock()
            .expect("admitted lock")
            .insert(uid.to_string(), Self::requests(spec, qos));
    }

    pub fn release(&self, uid: &str) {
        self.admitted.lock().expect("admitted lock").remove(uid);
    }

    /// The QoS class an admitted pod was admitted with.
    pub fn qos(&self, uid: &str) -> Option<QosClass> {
        self.admitted
            .lock()
            .expect("admitted lock")
            .get(uid)
            .map(|a| a.qos)
    }

    /// Writes the QoS-level cgroups: the root limited to allocatable, BestEffort at the minimum
    /// weight, Burstable weighted by the requests of its pods.
    pub fn update_qos_cgroups(&self) {
        use podlet_runtime::cgroup::{apply, Limits};
        // One update at a time: two workers racing here could leave the limits of the older
        // snapshot of admitted pods written last.
        let _one = self.qos_update.lock().expect("qos update lock");
        let (cpu, mem) = self.info.allocatable();
        let admitted = self.admitted.lock().expect("admitted lock").clone();
        let sum = |qos: QosClass, cpu: bool| -> i64 {
            admitted
                .values()
                .filter(|a| a.qos == qos)
                .map(|a| if cpu { a.cpu } else { a.memory })
                .sum()
        };
        let burstable = sum(QosClass::Burstable, true);
        // --qos-reserved: lower classes may not use what higher classes requested.
        let reserve = |classes: &[QosClass]| {
            self.info.cfg.qos_reserved_memory.map(|f| {
                let requested: i64 = classes.iter().map(|q| sum(*q, false)).sum();
                (mem - (requested as f64 * f) as i64).max(0)
            })
        };
        let root = &self.info.cfg.cgroup_root;
        let sets = [
            (
                root.clone(),
                Limits {
                    cpu_shares: Some(resources::milli_cpu_to_shares(cpu)),
                    memory: Some(mem),
                    ..Default::default()
                },
            ),
            (
                format!("{root}/besteffort"),
                Limits {
                    cpu_shares: Some(2),
                    memory: reserve(&[QosClass::Guaranteed, QosClass::Burstable]),
                    ..Default::default()
                },
            ),
            (
                format!("{root}/burstable"),
                Limits {
                    cpu_shares: Some(resources::milli_cpu_to_shares(burstable)),
                    memory: reserve(&[QosClass::Guaranteed]),
                    ..Default::default()
                },
            ),
        ];
        for (path, limits) in sets {
            if let Err(e) = apply(&self.info.cgroups, &path, &limits) {
                tracing::warn!("cgroup {path}: {e}");
            }
        }
    }

    /// The admitted pods the node runs, with their memory use now, for the eviction manager.
    pub fn eviction_candidates(&self, pods: &StatusCache) -> Vec<Candidate> {
        let admitted = self.admitted.lock().expect("admitted lock").clone();
        pods.read(|pods| {
            admitted
                .iter()
                .filter_map(|(uid, a)| {
                    let pod = pods.get(uid)?;
                    let usage = podlet_runtime::cgroup::memory_usage(
                        &self.info.cgroups,
                        &pod_cgroup(&self.info.cfg.cgroup_root, a.qos, uid),
                    )
                    .unwrap_or(0) as i64;
                    Some(Candidate {
                        uid: uid.clone(),
                        name: format!(
                            "{}/{}",
                            pod.metadata.namespace.clone().unwrap_or_default(),
                            pod.metadata.name.clone().unwrap_or_default()
                        ),
                        memory_usage: usage,
                        memory_request: a.memory,
                        priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
