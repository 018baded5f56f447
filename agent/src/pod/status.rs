//! Pod and container statuses in Kubernetes' shapes, built from the shim's records.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podlet_runtime::shim::ContainerRecord;

pub fn time(s: &Option<String>) -> Option<Time> {
    s.as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| Time(t.round(jiff::Unit::Second).unwrap_or(t)))
}

pub fn now() -> Time {
    let t = jiff::Timestamp::now();
    Time(t.round(jiff::Unit::Second).unwrap_or(t))
}

pub fn terminated(rec: &ContainerRecord) -> ContainerStateTerminated {
    let code = rec.exit_code.unwrap_or(0);
    ContainerStateTerminated {
        exit_code: code,
        signal: rec.signal,
        reason: Some(
            rec.reason
                .clone()
                .unwrap_or_else(|| if code == 0 { "Completed" } else { "Error" }.into()),
        ),
        started_at: time(&rec.started_at),
        finished_at: time(&rec.finished_at),
        container_id: Some(format!("podlet://{}", rec.id)),
        message: None,
    }
}

/// Why a container is not running, when it is not.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub reason: String,
    pub message: Option<String>,
}

pub struct ContainerView<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub image_id: Option<String>,
    pub record: Option<&'a ContainerRecord>,
    pub waiting: Option<&'a Waiting>,
    /// What startup and readiness probes say, when it runs.
    pub started: bool,
    pub ready: bool,
    /// The resources the container's cgroup has now.
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

pub fn container_status(v: ContainerView<'_>) -> ContainerStatus {
    let rec = v.record;
    let running = rec.is_some_and(|r| r.running());
    let state = if let Some(w) = v.waiting {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(w.reason.clone()),
                message: w.message.clone(),
            }),
            ..Default::default()
        }
    } else {
        match rec {
            Some(r) if r.running() => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time(&r.started_at),
                }),
                ..Default::default()
            },
            Some(r) => ContainerState {
                terminated: Some(terminated(r)),
                ..Default::default()
            },
            None => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            },
        }
    };
    // While waiting to be restarted, the last run is lastState; otherwise the one before.
    let last = match (v.waiting, rec) {
        (Some(_), Some(r)) if !r.running() && r.exit_code.is_some() => Some(terminated(r)),
        _ => rec.and_then(|r| r.previous.as_deref()).map(terminated),
    };
    ContainerStatus {
        name: v.name.to_string(),
        image: podlet_runtime::image::reference::normalize(v.image)
            .unwrap_or_else(|_| v.image.to_string()),
        image_id: v.image_id.unwrap_or_default(),
        container_id: rec.map(|r| format!("podlet://{}", r.id)),
        ready: running && v.ready,
        started: Some(running && v.started),
        restart_count: rec.map(|r| r.attempt as i32).unwrap_or(0),
        resources: if running { v.resources } else { None },
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Keeps `lastTransitionTime` of a condition when its status did not change.
pub fn condition(
    previous: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        last_transition_time: Some(last),
        reason: if ok { None } else { reason.map(str::to_string) },
        ..Default::default()
    }
}
