//! A StatefulSet's revisions (`getStatefulSetRevisions`, `ApplyRevision`, `truncateHistory`).

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::pods::revision_of;
use super::Ctx;
use crate::controllers::history::{self, template_patch};
use crate::reconcile::{Error, Result};

/// `newRevision`: the set's template as a revision, with the set's annotations.
fn new_revision(set: &StatefulSet, number: i64, collisions: i32) -> ControllerRevision {
    let labels = set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let mut r = history::new_revision(set, labels, template_patch(set), number, collisions);
    if let Some(a) = set.metadata.annotations.clone() {
        r.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .extend(a);
    }
    r
}

/// `getStatefulSetRevisions`: the update revision is the newest if it holds the template, an
/// older one holding it renumbered to be the newest (a rollback), or a new one; the current
/// revision is the one the status names (the update revision at first).
pub async fn revisions_of(
    ctx: &Ctx,
    set: &StatefulSet,
    revisions: &[ControllerRevision],
) -> Result<(ControllerRevision, ControllerRevision, i32)> {
    let mut collisions = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let wanted = new_revision(set, history::next_revision(revisions), collisions);
    let equal: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| history::equal_revision(r, &wanted))
        .collect();
    let update = match (equal.last(), revisions.last()) {
        (Some(e), Some(last)) if history::equal_revision(e, last) => last.clone(),
        (Some(e), _) => history::renumber(&ctx.client, e, wanted.revision).await?,
        (None, _) => history::create(&ctx.client, set, &wanted, &mut collisions).await?,
    };
    let named = set.status.as_ref().and_then(|s| s.current_revision.clone());
    let current = revisions
        .iter()
        .find(|r| Some(r.name_any()) == named)
        .cloned()
        .unwrap_or_else(|| update.clone());
    Ok((current, update, collisions))
}

/// `ApplyRevision`: the set with the revision's template patched in.
pub fn apply_revision(set: &StatefulSet, revision: &ControllerRevision) -> Result<StatefulSet> {
    let mut v = serde_json::to_value(set).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::api::patch::strategic_merge(&mut v, history::data(revision));
    serde_json::from_value(v).map_err(|e| {
        Error::Invalid(format!(
            "revision {} does not apply: {e}",
            revision.name_any()
        ))
    })
}

/// `truncateHistory`: revisions no pod is of (nor the current and update ones) beyond
/// `revisionHistoryLimit` go, oldest first.
pub async fn truncate_history(
    ctx: &Ctx,
    set: &StatefulSet,
    pods: &[Pod],
    revisions: &[ControllerRevision],
    current: &ControllerRevision,
    update: &ControllerRevision,
) -> Result<()> {
    let mut live: HashSet<String> = pods.iter().map(|p| revision_of(p).to_string()).collect();
    live.insert(current.name_any());
    live.insert(update.name_any());
    let old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(&r.name_any()))
        .collect();
    let limit = set
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        history::delete(&ctx.client, r).await?;
    }
    Ok(())
}
