//! The kubelet's cgroup arithmetic: CPU requests become shares and limits CFS quota with a
//! 100 ms period; the pod values themselves (requests defaulting to limits, init containers,
//! sidecars, overhead) come from the shared Kubernetes rules.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_rules::qos::QosClass;
use k8s_rules::quantity::Milli;
use k8s_rules::resources as rules;
use podlet_runtime::cgroup::Limits;

pub const CPU_PERIOD: u64 = 100_000;
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const MIN_QUOTA: i64 = 1_000;

pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli as u64) * 1024 / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

pub fn milli_cpu_to_quota(milli: i64) -> i64 {
    ((milli * CPU_PERIOD as i64) / 1000).max(MIN_QUOTA)
}

/// A container's (request, limit) for `name` in the kubelet's units: millicores for "cpu",
/// bytes for "memory" (rounded up, as `MilliValue()` and `Value()` do).
pub fn container_resource(c: &Container, name: &str) -> (i64, Option<i64>) {
    let (request, limit) = rules::container_resource(c, name);
    (units(name, request), limit.map(|l| units(name, l)))
}

fn units(name: &str, m: Milli) -> i64 {
    let v = if name == "cpu" { m.milli() } else { m.value() };
    v.clamp(0, i64::MAX as i128) as i64
}

/// The pod's request for `name`, in the kubelet's units.
pub fn pod_request(spec: &PodSpec, name: &str) -> i64 {
    units(name, rules::pod_request(spec, name))
}

/// The pod's limit for `name`, in the kubelet's units, when every container has one.
pub fn pod_limit(spec: &PodSpec, name: &str) -> Option<i64> {
    rules::pod_limit(spec, name).map(|l| units(name, l))
}

/// The container's own cgroup values.
pub fn container_limits(c: &Container) -> Limits {
    let (cpu_req, cpu_lim) = container_resource(c, "cpu");
    let (_, mem_lim) = container_resource(c, "memory");
    Limits {
        cpu_shares: Some(milli_cpu_to_shares(cpu_req)),
        cpu_quota: cpu_lim.map(milli_cpu_to_quota),
        cpu_period: Some(CPU_PERIOD),
        memory: mem_lim,
        pids: None,
    }
}

/// The pod cgroup's values (`kubepods[/<qos>]/pod<uid>`).
pub fn pod_limits(spec: &PodSpec, qos: QosClass, pids: Option<i64>) -> Limits {
    if qos == QosClass::BestEffort {
        return Limits {
            cpu_shares: Some(MIN_SHARES),
            cpu_period: Some(CPU_PERIOD),
            pids,
            ..Default::default()
        };
    }
    Limits {
        cpu_shares: Some(milli_cpu_to_shares(pod_request(spec, "cpu"))),
        cpu_quota: pod_limit(spec, "cpu").map(milli_cpu_to_quota),
        cpu_period: Some(CPU_PERIOD),
        memory: pod_limit(spec, "memory"),
        pids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::translate::tests::ctr;

    #[test]
    fn shares_and_quota_like_kubelet() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_quota(250), 25_000);
        assert_eq!(milli_cpu_to_quota(5), 1_000);
    }

    #[test]
    fn container_and_pod_values() {
        let g = ctr(&[], &[("cpu", "250m"), ("memory", "64Mi")]);
        let l = container_limits(&g);
        assert_eq!(
            (l.cpu_shares, l.cpu_quota, l.memory),
            (Some(256), Some(25_000), Some(64 << 20))
        );
        let b = ctr(
            &[("cpu", "100m"), ("memory", "32Mi")],
            &[("memory", "128Mi")],
        );
        let spec = PodSpec {
            containers: vec![g.clone(), b.clone()],
            ..Default::default()
        };
        let p = pod_limits(&spec, QosClass::Burstable, Some(100));
        assert_eq!(p.cpu_shares, Some(milli_cpu_to_shares(350)));
        assert_eq!(p.cpu_quota, None, "b has no cpu limit");
        assert_eq!(p.memory, Some((64 << 20) + (128 << 20)));
        assert_eq!(p.pids, Some(100));
        // init containers: max(sum of apps, biggest init)
        let spec = PodSpec {
            containers: vec![g.clone()],
            init_containers: Some(vec![ctr(&[], &[("cpu", "2"), ("memory", "1Gi")])]),
            ..Default::default()
        };
        assert_eq!(pod_request(&spec, "cpu"), 2000);
        assert_eq!(pod_limit(&spec, "memory"), Some(1 << 30));
        let be = pod_limits(
            &PodSpec {
                containers: vec![ctr(&[], &[])],
                ..Default::default()
            },
            QosClass::BestEffort,
            None,
        );
        assert_eq!((be.cpu_shares, be.memory), (Some(2), None));
    }
}
