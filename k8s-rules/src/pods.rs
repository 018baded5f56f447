//! What the workload controllers ask of a pod: is it active, ready, available, and which of
//! several goes first when a controller scales down (`k8s.io/kubernetes/pkg/api/v1/pod`,
//! `pkg/controller/controller_utils.go`'s `ActivePodsWithRanks`).

use std::cmp::Reverse;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

/// The annotation that lets users say which pods a ReplicaSet removes first (lower first).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Not finished and not being deleted (`IsPodActive` / `FilterActivePods`).
pub fn is_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

/// Succeeded or Failed.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Being deleted and not finished (`IsPodTerminating` of the EndpointSlice and Job code).
pub fn is_terminating(pod: &Pod) -> bool {
    !is_finished(pod) && pod.metadata.deletion_timestamp.is_some()
}

/// When the pod's Ready condition became True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// The pod's Ready condition is True (`IsPodReady`).
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` (`IsPodAvailable`): with 0 any ready pod is; with
/// more, the Ready condition must carry a transition time that long before `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(t)) => {
            let after = t
                .checked_add(jiff::SignedDuration::from_secs(min_ready_seconds.into()))
                .unwrap_or(Timestamp::MAX);
            after < now
        }
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

fn phase_rank(pod: &Pod) -> u8 {
    match phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    }
}

/// `int(log2(now - t))`, or -1 for a time not in the past.
fn log_rank(t: Timestamp, now: Timestamp) -> i64 {
    let d = now.as_nanosecond() - t.as_nanosecond();
    if d > 0 {
        (d as f64).log2() as i64
    } else {
        -1
    }
}

/// A time's place in the deletion order (`LogarithmicScaleDown`, on since 1.22): the log₂
/// of its age, so pods of roughly the same age tie and are told apart by what follows
/// (spreading scale-down over ages rather than always removing the newest); a missing time
/// sorts first (`afterOrZero`).
fn time_rank(t: Option<Timestamp>, now: Timestamp) -> i64 {
    t.map_or(i64::MIN, |t| log_rank(t, now))
}

/// A pod with its rank: how many active pods of the same owner share its node (more goes
/// first, to spread what stays).
pub struct Ranked<'a> {
    pub pod: &'a Pod,
    pub rank: usize,
}

/// What orders pods for deletion, smallest first (`ActivePodsWithRanks.Less`): unassigned
/// before assigned; Pending before Unknown before Running; not ready before ready; lower
/// deletion cost first; more pods doubled up on one node first; ready for less time first;
/// more restarts first; newer first; then by UID.
///
/// Upstream's `Less` is not a total order (two pods whose times differ within one log₂
/// bucket are decided by UID at once, two with equal times go on to the next rule), which Go's
/// sort tolerates and Rust's refuses (it panics). As a key the same rules are a total order;
/// they differ from upstream only for times that differ within one bucket, where the later
/// rules are asked before the UID.
fn deletion_key(
    r: &Ranked<'_>,
    now: Timestamp,
) -> (
    bool,
    u8,
    bool,
    i32,
    Reverse<usize>,
    i64,
    Reverse<i32>,
    i64,
    String,
) {
    let p = r.pod;
    let assigned = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let ready = is_ready(p);
    let ready_rank = if ready {
        time_rank(ready_since(p).flatten(), now)
    } else {
        i64::MIN
    };
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        assigned,
        phase_rank(p),
        ready,
        deletion_cost(p),
        Reverse(r.rank),
        ready_rank,
        Reverse(restarts(p)),
        time_rank(created, now),
        p.metadata.uid.clone().unwrap_or_default(),
    )
}

/// Whether `a` should be deleted before `b`.
pub fn delete_before(a: &Ranked<'_>, b: &Ranked<'_>, now: Timestamp) -> bool {
    deletion_key(a, now) < deletion_key(b, now)
}

