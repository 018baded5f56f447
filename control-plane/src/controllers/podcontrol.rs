//! What every workload controller does to pods (and, for StatefulSets, claims), once: create
//! them from a template under a controller reference, delete them, adopt and release them by
//! selector, and remember what it asked for until its watch has seen it
//! (`pkg/controller/controller_utils.go`, `controller_ref_manager.go`).
//!
//! **Expectations.** A controller must not act twice on a stale cache: after creating three
//! pods, the next reconcile may run before the watch shows them and would create three more.
//! Upstream counts expected adds and deletes per controller and lowers them from informer
//! events; here the pod names are chosen before the create (`generateName`'s alphabet and
//! length), so each expected creation is a known name and each deletion a known UID, and
//! [`Expectations::observe`] sees them on the pod watch. A controller whose expectations are not
//! met skips creating and deleting (it still updates status); they lapse after 5 minutes, as
//! upstream's, so a lost watch event cannot wedge a controller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::events::Recorder;
use crate::reconcile::{Error, Result};

/// How long a controller waits for its watch to show what it did before acting again anyway.
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

/// The controller reference an owned object carries (`controller: true`,
/// `blockOwnerDeletion: true`).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The object's controller, if it has one.
pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// `"<namespace>/<name>"`: how controllers key their owners.
pub fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// A selector as a workload's spec gives it; a missing or invalid one selects nothing.
pub fn selector(sel: Option<&LabelSelector>) -> k8s_rules::labels::Selector {
    k8s_rules::labels::Selector::from_label_selector(sel)
        .unwrap_or_else(|_| k8s_rules::labels::Selector::nothing())
}

/// FNV-1a (32 bit), the hash upstream names templates with.
fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// `rand.SafeEncodeString`: each character mapped into the alphabet with no vowels (no words)
/// and no look-alikes, so the hash is a valid label value.
fn safe_encode(s: &str) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHA[b as usize % ALPHA.len()] as char)
        .collect()
}

/// The `pod-template-hash` / `controller-revision-hash` of a template: FNV-1a over its
/// canonical JSON (and the collision count when there is one), encoded as upstream's.
pub fn template_hash(template: &impl serde::Serialize, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(n) = collision_count.filter(|n| *n > 0) {
        bytes.extend_from_slice(&n.to_be_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

#[derive(Default)]
struct Pending {
    creations: HashSet<String>,
    deletions: HashSet<String>,
    since: Option<Instant>,
}

/// What each controller (by key) is waiting for its pod watch to show.
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Pending) -> T) -> T {
        let mut m = self.pending.lock().expect("expectations lock");
        let p = m.entry(key.to_string()).or_default();
        p.since.get_or_insert_with(Instant::now);
        let out = f(p);
        if p.creations.is_empty() && p.deletions.is_empty() {
            m.remove(key);
        }
        out
    }

    /// `key` is about to create the object named `name` (`"<ns>/<name>"`).
    pub fn expect_creation(&self, key: &str, name: String) {
        self.with(key, |p| p.creations.insert(name));
    }

    /// `key` is about to delete the object with this UID.
    pub fn expect_deletion(&self, key: &str, uid: String) {
        self.with(key, |p| p.deletions.insert(uid));
    }

    /// The creation or deletion did not happen (the request failed): nothing to wait for.
    pub fn forget(&self, key: &str, name_or_uid: &str) {
        self.with(key, |p| {
            p.creations.remove(name_or_uid);
            p.deletions.remove(name_or_uid);
        });
    }

    /// Whether `key` may act: everything it asked for was seen, or waited for too long.
    pub fn satisfied(&self, key: &str) -> bool {
        let mut m = self.pending.lock().expect("expectations lock");
        match m.get(key) {
            None => true,
            Some(p) if p.since.is_some_and(|t| t.elapsed() > EXPECTATIONS_TTL) => {
                tracing::warn!(
                    controller = key,
                    "expectations expired; acting on the cache as it is"
                );
                m.remove(key);
                true
            }
            Some(_) => false,
        }
    }

    /// Lowers expectations from one event of the watch of the owned kind.
    pub fn observe<K: Resource>(&self, event: &watcher::Event<K>) {
        let obj = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
                o
            }
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let name = key_of(obj);
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let gone =
            matches!(event, watcher::Event::Delete(_)) || obj.meta().deletion_timestamp.is_some();
        let mut m = self.pending.lock().expect("expectations lock");
        m.retain(|_, p| {
            p.creations.remove(&name);
            if gone {
                p.deletions.remove(&uid);
            }
            !p.creations.is_empty() || !p.deletions.is_empty()
        });
    }
}

