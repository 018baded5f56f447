//! Admission as the kubelet does it: a pod is placed only where its node selector, affinity and
//! the node's NoExecute taints allow, and only while the requests of the admitted pods fit the
//! node's allocatable resources; the QoS-level cgroups follow the admitted pods.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_rules::nodeaffinity::{required_node_affinity_matches, NodeFacts};
use k8s_rules::qos::QosClass;
use k8s_rules::taints::find_untolerated;

use super::cache::StatusCache;
use super::security::{AppArmorProblem, SysctlProblem};
use super::{pod_cgroup, resources, NodeInfo};
use crate::eviction::Candidate;

/// Why the node refused a pod, or took it back: its status reason and message, worded as the
/// kubelet words them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("Pod was rejected: Node didn't have enough resource: {}, requested: {requested}, used: {used}, capacity: {capacity}", resource.as_str())]
    OutOfResource {
        resource: Resource,
        requested: i64,
        used: i64,
        capacity: i64,
    },
    #[error("Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector")]
    NodeAffinity,
    #[error("Predicate TaintToleration failed: node(s) had untolerated taint {{{key}: {value}}}")]
    TaintToleration { key: String, value: String },
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
            Refusal::TaintToleration { .. } => "TaintToleration",
            Refusal::SysctlForbidden(_) => "SysctlForbidden",
            Refusal::AppArmor(_) => "AppArmor",
            Refusal::Evicted(_) => "Evicted",
        }
    }

    /// The pod status's `message`.
    pub fn message(&self) -> String {
        self.to_string()
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
    admitted: Mutex<BTreeMap<String, Admitted>>,
    qos_update: Mutex<()>,
}

impl Admission {
    pub fn new(info: Arc<NodeInfo>) -> Self {
        Self {
            info,
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
    /// taint change): node selector and required node affinity, then NoExecute taints the pod
    /// does not tolerate (not for static pods).
    pub fn placement(&self, pod: &Pod) -> Result<(), Refusal> {
        let spec = pod.spec.clone().unwrap_or_default();
        let labels = self.info.labels();
        let node = NodeFacts {
            name: &self.info.cfg.node_name,
            labels: &labels,
        };
        if !required_node_affinity_matches(&spec, node) {
            return Err(Refusal::NodeAffinity);
        }
        let is_static = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.source"))
            .is_some_and(|s| s == "file");
        if !is_static {
            let tolerations = spec.tolerations.unwrap_or_default();
            if let Some(t) = find_untolerated(&self.info.cfg.taints, &tolerations, |t| {
                t.effect == "NoExecute"
            }) {
                return Err(Refusal::TaintToleration {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                });
            }
        }
        Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_the_kubelets() {
        let r = Refusal::OutOfResource {
            resource: Resource::Memory,
            requested: 2,
            used: 3,
            capacity: 4,
        };
        assert_eq!(r.reason(), "OutOfmemory");
        assert_eq!(
            r.message(),
            "Pod was rejected: Node didn't have enough resource: memory, requested: 2, used: 3, capacity: 4"
        );
        let t = Refusal::TaintToleration {
            key: "k".into(),
            value: "v".into(),
        };
        assert_eq!(
            t.message(),
            "Predicate TaintToleration failed: node(s) had untolerated taint {k: v}"
        );
        let s = Refusal::SysctlForbidden(SysctlProblem::NotNamespaced("kernel.pid_max".into()));
        assert_eq!(
            (s.reason(), s.message().as_str()),
            (
                "SysctlForbidden",
                "forbidden sysctl: \"kernel.pid_max\" not namespaced"
            )
        );
    }
}
