//! The namespace controller (`pkg/controller/namespace/deletion/namespaced_resources_deleter.go`):
//! a deleted namespace (`Terminating`) is emptied through the API, every namespaced resource
//! discovery lists deleted, with its progress in the namespace's conditions
//! (`NamespaceDeletionDiscoveryFailure`, `NamespaceDeletionGroupVersionParsingFailure`,
//! `NamespaceDeletionContentFailure`, `NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`); once empty, the `kubernetes` finalizer is removed through
//! `namespaces/<name>/finalize` and the namespace deleted again, which removes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::reconcile::{self, Error, Result};

const FINALIZER: &str = "kubernetes";

struct Ctx {
    client: kube::Client,
}

/// One condition: (type, failing, reason, message).
type Cond = (&'static str, bool, &'static str, String);

/// What emptying found: remaining objects per resource, per finalizer, errors, and how long
/// pods still have to go (seconds).
#[derive(Default)]
struct Content {
    remaining: BTreeMap<String, usize>,
    finalizers: BTreeMap<String, usize>,
    errors: Vec<String>,
    estimate: i64,
}

impl Ctx {
    /// Deletes every namespaced resource's objects in `ns` (a collection delete where the
    /// resource has one), then counts what is left.
    async fn delete_content(&self, ns: &str, discovery: &Discovery) -> Content {
        let mut out = Content::default();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if caps.scope != Scope::Namespaced
                    || !caps.supports_operation(verbs::LIST)
                    || !caps.supports_operation(verbs::DELETE)
                {
                    continue;
                }
                let gr = if ar.group.is_empty() {
                    ar.plural.clone()
                } else {
                    format!("{}.{}", ar.plural, ar.group)
                };
                let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
                let deleted = if caps.supports_operation(verbs::DELETE_COLLECTION) {
                    api.delete_collection(&DeleteParams::default(), &ListParams::default())
                        .await
                        .map(|_| ())
                } else {
                    self.delete_each(&api).await
                };
                if let Err(e) = deleted {
                    out.errors.push(format!("{gr}: {e}"));
                    continue;
                }
                let left = match api.list(&ListParams::default()).await {
                    Ok(l) => l.items,
                    Err(e) => {
                        out.errors.push(format!("{gr}: {e}"));
                        continue;
                    }
                };
                if left.is_empty() {
                    continue;
                }
                out.remaining.insert(gr.clone(), left.len());
                for o in &left {
                    for f in o.finalizers() {
                        *out.finalizers.entry(f.clone()).or_default() += 1;
                    }
                    if gr == "pods" {
                        let grace = o.data["spec"]["terminationGracePeriodSeconds"]
                            .as_i64()
                            .unwrap_or(30);
                        out.estimate = out.estimate.max(grace);
                    }
                }
            }
        }
        out
    }

    async fn delete_each(&self, api: &Api<DynamicObject>) -> std::result::Result<(), kube::Error> {
        for o in api.list(&ListParams::default()).await?.items {
            match api.delete(&o.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets the deletion conditions (only a change is written).
    async fn set_conditions(&self, ns: &Namespace, conds: Vec<Cond>) -> Result<()> {
        let mut status = ns.status.clone().unwrap_or_else(|| NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        let list = status.conditions.get_or_insert_with(Vec::new);
        let before = list.clone();
        for (ty, failing, reason, message) in conds {
            let st = if failing { "True" } else { "False" };
            match list.iter_mut().find(|c| c.type_ == ty) {
                Some(c) => {
                    if c.status != st {
                        c.status = st.into();
                        c.last_transition_time = Some(Time(jiff::Timestamp::now()));
                    }
                    c.reason = Some(reason.into());
                    c.message = Some(message);
                }
                None => list.push(NamespaceCondition {
                    type_: ty.into(),
                    status: st.into(),
                    reason: Some(reason.into()),
                    message: Some(message),
                    last_transition_time: Some(Time(jiff::Timestamp::now())),
                }),
            }
        }
        if *list == before {
            return Ok(());
        }
        let mut new = ns.clone();
        new.status = Some(status);
        Api::<Namespace>::all(self.client.clone())
            .replace_status(&ns.name_any(), &PostParams::default(), &new)
            .await?;
        Ok(())
    }

    /// Deletes the finalized namespace (it is then removed), if it is still this one.
    async fn delete_namespace(&self, ns: &Namespace) -> Result<()> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: ns.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match Api::<Namespace>::all(self.client.clone())
            .delete(&ns.name_any(), &dp)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn finalizers(ns: &Namespace) -> Vec<String> {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
}

async fn reconcile(ns: Arc<Namespace>, c: Arc<Ctx>) -> Result<Action> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let fin = finalizers(&ns);
    if fin.is_empty() {
        c.delete_namespace(&ns).await?;
        return Ok(Action::await_change());
    }
    if !fin.iter().any(|f| f == FINALIZER) {
        // Another finalizer's owner has work left; this controller has none.
        return Ok(Action::await_change());
    }
    let discovery = match Discovery::new(c.client.clone()).run().await {
        Ok(d) => d,
        Err(e) => {
            c.set_conditions(
                &ns,
                vec![(
                    "NamespaceDeletionDiscoveryFailure",
                    true,
                    "DiscoveryFailed",
                    format!("Discovery failed for some groups: {e}"),
                )],
            )
            .await?;
            return Err(e.into());
        }
    };
    let content = c.delete_content(&name, &discovery).await;
    let join = |m: &BTreeMap<String, usize>, fmt: fn(&String, &usize) -> String| {
        m.iter()
            .map(|(k, n)| fmt(k, n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let conds = vec![
        (
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".to_string(),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_string(),
        ),
        if content.errors.is_empty() {
            (
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".to_string(),
            )
        } else {
            (
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    content.errors.len(),
                    content.errors.join(", ")
                ),
            )
        },
        if content.remaining.is_empty() {
            (
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".to_string(),
            )
        } else {
            (
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!(
                    "Some resources are remaining: {}",
                    join(&content.remaining, |k, n| format!(
                        "{k} has {n} resource instances"
                    ))
                ),
            )
        },
        if content.finalizers.is_empty() {
            (
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".to_string(),
            )
        } else {
            (
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    join(&content.finalizers, |k, n| format!(
                        "{k} in {n} resource instances"
                    ))
                ),
            )
        },
    ];
    c.set_conditions(&ns, conds).await?;
    if !content.errors.is_empty() {
        return Err(Error::Invalid(format!(
            "deleting the content of namespace {name}: {}",
            content.errors.join(", ")
        )));
    }
    if !content.remaining.is_empty() {
        // Upstream's requeue: half the pods' remaining grace, and a second.
        let secs = u64::try_from(content.estimate / 2 + 1).unwrap_or(1);
        return Ok(Action::requeue(Duration::from_secs(secs)));
    }
    // Empty: the `kubernetes` finalizer goes, then the namespace.
    let api = Api::<Namespace>::all(c.client.clone());
    let mut finalized = (*ns).clone();
    finalized
        .spec
        .get_or_insert_with(Default::default)
        .finalizers = Some(fin.into_iter().filter(|f| f != FINALIZER).collect());
    let after: Namespace = match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    };
    if finalizers(&after).is_empty() {
        c.delete_namespace(&after).await?;
    }
    Ok(Action::await_change())
}

/// Runs the namespace controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    let controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    let ctx = Arc::new(Ctx { client });
    reconcile::run("namespace-controller", controller, reconcile, ctx).await;
}

#[cfg(test)]
mod tests;
