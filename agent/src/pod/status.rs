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

/// Why a container is not running, when it is not: the reason and message of its waiting
/// state, as the kubelet words them.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitingReason {
    /// Not started yet, with nothing gone wrong.
    ContainerCreating,
    InvalidImageName {
        image: String,
        error: String,
    },
    ErrImageNeverPull {
        image: String,
    },
    ErrImagePull {
        image: String,
        error: String,
    },
    ImagePullBackOff {
        image: String,
    },
    CrashLoopBackOff {
        /// The back-off in seconds.
        back_off: u64,
        container: String,
        /// `name_namespace(uid)`.
        pod: String,
    },
    CreateContainerConfigError(String),
    CreateContainerError(String),
    RunContainerError(String),
    PostStartHookError(String),
}

impl WaitingReason {
    pub fn reason(&self) -> &'static str {
        match self {
            WaitingReason::ContainerCreating => "ContainerCreating",
            WaitingReason::InvalidImageName { .. } => "InvalidImageName",
            WaitingReason::ErrImageNeverPull { .. } => "ErrImageNeverPull",
            WaitingReason::ErrImagePull { .. } => "ErrImagePull",
            WaitingReason::ImagePullBackOff { .. } => "ImagePullBackOff",
            WaitingReason::CrashLoopBackOff { .. } => "CrashLoopBackOff",
            WaitingReason::CreateContainerConfigError(_) => "CreateContainerConfigError",
            WaitingReason::CreateContainerError(_) => "CreateContainerError",
            WaitingReason::RunContainerError(_) => "RunContainerError",
            WaitingReason::PostStartHookError(_) => "PostStartHookError",
        }
    }

    pub fn message(&self) -> Option<String> {
        Some(match self {
            WaitingReason::ContainerCreating => return None,
            WaitingReason::InvalidImageName { image, error } => {
                format!("Failed to apply default image tag {image:?}: {error}")
            }
            WaitingReason::ErrImageNeverPull { image } => {
                format!("Container image {image:?} is not present with pull policy of Never")
            }
            WaitingReason::ErrImagePull { image, error } => {
                format!("Failed to pull image {image:?}: {error}")
            }
            WaitingReason::ImagePullBackOff { image } => {
                format!("Back-off pulling image {image:?}")
            }
            WaitingReason::CrashLoopBackOff {
                back_off,
                container,
                pod,
            } => format!("back-off {back_off}s restarting failed container={container} pod={pod}"),
            WaitingReason::CreateContainerConfigError(m)
            | WaitingReason::CreateContainerError(m)
            | WaitingReason::RunContainerError(m)
            | WaitingReason::PostStartHookError(m) => m.clone(),
        })
    }

    /// Whether this is a pull that failed or is backing off.
    pub fn is_pull_failure(&self) -> bool {
        matches!(
            self,
            WaitingReason::ErrImagePull { .. } | WaitingReason::ImagePullBackOff { .. }
        )
    }
}

pub struct ContainerView<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub image_id: Option<String>,
    pub record: Option<&'a ContainerRecord>,
    pub waiting: Option<&'a WaitingReason>,
    /// What startup and readiness probes say, when it runs.
    pub started: bool,
    pub ready: bool,
    /// The resources the container's cgroup has now.
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

pub fn container_status(v: ContainerView<'_>) -> ContainerStatus {
    let rec = v.record;
    let running = rec.is_some_and(|r| r.running());
    let waiting = |w: &WaitingReason| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(w.reason().to_string()),
            message: w.message(),
        }),
        ..Default::default()
    };
    let state = if let Some(w) = v.waiting {
        waiting(w)
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
            None => waiting(&WaitingReason::ContainerCreating),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_reasons_read_as_the_kubelets() {
        let w = WaitingReason::CrashLoopBackOff {
            back_off: 20,
            container: "c".into(),
            pod: "p_default(u)".into(),
        };
        assert_eq!(w.reason(), "CrashLoopBackOff");
        assert_eq!(
            w.message().unwrap(),
            "back-off 20s restarting failed container=c pod=p_default(u)"
        );
        let never = WaitingReason::ErrImageNeverPull {
            image: "busybox".into(),
        };
        assert_eq!(
            never.message().unwrap(),
            "Container image \"busybox\" is not present with pull policy of Never"
        );
        assert_eq!(WaitingReason::ContainerCreating.message(), None);
        let st = container_status(ContainerView {
            name: "c",
            image: "busybox:1.36",
            image_id: None,
            record: None,
            waiting: None,
            started: false,
            ready: false,
            resources: None,
        });
        let w = st.state.unwrap().waiting.unwrap();
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
    }
}
