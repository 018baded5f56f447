//! A container's and a pod's effective requests and limits, as the kubelet and the scheduler
//! both compute them (`k8s.io/component-helpers/resource`): a request left out defaults to the
//! limit (the apiserver's `SetDefaults_Pod`), app containers and sidecars (init containers with
//! `restartPolicy: Always`) add up, ordinary init containers run one at a time beside the
//! sidecars started before them, and the pod's `overhead` comes on top.
//!
//! Quantities that do not parse count as absent: validation reports them, these rules do not.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::Milli;

fn get(map: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<Milli> {
    map.and_then(|m| m.get(name))
        .and_then(|q| Milli::of(q).ok())
}

/// A container's (request, limit) for resource `name`; an unset request is the limit.
pub fn container_resource(c: &Container, name: &str) -> (Milli, Option<Milli>) {
    let r = c.resources.as_ref();
    let limit = get(r.and_then(|r| r.limits.as_ref()), name);
    let request = get(r.and_then(|r| r.requests.as_ref()), name)
        .or(limit)
        .unwrap_or(Milli::ZERO);
    (request, limit)
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The pod's request for `name`: what it needs while its longest-lived set of containers runs,
/// plus its overhead.
pub fn pod_request(spec: &PodSpec, name: &str) -> Milli {
    aggregate(spec, name, |c| Some(container_resource(c, name).0)).unwrap_or(Milli::ZERO)
}

/// What the scheduler assumes a container uses when it states no cpu or memory request
/// (`DefaultMilliCPURequest`, `DefaultMemoryRequest`), so that many request-less pods do not
/// all land on one node. An explicit `0` stays 0.
pub fn nonzero_default(name: &str) -> Option<Milli> {
    match name {
        "cpu" => Some(Milli(100)),
        "memory" => Some(Milli::from_units(200 * 1024 * 1024)),
        _ => None,
    }
}

/// `pod_request` with [`nonzero_default`] for each container that states no request (nor
/// limit) for `name`: the scheduler's `NonZeroRequested`, which its scores weigh.
pub fn pod_request_nonzero(spec: &PodSpec, name: &str) -> Milli {
    let Some(default) = nonzero_default(name) else {
        return pod_request(spec, name);
    };
    let stated = |c: &Container| {
        let r = c.resources.as_ref();
        get(r.and_then(|r| r.requests.as_ref()), name)
            .or_else(|| get(r.and_then(|r| r.limits.as_ref()), name))
    };
    aggregate(spec, name, |c| Some(stated(c).unwrap_or(default))).unwrap_or(Milli::ZERO)
}

/// The pod's limit for `name`, only when every container declares one (otherwise the pod may
/// use what the node has), computed as the request is.
pub fn pod_limit(spec: &PodSpec, name: &str) -> Option<Milli> {
    aggregate(spec, name, |c| container_resource(c, name).1)
}

/// App containers and sidecars add up; an ordinary init container runs beside the sidecars
/// started before it; the larger of the two phases, plus the overhead. None when `each` is
/// None for some container.
fn aggregate(
    spec: &PodSpec,
    name: &str,
    each: impl Fn(&Container) -> Option<Milli>,
) -> Option<Milli> {
    let mut running = Milli::ZERO;
    for c in &spec.containers {
        running += each(c)?;
    }
    let (mut sidecars, mut init_peak) = (Milli::ZERO, Milli::ZERO);
    for c in spec.init_containers.iter().flatten() {
        let v = each(c)?;
        let during = if is_sidecar(c) {
            running += v;
            sidecars += v;
            sidecars
        } else {
            v + sidecars
        };
        init_peak = init_peak.max(during);
    }
    Some(running.max(init_peak) + overhead(spec, name))
}

fn overhead(spec: &PodSpec, name: &str) -> Milli {
    get(spec.overhead.as_ref(), name).unwrap_or(Milli::ZERO)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    /// A container with these requests and limits.
    pub fn ctr(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |v: &[(&str, &str)]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|(k, q)| (k.to_string(), Quantity(q.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sidecar(c: Container) -> Container {
        Container {
            restart_policy: Some("Always".into()),
            ..c
        }
    }

    fn m(q: &str) -> Milli {
        Milli::parse(q).unwrap()
    }

    #[test]
    fn requests_default_to_limits() {
        let c = ctr(&[("cpu", "100m")], &[("cpu", "1"), ("memory", "64Mi")]);
        assert_eq!(container_resource(&c, "cpu"), (m("100m"), Some(m("1"))));
        assert_eq!(
            container_resource(&c, "memory"),
            (m("64Mi"), Some(m("64Mi")))
        );
        assert_eq!(container_resource(&c, "gpu"), (Milli::ZERO, None));
        let bad = ctr(&[("cpu", "lots")], &[]);
        assert_eq!(container_resource(&bad, "cpu"), (Milli::ZERO, None));
    }

    #[test]
    fn pod_values_follow_the_init_container_rules() {
        for (what, spec, cpu_request, memory_limit) in [
            (
                "apps add up",
                PodSpec {
                    containers: vec![
                        ctr(&[("cpu", "250m")], &[("memory", "64Mi")]),
                        ctr(&[("cpu", "100m")], &[("memory", "128Mi")]),
                    ],
                    ..Default::default()
                },
                "350m",
                Some("192Mi"),
            ),
            (
                "the biggest init container wins over the apps",
                PodSpec {
                    containers: vec![ctr(&[("cpu", "250m")], &[("memory", "64Mi")])],
                    init_containers: Some(vec![
                        ctr(&[], &[("cpu", "2"), ("memory", "1Gi")]),
                        ctr(&[("cpu", "1")], &[("memory", "32Mi")]),
                    ]),
                    ..Default::default()
                },
                "2",
                Some("1Gi"),
            ),
            (
                "a container without a limit means no pod limit",
                PodSpec {
                    containers: vec![ctr(&[("cpu", "1")], &[]), ctr(&[], &[("memory", "1Gi")])],
                    ..Default::default()
                },
                "1",
                None,
            ),
            (
                "sidecars run beside later init containers and the apps",
                PodSpec {
                    containers: vec![ctr(&[("cpu", "1")], &[("memory", "1Gi")])],
                    init_containers: Some(vec![
                        sidecar(ctr(&[("cpu", "500m")], &[("memory", "256Mi")])),
                        ctr(&[("cpu", "2")], &[("memory", "2Gi")]),
                    ]),
                    ..Default::default()
                },
                "2500m",
                Some("2304Mi"),
            ),
            (
                "overhead comes on top",
                PodSpec {
                    containers: vec![ctr(&[("cpu", "1")], &[("memory", "1Gi")])],
                    overhead: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity("250m".into())),
                        ("memory".to_string(), Quantity("120Mi".into())),
                    ])),
                    ..Default::default()
                },
                "1250m",
                Some("1144Mi"),
            ),
        ] {
            assert_eq!(pod_request(&spec, "cpu"), m(cpu_request), "{what}");
            assert_eq!(pod_limit(&spec, "memory"), memory_limit.map(m), "{what}");
        }
    }

    #[test]
    fn nonzero_requests_default_missing_cpu_and_memory_per_container() {
        let spec = PodSpec {
            containers: vec![
                ctr(&[], &[]),
                ctr(&[("cpu", "0")], &[("memory", "1Gi")]),
                ctr(&[("ephemeral-storage", "1Gi")], &[]),
            ],
            init_containers: Some(vec![ctr(&[], &[])]),
            ..Default::default()
        };
        // 100m + 0 (an explicit zero stays) + 100m; the init container's 100m is smaller.
        assert_eq!(pod_request_nonzero(&spec, "cpu"), m("200m"));
        // 200Mi + 1Gi (the limit is the request) + 200Mi.
        assert_eq!(pod_request_nonzero(&spec, "memory"), m("1424Mi"));
        assert_eq!(pod_request(&spec, "cpu"), Milli::ZERO);
        // Only cpu and memory have defaults.
        assert_eq!(pod_request_nonzero(&spec, "ephemeral-storage"), m("1Gi"));
    }
}