/// Runs `count` calls in batches of 1, 2, 4, … (`slowStartBatch`), so a template every create
/// fails for (quota, admission) fails once, not `count` times. Stops after the first batch
/// with an error; returns how many calls succeeded and the first error.
pub async fn slow_start<F, Fut>(count: usize, f: F) -> (usize, Option<Error>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let (mut done, mut batch) = (0, 1);
    while done < count {
        let n = batch.min(count - done);
        let results = join_all((done..done + n).map(&f)).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        if let Some(err) = results.into_iter().find_map(|r| r.err()) {
            return (done + ok, Some(err));
        }
        done += n;
        batch *= 2;
    }
    (done, None)
}

/// Pods made and removed on behalf of a controller, with its events and expectations.
pub struct PodControl {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub expectations: Expectations,
}

impl PodControl {
    pub fn new(client: kube::Client, component: &'static str) -> PodControl {
        PodControl {
            recorder: Recorder::new(client.clone(), component),
            client,
            expectations: Expectations::default(),
        }
    }

    /// A pod from `template` under `owner`'s controller reference (`GetPodFromTemplate`):
    /// the template's labels, annotations, finalizers and spec; `name` chosen by the caller.
    pub fn pod_from_template<K: Resource<DynamicType = ()>>(
        owner: &K,
        template: &PodTemplateSpec,
        name: String,
    ) -> Pod {
        let meta = template.metadata.clone().unwrap_or_default();
        let mut pod = Pod {
            spec: template.spec.clone(),
            ..Default::default()
        };
        pod.metadata.name = Some(name);
        pod.metadata.namespace = owner.meta().namespace.clone();
        pod.metadata.labels = meta.labels;
        pod.metadata.annotations = meta.annotations;
        pod.metadata.finalizers = meta.finalizers;
        pod.metadata.owner_references = Some(vec![controller_ref(owner)]);
        pod
    }

    /// Creates `pod` (named) for `owner`, expecting it on the watch; a failure is a
    /// `FailedCreate` warning and the error. `SuccessfulCreate` otherwise.
    pub async fn create<K: Resource<DynamicType = ()>>(&self, owner: &K, pod: Pod) -> Result<Pod> {
        let key = key_of(owner);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.name_any();
        self.expectations
            .expect_creation(&key, format!("{ns}/{name}"));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &pod).await {
            Ok(made) => {
                self.recorder
                    .normal(owner, "SuccessfulCreate", &format!("Created pod: {name}"))
                    .await;
                Ok(made)
            }
            Err(e) => {
                self.expectations.forget(&key, &format!("{ns}/{name}"));
                self.recorder
                    .warning(
                        owner,
                        "FailedCreate",
                        &format!("Error creating: {}", api_message(&e)),
                    )
                    .await;
                Err(e.into())
            }
        }
    }

    /// Deletes `pod` (this UID only) for `owner`: `SuccessfulDelete`, or `FailedDelete` and
    /// the error. A pod already gone is no error.
    pub async fn delete<K: Resource<DynamicType = ()>>(&self, owner: &K, pod: &Pod) -> Result<()> {
        let key = key_of(owner);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.expectations.expect_deletion(&key, uid.clone());
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {
                self.recorder
                    .normal(
                        owner,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.expectations.forget(&key, &uid);
                Ok(())
            }
            Err(e) => {
                self.expectations.forget(&key, &uid);
                self.recorder
                    .warning(
                        owner,
                        "FailedDelete",
                        &format!("Error deleting: {}", api_message(&e)),
                    )
                    .await;
                Err(e.into())
            }
        }
    }
}

/// The apiserver's message of an API error, else the error.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

