//! The pod QoS class (`pkg/apis/core/helper/qos.ComputePodQOS`), on the pod as the apiserver
//! stores it: requests left out are the limits (`SetDefaults_Pod`), so a pod the apiserver
//! classifies at creation and the same pod on its node get the same class.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;

use crate::quantity::Milli;
use crate::resources::container_resource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The class's cgroup directory below the node's cgroup root (the kubelet's layout:
    /// Guaranteed pods sit at the root).
    pub fn cgroup_dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// Only these resources decide the class.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

pub fn qos_class(spec: &PodSpec) -> QosClass {
    let mut requests: BTreeMap<&str, Milli> = BTreeMap::new();
    let mut limits: BTreeMap<&str, Milli> = BTreeMap::new();
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let mut limited = 0;
        for name in QOS_RESOURCES {
            let (request, limit) = container_resource(c, name);
            if request > Milli::ZERO {
                *requests.entry(name).or_default() += request;
            }
            if let Some(limit) = limit.filter(|l| *l > Milli::ZERO) {
                *limits.entry(name).or_default() += limit;
                limited += 1;
            }
        }
        if limited < QOS_RESOURCES.len() {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(k, r)| limits.get(k) == Some(r))
    {
        return QosClass::Guaranteed;
    }
    QosClass::Burstable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::ctr;

    fn spec(containers: Vec<k8s_openapi::api::core::v1::Container>) -> PodSpec {
        PodSpec {
            containers,
            ..Default::default()
        }
    }

    #[test]
    fn classes_as_kubernetes_computes_them() {
        use QosClass::*;
        let guaranteed = [("cpu", "1"), ("memory", "1Gi")];
        for (what, s, want) in [
            ("nothing set", spec(vec![ctr(&[], &[])]), BestEffort),
            ("limits only", spec(vec![ctr(&[], &guaranteed)]), Guaranteed),
            (
                "requests equal limits, spelled differently",
                spec(vec![ctr(
                    &[("cpu", "1000m"), ("memory", "67108864")],
                    &[("cpu", "1"), ("memory", "64Mi")],
                )]),
                Guaranteed,
            ),
            (
                "1Gi and 1024Mi are equal",
                spec(vec![ctr(
                    &[("cpu", "1"), ("memory", "1Gi")],
                    &[("cpu", "1"), ("memory", "1024Mi")],
                )]),
                Guaranteed,
            ),
            (
                "a request below its limit",
                spec(vec![ctr(&[("cpu", "500m")], &guaranteed)]),
                Burstable,
            ),
            (
                "no memory limit",
                spec(vec![ctr(&[], &[("cpu", "1")])]),
                Burstable,
            ),
            (
                "requests only",
                spec(vec![ctr(&[("memory", "64Mi")], &[])]),
                Burstable,
            ),
            (
                "one container without limits",
                spec(vec![ctr(&[], &guaranteed), ctr(&[], &[])]),
                Burstable,
            ),
            (
                "zero requests count as none",
                spec(vec![ctr(&[("cpu", "0"), ("memory", "0")], &[])]),
                BestEffort,
            ),
            (
                "other resources do not count",
                spec(vec![ctr(&[("ephemeral-storage", "1Gi")], &[])]),
                BestEffort,
            ),
            (
                "an init container without limits",
                PodSpec {
                    init_containers: Some(vec![ctr(&[("cpu", "100m")], &[])]),
                    ..spec(vec![ctr(&[], &guaranteed)])
                },
                Burstable,
            ),
            (
                "init containers with equal requests and limits",
                PodSpec {
                    init_containers: Some(vec![ctr(
                        &[("cpu", "2000m")],
                        &[("cpu", "2"), ("memory", "1073741824")],
                    )]),
                    ..spec(vec![ctr(&[], &guaranteed)])
                },
                Guaranteed,
            ),
        ] {
            assert_eq!(qos_class(&s), want, "{what}");
        }
    }
}
