//! What the Job controller reads off its pods: whether one failed or succeeded and when, its
//! completion index, what the pod failure policy says of it (`pod_failure_policy.go`), the
//! pod-failure back-off (`backoff_utils.go`), a success policy (`success_policy.go`), and the
//! pods it makes for an index (`indexed_job_utils.go`).

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, PodFailurePolicy, SuccessPolicy};
use k8s_openapi::api::core::v1::{
    ContainerStatus, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec,
};
use k8s_rules::jobindexes::Intervals;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

pub fn has_finalizer(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

pub fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// Only failed pods are replaced (`podReplacementPolicy: Failed`): a terminating pod is not
/// yet a failure.
pub fn only_replace_failed(job: &Job) -> bool {
    let spec = job.spec.as_ref();
    spec.and_then(|s| s.pod_replacement_policy.as_deref()) == Some("Failed")
        || spec.is_some_and(|s| s.pod_failure_policy.is_some())
}

/// `isPodFailed`: Failed, or (unless only failed pods are replaced) deleted before it
/// succeeded, so an orphan that never reaches Failed still counts.
pub fn is_failed(p: &Pod, job: &Job) -> bool {
    if phase(p) == "Failed" {
        return true;
    }
    if only_replace_failed(job) {
        return false;
    }
    p.metadata.deletion_timestamp.is_some() && phase(p) != "Succeeded"
}

/// The completion index of an Indexed Job's pod, if it has a valid one.
pub fn index_of(p: &Pod) -> Option<i64> {
    p.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

pub fn index_failure_count(p: &Pod) -> i32 {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_FAILURE_COUNT))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `getFinishedTime`: the last container's finish, else when the pod stopped being ready,
/// else its deletion, else `now`.
pub fn finished_at(p: &Pod, now: Timestamp) -> Timestamp {
    let st = p.status.as_ref();
    let containers = st
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten();
    let last = containers
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    if let Some(t) = last {
        return t;
    }
    let not_ready = st
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    not_ready
        .or_else(|| p.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now)
}

/// What the pod failure policy makes of a failed pod (`matchPodFailurePolicy`): the FailJob
/// message, whether the failure counts, and the action of the rule that matched.
pub fn match_policy(
    policy: Option<&PodFailurePolicy>,
    p: &Pod,
) -> (Option<String>, bool, Option<&'static str>) {
    let Some(policy) = policy else {
        return (None, true, None);
    };
    let st = p.status.clone().unwrap_or_default();
    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    for (i, rule) in policy.rules.iter().enumerate() {
        let action = match rule.action.as_str() {
            "FailJob" => "FailJob",
            "Ignore" => "Ignore",
            "Count" => "Count",
            "FailIndex" => "FailIndex",
            _ => continue,
        };
        let message = if let Some(req) = &rule.on_exit_codes {
            let matching = |cs: &Vec<ContainerStatus>| {
                cs.iter().find_map(|c| {
                    let t = c.state.as_ref()?.terminated.as_ref()?;
                    let named = req.container_name.as_ref().is_none_or(|n| *n == c.name);
                    let listed = req.values.contains(&t.exit_code);
                    let hit = t.exit_code != 0
                        && named
                        && if req.operator == "In" {
                            listed
                        } else {
                            !listed
                        };
                    hit.then(|| (c.name.clone(), t.exit_code))
                })
            };
            let found = st
                .container_statuses
                .as_ref()
                .and_then(matching)
                .or_else(|| st.init_container_statuses.as_ref().and_then(matching));
            found.map(|(c, code)| {
                format!("Container {c} for pod {ns}/{name} failed with exit code {code} matching {action} rule at index {i}")
            })
        } else if let Some(patterns) = &rule.on_pod_conditions {
            st.conditions.iter().flatten().find_map(|c| {
                patterns
                    .iter()
                    .any(|pat| pat.type_ == c.type_ && pat.status == c.status)
                    .then(|| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {action} rule at index {i}",
                            c.type_
                        )
                    })
            })
        } else {
            None
        };
        if let Some(msg) = message {
            return match action {
                "Ignore" => (None, false, Some(action)),
                "FailJob" => (Some(msg), true, Some(action)),
                _ => (None, true, Some(action)),
            };
        }
    }
    (None, true, None)
}

/// Whether a failed pod counts against the back-off limits.
pub fn counts(job: &Job, p: &Pod) -> bool {
    let policy = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref());
    match_policy(policy, p).1
}

/// `isIndexFailed`: the pod's failure fails its index (FailIndex, or its index used up its
/// back-off).
pub fn fails_index(job: &Job, p: &Pod) -> bool {
    if !is_failed(p, job) {
        return false;
    }
    let spec = job.spec.as_ref();
    let (_, counted, action) = match_policy(spec.and_then(|s| s.pod_failure_policy.as_ref()), p);
    if action == Some("FailIndex") {
        return true;
    }
    let limit = spec
        .and_then(|s| s.backoff_limit_per_index)
        .unwrap_or(i32::MAX);
    counted && index_failure_count(p) >= limit
}

/// The pod-failure back-off of one job: failures since its last success and the last one's
/// time (`backoffRecord`).
#[derive(Debug, Clone, Default)]
pub struct BackoffRecord {
    pub failures: u32,
    pub last_failure: Option<Timestamp>,
}

