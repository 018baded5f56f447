//! The TTL-after-finished controller (`pkg/controller/ttlafterfinished`), through the API:
//! a Job with `ttlSecondsAfterFinished` is deleted (foreground, so its pods go first) that
//! long after its Complete or Failed condition, checked again on the live object just before,
//! so a Job whose TTL was changed or that was restarted meanwhile stays.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::job::sync::{condition_true, finished};
use crate::reconcile::{self, Error, Result};

struct Ctx {
    client: kube::Client,
}

/// When the Job may go (`timeLeft`): its finish (the terminal condition's transition) plus
/// its TTL. None when it has no TTL, is not finished or is already being deleted.
fn expires_at(job: &Job) -> Result<Option<Timestamp>> {
    let ttl = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished);
    let (Some(ttl), true) = (ttl, finished(job)) else {
        return Ok(None);
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let cond = condition_true(job, "Complete").or_else(|| condition_true(job, "Failed"));
    let finish = cond.and_then(|c| c.last_transition_time).ok_or_else(|| {
        Error::Invalid(format!(
            "unable to find the time when the Job {}/{} finished",
            job.namespace().unwrap_or_default(),
            job.name_any()
        ))
    })?;
    Ok(Some(finish.0 + jiff::SignedDuration::from_secs(ttl.into())))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action> {
    let Some(at) = expires_at(&job)? else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    if at > now {
        let left = Duration::try_from(at.duration_since(now)).unwrap_or_default();
        return Ok(Action::requeue(left));
    }
    // The cache may be stale: the live Job decides, and the delete is of that version only.
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&job.name_any()).await? else {
        return Ok(Action::await_change());
    };
    match expires_at(&fresh)? {
        Some(at) if at <= Timestamp::now() => {}
        Some(at) => {
            let left = Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
            return Ok(Action::requeue(left));
        }
        None => return Ok(Action::await_change()),
    }
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            resource_version: fresh.metadata.resource_version.clone(),
            uid: None,
        }),
        ..Default::default()
    };
    match api.delete(&fresh.name_any(), &dp).await {
        Ok(_) => {
            tracing::info!(job = %fresh.name_any(), "deleted after its TTL");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Runs the controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default());
    let ctx = Arc::new(Ctx { client });
    reconcile::run("ttl-after-finished-controller", controller, reconcile, ctx).await;
}

#[cfg(test)]
mod tests;
