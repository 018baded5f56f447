//! ControllerRevisions, as the DaemonSet and StatefulSet controllers keep them
//! (`pkg/controller/history/controller_history.go`): a revision is an immutable snapshot of the
//! owner's pod template as a strategic merge patch (`{"spec":{"template":{…,"$patch":
//! "replace"}}}`, what `kubectl rollout undo` patches the owner with), named `<owner>-<hash>`,
//! numbered, owned by its controller and labelled `controller-revision-hash`. A name taken by a
//! different revision is a hash collision, resolved by bumping the owner's
//! `status.collisionCount`. Also the watch-fed caches both controllers read.

use std::cmp::Ordering;
use std::fmt::Debug;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::podcontrol::controller_ref;
use crate::reconcile::{Error, Result};

/// The label naming the revision (DaemonSets: the template hash; StatefulSets: the revision's
/// name) on revisions and on the pods made from them.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// A watch-fed cache of `api` and the objects its events touch (for mapping to the
/// controllers they concern); `observe` sees each event once the cache holds it, so
/// expectations lowered there never run ahead of what a reconcile reads.
pub fn informer<K>(
    api: Api<K>,
    observe: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, impl Stream<Item = K> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .filter_map(move |event| {
        let out = match event {
            Ok(e) => {
                observe(&e);
                match e {
                    watcher::Event::Apply(o)
                    | watcher::Event::InitApply(o)
                    | watcher::Event::Delete(o) => Some(o),
                    watcher::Event::Init | watcher::Event::InitDone => None,
                }
            }
            Err(e) => {
                tracing::debug!("watch: {e}");
                None
            }
        };
        std::future::ready(out)
    });
    (reader, stream)
}

/// FNV-1 (32 bit), as `hash/fnv.New32` that `HashControllerRevision` uses.
fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        h.wrapping_mul(0x0100_0193) ^ u32::from(*b)
    })
}

/// `rand.SafeEncodeString`: no vowels, no look-alikes, a valid label value.
fn safe_encode(s: &str) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHA[b as usize % ALPHA.len()] as char)
        .collect()
}

/// `HashControllerRevision`: the revision's data, then the collision count in decimal.
pub fn hash_revision(data: &Value, probe: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if let Some(p) = probe {
        bytes.extend_from_slice(p.to_string().as_bytes());
    }
    safe_encode(&fnv32(&bytes).to_string())
}

/// `ControllerRevisionName`: the owner's name (cut to 223 characters) and the hash.
pub fn revision_name(prefix: &str, hash: &str) -> String {
    let prefix = &prefix[..prefix.len().min(223)];
    format!("{prefix}-{hash}")
}