impl BackoffRecord {
    /// `newBackoffRecord`: a success resets the count; failures after the last success add.
    pub fn with(&self, succeeded: &[Timestamp], failed: &[Timestamp]) -> BackoffRecord {
        let mut failed = failed.to_vec();
        failed.sort();
        let Some(last_success) = succeeded.iter().max() else {
            if failed.is_empty() {
                return self.clone();
            }
            return BackoffRecord {
                failures: self.failures + failed.len() as u32,
                last_failure: failed.last().copied(),
            };
        };
        let after: Vec<_> = failed.iter().filter(|t| *t > last_success).collect();
        BackoffRecord {
            failures: after.len() as u32,
            last_failure: after.last().map(|t| **t),
        }
    }

    pub fn remaining(&self, base: Duration, max: Duration, now: Timestamp) -> Duration {
        remaining(base, max, self.failures, self.last_failure, now)
    }
}

/// `getRemainingTimeForFailuresCount`: `base` doubled per failure after the first, capped at
/// `max`, less the time since the last failure.
pub fn remaining(
    base: Duration,
    max: Duration,
    failures: u32,
    last: Option<Timestamp>,
    now: Timestamp,
) -> Duration {
    let Some(last) = last.filter(|_| failures > 0) else {
        return Duration::ZERO;
    };
    let mut delay = base;
    for _ in 1..failures {
        delay = delay.saturating_mul(2);
        if delay >= max {
            delay = max;
            break;
        }
    }
    let since = Duration::try_from(now.duration_since(last)).unwrap_or(Duration::ZERO);
    delay.saturating_sub(since)
}

/// `matchSuccessPolicy`: the message of the first rule the succeeded indexes meet.
pub fn match_success_policy(
    policy: Option<&SuccessPolicy>,
    completions: i64,
    succeeded: &BTreeSet<i64>,
) -> Option<String> {
    for (i, rule) in policy?.rules.iter().enumerate() {
        let met = match &rule.succeeded_indexes {
            Some(ix) => {
                let wanted = Intervals::lenient(ix, completions).to_set();
                let have = wanted.intersection(succeeded).count() as i64;
                match rule.succeeded_count {
                    Some(n) => have >= i64::from(n),
                    None => have == wanted.len() as i64,
                }
            }
            None => rule
                .succeeded_count
                .is_some_and(|n| succeeded.len() as i64 >= i64::from(n)),
        };
        if met {
            return Some(format!("Matched rules at index {i}"));
        }
    }
    None
}

/// The template of an Indexed Job's pods: `JOB_COMPLETION_INDEX` from the index label
/// through the downward API in every container (`addCompletionIndexEnvVariables`).
pub fn with_index_env(template: &mut PodTemplateSpec) {
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let env = c.env.get_or_insert_with(Vec::new);
        if env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
            continue;
        }
        env.push(EnvVar {
            name: COMPLETION_INDEX_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                    api_version: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}

/// One index's pod template: the index as annotation and label, hostname `<job>-<index>`,
/// and (with back-off per index) the failures its index had before it.
pub fn for_index(
    template: &PodTemplateSpec,
    job: &str,
    index: i64,
    failures: Option<i32>,
) -> PodTemplateSpec {
    let mut t = template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(COMPLETION_INDEX.into(), index.to_string());
    if let Some(n) = failures {
        annotations.insert(INDEX_FAILURE_COUNT.into(), n.to_string());
    }
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(COMPLETION_INDEX.into(), index.to_string());
    if let Some(spec) = t.spec.as_mut() {
        spec.hostname = Some(format!("{job}-{index}"));
    }
    t
}

/// `<job>-` or `<job>-<index>-`, cut so the generated name fits (`podGenerateNameWithIndex`).
pub fn name_prefix(job: &str, index: Option<i64>) -> String {
    const MAX: usize = 58;
    let appendix = match index {
        Some(i) => format!("-{i}-"),
        None => "-".into(),
    };
    let keep = job.len().min(MAX.saturating_sub(appendix.len()));
    format!("{}{appendix}", &job[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let now: Timestamp = "2024-01-01T00:01:00Z".parse().unwrap();
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(360));
        assert_eq!(
            remaining(b, m, 0, at("2024-01-01T00:01:00Z"), now),
            Duration::ZERO
        );
        assert_eq!(
            remaining(b, m, 1, at("2024-01-01T00:00:55Z"), now),
            Duration::from_secs(5)
        );
        assert_eq!(
            remaining(b, m, 3, at("2024-01-01T00:01:00Z"), now),
            Duration::from_secs(40)
        );
        assert_eq!(remaining(b, m, 20, at("2024-01-01T00:01:00Z"), now), m);
        let rec = BackoffRecord::default().with(&[], &[now, now]);
        assert_eq!(rec.failures, 2);
        let later: Timestamp = "2024-01-01T00:02:00Z".parse().unwrap();
        assert_eq!(rec.with(&[later], &[]).failures, 0, "a success resets");
        let last: Timestamp = "2024-01-01T00:03:00Z".parse().unwrap();
        assert_eq!(
            rec.with(&[later], &[now, last]).failures,
            1,
            "failures after it count"
        );
    }

    #[test]
    fn generated_names_fit() {
        assert_eq!(name_prefix("pi", None), "pi-");
        assert_eq!(name_prefix("pi", Some(3)), "pi-3-");
        let long = "x".repeat(70);
        assert_eq!(name_prefix(&long, Some(12)).len(), 58);
    }
}