/// Sorts `pods` so that the first are the ones to delete first. `rank` gives each pod's
/// doubled-up count (0 when the caller does not rank).
pub fn sort_for_deletion<'a>(ranked: &mut [Ranked<'a>], now: Timestamp) {
    ranked.sort_by_cached_key(|r| deletion_key(r, now));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
        p.spec = Some(PodSpec {
            node_name: (!node.is_empty()).then(|| node.into()),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: ready_at.map(|t| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(ts(t))),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = pod("a", "n", "Running", Some("2026-01-01T00:00:00Z"));
        assert!(is_available(&p, 0, ts("2026-01-01T00:00:00Z")));
        assert!(!is_available(&p, 10, ts("2026-01-01T00:00:10Z")));
        assert!(is_available(&p, 10, ts("2026-01-01T00:00:11Z")));
        assert!(!is_available(
            &pod("b", "n", "Running", None),
            0,
            ts("2027-01-01T00:00:00Z")
        ));
    }

    #[test]
    fn active_finished_terminating() {
        let mut p = pod("a", "n", "Running", None);
        assert!(is_active(&p) && !is_terminating(&p));
        p.metadata.deletion_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
        assert!(!is_active(&p) && is_terminating(&p));
        let done = pod("b", "n", "Succeeded", None);
        assert!(!is_active(&done) && is_finished(&done) && !is_terminating(&done));
    }

    #[test]
    fn deletion_order_as_upstream() {
        let now = ts("2026-06-01T00:00:00Z");
        let unscheduled = pod("unscheduled", "", "Pending", None);
        let pending = pod("pending", "n1", "Pending", None);
        let unknown = pod("unknown", "n1", "Unknown", None);
        let not_ready = pod("not-ready", "n1", "Running", None);
        let ready_recently = pod(
            "ready-recently",
            "n1",
            "Running",
            Some("2026-05-31T23:59:00Z"),
        );
        let ready_long = pod("ready-long", "n1", "Running", Some("2026-01-02T00:00:00Z"));
        let mut cheap = pod("cheap", "n1", "Running", Some("2026-01-02T00:00:00Z"));
        cheap.metadata.annotations = Some([(DELETION_COST.to_string(), "-5".to_string())].into());
        let pods = [
            &ready_long,
            &ready_recently,
            &not_ready,
            &unknown,
            &pending,
            &unscheduled,
            &cheap,
        ];
        let mut ranked: Vec<Ranked> = pods.iter().map(|p| Ranked { pod: p, rank: 0 }).collect();
        sort_for_deletion(&mut ranked, now);
        let order: Vec<&str> = ranked
            .iter()
            .map(|r| r.pod.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "unknown",
                "not-ready",
                "cheap",
                "ready-recently",
                "ready-long"
            ]
        );
    }

    #[test]
    fn doubled_up_pods_go_first_and_restarts_break_ties() {
        let now = ts("2026-06-01T00:00:00Z");
        let a = pod("a", "n1", "Running", Some("2026-01-02T00:00:00Z"));
        let b = pod("b", "n2", "Running", Some("2026-01-02T00:00:00Z"));
        assert!(delete_before(
            &Ranked { pod: &a, rank: 2 },
            &Ranked { pod: &b, rank: 1 },
            now
        ));
        let mut c = pod("c", "n1", "Running", Some("2026-01-02T00:00:00Z"));
        c.status.as_mut().unwrap().container_statuses =
            Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                restart_count: 3,
                ..Default::default()
            }]);
        assert!(delete_before(
            &Ranked { pod: &c, rank: 0 },
            &Ranked { pod: &b, rank: 0 },
            now
        ));
    }

    /// Upstream's rules as a comparator made cycles (ready at the same second: restarts decide;
    /// ready a few seconds apart, one log₂ bucket: UIDs decide), and Rust's sort panics on a
    /// comparator that is not a total order: it killed the ReplicaSet controller mid-rollout.
    #[test]
    fn deletion_order_is_a_total_order() {
        let now = ts("2026-06-01T00:00:00Z");
        let with = |uid: &str, ready: &str, restarts: i32| {
            let mut p = pod(uid, "n1", "Running", Some(ready));
            p.status.as_mut().unwrap().container_statuses =
                Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                    restart_count: restarts,
                    ..Default::default()
                }]);
            p
        };
        let a = with("z", "2026-05-31T23:00:00Z", 2);
        let b = with("b", "2026-05-31T23:00:00Z", 0);
        let c = with("c", "2026-05-31T23:00:05Z", 0);
        let r = |p| Ranked { pod: p, rank: 0 };
        let (a, b, c) = (r(&a), r(&b), r(&c));
        let before = |x: &Ranked, y: &Ranked| delete_before(x, y, now);
        assert!(
            !(before(&a, &b) && before(&b, &c) && before(&c, &a)),
            "a cycle"
        );
        // And a sort over many such pods neither panics nor depends on the input order.
        let pods: Vec<Pod> = (0..64)
            .map(|i| {
                with(
                    &format!("u{:02}", (i * 37) % 64),
                    &format!("2026-05-31T23:00:{:02}Z", (i * 7) % 5),
                    i % 3,
                )
            })
            .collect();
        let order = |rev: bool| {
            let mut ranked: Vec<Ranked> = pods.iter().map(r).collect();
            if rev {
                ranked.reverse();
            }
            sort_for_deletion(&mut ranked, now);
            ranked
                .iter()
                .map(|x| x.pod.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(false), order(true));
    }
}