/// `getPatch`: the owner's template as a patch that replaces it whole.
pub fn template_patch<K: serde::Serialize>(owner: &K) -> Value {
    let raw = serde_json::to_value(owner).unwrap_or_default();
    let mut template = raw["spec"]["template"].clone();
    if let Some(t) = template.as_object_mut() {
        t.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The revision's data (a patch), or null.
pub fn data(r: &ControllerRevision) -> &Value {
    static NULL: Value = Value::Null;
    r.data.as_ref().map_or(&NULL, |d| &d.0)
}

/// `NewControllerRevision`: a revision of `data` under `owner`, labelled like the template and
/// with the hash, named for `collision_count`.
pub fn new_revision<K: Resource<DynamicType = ()>>(
    owner: &K,
    template_labels: Option<&std::collections::BTreeMap<String, String>>,
    data: Value,
    revision: i64,
    collision_count: i32,
) -> ControllerRevision {
    let hash = hash_revision(&data, Some(collision_count));
    let mut labels = template_labels.cloned().unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.clone());
    let mut r = ControllerRevision {
        data: Some(RawExtension(data)),
        revision,
        ..Default::default()
    };
    r.metadata.name = Some(revision_name(&owner.name_any(), &hash));
    r.metadata.namespace = owner.meta().namespace.clone();
    r.metadata.labels = Some(labels);
    r.metadata.owner_references = Some(vec![controller_ref(owner)]);
    r
}

/// `EqualRevision`: the same data (hash labels are names here, not comparable numbers).
pub fn equal_revision(a: &ControllerRevision, b: &ControllerRevision) -> bool {
    data(a) == data(b)
}

/// `SortControllerRevisions`: by revision, then creation time, then name.
pub fn sort(revisions: &mut [ControllerRevision]) {
    revisions.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| {
                let t = |r: &ControllerRevision| r.metadata.creation_timestamp.clone().map(|t| t.0);
                t(a).partial_cmp(&t(b)).unwrap_or(Ordering::Equal)
            })
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

/// The number after the highest of `revisions` (sorted).
pub fn next_revision(revisions: &[ControllerRevision]) -> i64 {
    revisions.last().map_or(1, |r| r.revision + 1)
}

/// `CreateControllerRevision`: creates `revision` named for the collision count; a name held
/// by a revision of the same data is that revision, one held by other data bumps the count
/// and tries the next name.
pub async fn create<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
    owner: &K,
    revision: &ControllerRevision,
    collision_count: &mut i32,
) -> Result<ControllerRevision> {
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    loop {
        let hash = hash_revision(data(revision), Some(*collision_count));
        let mut clone = revision.clone();
        clone.metadata.name = Some(revision_name(&owner.name_any(), &hash));
        clone.metadata.namespace = Some(ns.clone());
        match api.create(&PostParams::default(), &clone).await {
            Ok(made) => return Ok(made),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = api.get(&clone.name_any()).await?;
                if data(&existing) == data(&clone) {
                    return Ok(existing);
                }
                *collision_count += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `UpdateControllerRevision`: a revision brought back (a rollback) gets a new number.
pub async fn renumber(
    client: &kube::Client,
    revision: &ControllerRevision,
    number: i64,
) -> Result<ControllerRevision> {
    if revision.revision == number {
        return Ok(revision.clone());
    }
    let api: Api<ControllerRevision> =
        Api::namespaced(client.clone(), &revision.namespace().unwrap_or_default());
    let patch = json!({"revision": number});
    Ok(api
        .patch(
            &revision.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?)
}

/// Deletes a revision out of the history; one already gone is no error.
pub async fn delete(client: &kube::Client, revision: &ControllerRevision) -> Result<()> {
    let api: Api<ControllerRevision> =
        Api::namespaced(client.clone(), &revision.namespace().unwrap_or_default());
    match api
        .delete(&revision.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_hashes_differ_by_data_and_collision_count() {
        let a = json!({"spec": {"template": {"$patch": "replace", "metadata": {"labels": {"a": "1"}}}}});
        let b = json!({"spec": {"template": {"$patch": "replace", "metadata": {"labels": {"a": "2"}}}}});
        assert_eq!(hash_revision(&a, Some(0)), hash_revision(&a, Some(0)));
        assert_ne!(hash_revision(&a, Some(0)), hash_revision(&b, Some(0)));
        assert_ne!(hash_revision(&a, Some(0)), hash_revision(&a, Some(1)));
        assert_eq!(revision_name("web", "abc"), "web-abc");
        assert_eq!(revision_name(&"x".repeat(300), "h").len(), 225);
    }

    #[test]
    fn the_patch_replaces_the_template() {
        let ds = json!({"metadata": {"name": "d"}, "spec": {"selector": {}, "template": {"metadata": {"labels": {"a": "b"}}}}});
        assert_eq!(
            template_patch(&ds),
            json!({"spec": {"template": {"$patch": "replace", "metadata": {"labels": {"a": "b"}}}}})
        );
    }

    #[test]
    fn revisions_sort_by_number_then_name() {
        let r = |name: &str, n: i64| {
            let mut r = ControllerRevision {
                revision: n,
                ..Default::default()
            };
            r.metadata.name = Some(name.into());
            r
        };
        let mut v = vec![r("c", 2), r("b", 1), r("a", 2)];
        sort(&mut v);
        let names: Vec<String> = v.iter().map(|r| r.name_any()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(next_revision(&v), 3);
    }
}