/// The objects (of one namespace) this owner controls, after adopting matching orphans and
/// releasing its objects that no longer match (`ClaimPods`, `ClaimReplicaSets`).
pub async fn claim<O, K>(
    client: &kube::Client,
    owner: &O,
    sel: &k8s_rules::labels::Selector,
    candidates: impl IntoIterator<Item = K>,
) -> Result<Vec<K>>
where
    O: Resource<DynamicType = ()>,
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let owner_uid = owner.meta().uid.clone().unwrap_or_default();
    let owner_deleting = owner.meta().deletion_timestamp.is_some();
    let mut mine = Vec::new();
    for obj in candidates {
        let labels = obj.meta().labels.clone().unwrap_or_default();
        let matches = sel.matches(&labels);
        match controller_of(&obj) {
            Some(r) if r.uid == owner_uid => {
                if matches || owner_deleting {
                    mine.push(obj);
                } else if release(client, owner, &obj).await? {
                    continue;
                }
            }
            Some(_) => {}
            None => {
                if matches && !owner_deleting && obj.meta().deletion_timestamp.is_none() {
                    if let Some(adopted) = adopt(client, owner, &obj).await? {
                        mine.push(adopted);
                    }
                }
            }
        }
    }
    Ok(mine)
}

fn owned_api<K: Resource<DynamicType = (), Scope = NamespaceResourceScope>>(
    client: &kube::Client,
    obj: &K,
) -> Api<K> {
    Api::namespaced(
        client.clone(),
        obj.meta().namespace.as_deref().unwrap_or_default(),
    )
}

/// Adds `owner`'s controller reference to an orphan, guarded by its resourceVersion (a pod
/// that changed meanwhile is looked at again on the next reconcile). `None` when it changed
/// or went.
async fn adopt<O, K>(client: &kube::Client, owner: &O, obj: &K) -> Result<Option<K>>
where
    O: Resource<DynamicType = ()>,
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut refs = obj.meta().owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(owner));
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.meta().resource_version}});
    match owned_api(client, obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `owner`'s reference from an object that no longer matches its selector. Whether
/// it was released (or is gone).
async fn release<O, K>(client: &kube::Client, owner: &O, obj: &K) -> Result<bool>
where
    O: Resource<DynamicType = ()>,
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let refs: Vec<OwnerReference> = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.meta().resource_version}});
    match owned_api(client, obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Labels plus one more (e.g. `pod-template-hash`), as a new map.
pub fn with_label(
    labels: Option<&BTreeMap<String, String>>,
    key: &str,
    value: &str,
) -> BTreeMap<String, String> {
    let mut l = labels.cloned().unwrap_or_default();
    l.insert(key.into(), value.into());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_start_batches_double_and_stop_at_the_first_failing_batch() {
        let calls = Mutex::new(Vec::new());
        let (ok, err) = slow_start(10, |i| {
            calls.lock().unwrap().push(i);
            async move {
                if i == 5 {
                    Err(Error::Invalid("no".into()))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        // Batches 1, 2, 4: calls 0..7; the batch holding 5 fails, its others succeed.
        assert_eq!(calls.lock().unwrap().len(), 7);
        assert_eq!(ok, 6);
        assert!(err.is_some());
        let (ok, err) = slow_start(5, |_| async { Ok(()) }).await;
        assert_eq!((ok, err.is_none()), (5, true));
    }

    #[test]
    fn expectations_wait_for_the_watch() {
        let e = Expectations::default();
        e.expect_creation("ns/rs", "ns/rs-abcde".into());
        assert!(!e.satisfied("ns/rs"));
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.name = Some("rs-abcde".into());
        pod.metadata.uid = Some("u1".into());
        e.observe(&watcher::Event::Apply(pod.clone()));
        assert!(e.satisfied("ns/rs"));
        e.expect_deletion("ns/rs", "u1".into());
        e.observe(&watcher::Event::Apply(pod.clone()));
        assert!(
            !e.satisfied("ns/rs"),
            "an update without deletionTimestamp is not the deletion"
        );
        e.observe(&watcher::Event::Delete(pod));
        assert!(e.satisfied("ns/rs"));
        e.expect_creation("ns/rs", "ns/x".into());
        e.forget("ns/rs", "ns/x");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn template_hashes_are_stable_label_values() {
        let t = json!({"metadata": {"labels": {"app": "web"}}});
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, Some(0)));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
