//! A StatefulSet's pods and claims (`stateful_set_utils.go`, `stateful_pod_control.go`): the
//! identity of ordinal `i` (name `<set>-<i>`, hostname, subdomain, labels), its claims
//! (`<template>-<set>-<i>`, made before the pod and mounted in it), owner references on the
//! claims as the retention policy says, and the events upstream records for each.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};

use super::Ctx;
use crate::controllers::history::HASH_LABEL;
use crate::controllers::podcontrol::{api_message, PodControl};
use crate::reconcile::{Error, Result};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `getParentNameAndOrdinal`: `<parent>-<ordinal>`.
pub fn parent_and_ordinal(pod: &Pod) -> Option<(String, i32)> {
    let name = pod.metadata.name.as_deref()?;
    let (parent, ord) = name.rsplit_once('-')?;
    if ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent.to_string(), ord.parse().ok()?))
}

pub fn ordinal(pod: &Pod) -> i32 {
    parent_and_ordinal(pod).map_or(-1, |(_, o)| o)
}

pub fn in_ordinal_range(pod: &Pod, set: &StatefulSet) -> bool {
    let o = ordinal(pod);
    o >= start_ordinal(set) && o < start_ordinal(set) + replicas(set)
}

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

pub fn revision_of(pod: &Pod) -> &str {
    pod.labels().get(HASH_LABEL).map_or("", String::as_str)
}

/// The claims of ordinal `ordinal`, by template name: `<template>-<set>-<ordinal>`, labelled
/// with the set's selector.
pub fn claims(set: &StatefulSet, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let templates = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    let match_labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    templates
        .into_iter()
        .map(|mut c| {
            let template = c.name_any();
            c.metadata.name = Some(format!("{template}-{}-{ordinal}", set.name_any()));
            c.metadata.namespace = set.namespace();
            let labels = c.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(match_labels.clone());
            c.status = None;
            (template, c)
        })
        .collect()
}

/// `updateIdentity`: name, namespace and the identity labels.
fn update_identity(set: &StatefulSet, pod: &mut Pod, ordinal: i32) {
    pod.metadata.name = Some(pod_name(set, ordinal));
    pod.metadata.namespace = set.namespace();
    let name = pod.name_any();
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name);
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
}

pub fn identity_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let Some((parent, o)) = parent_and_ordinal(pod) else {
        return false;
    };
    parent == set.name_any()
        && pod.name_any() == pod_name(set, o)
        && pod.namespace() == set.namespace()
        && pod.labels().get(POD_NAME_LABEL) == Some(&pod.name_any())
        && pod.labels().get(POD_INDEX_LABEL) == Some(&o.to_string())
}

/// `updateStorage`: a persistentVolumeClaim volume per claim template, in place of any
/// template volume of that name.
fn update_storage(set: &StatefulSet, pod: &mut Pod) {
    let claims = claims(set, ordinal(pod));
    let spec = pod.spec.get_or_insert_with(Default::default);
    let current = spec.volumes.take().unwrap_or_default();
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(template, c)| Volume {
            name: template.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.name_any(),
                read_only: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    volumes.extend(
        current
            .into_iter()
            .filter(|v| !claims.iter().any(|(t, _)| *t == v.name)),
    );
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
}

pub fn storage_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    claims(set, ordinal(pod)).iter().all(|(template, c)| {
        volumes.iter().any(|v| {
            v.name == *template
                && v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|p| p.claim_name == c.name_any())
        })
    })
}

/// `newStatefulSetPod`: the template under the set's controller reference, with the
/// ordinal's identity (hostname and subdomain too) and storage.
pub fn new_pod(set: &StatefulSet, ordinal: i32, revision: &str) -> Pod {
    let template = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut pod = PodControl::pod_from_template(set, &template, pod_name(set, ordinal));
    update_identity(set, &mut pod, ordinal);
    let name = pod.name_any();
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    spec.subdomain = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    update_storage(set, &mut pod);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), revision.into());
    pod
}

fn policy(set: &StatefulSet) -> (String, String) {
    let p = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.clone())
        .unwrap_or_default();
    (
        p.when_deleted.unwrap_or_else(|| "Retain".into()),
        p.when_scaled.unwrap_or_else(|| "Retain".into()),
    )
}

fn has_ref(claim: &PersistentVolumeClaim, uid: &str) -> bool {
    claim.owner_references().iter().any(|r| r.uid == uid)
}

fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        ..Default::default()
    }
}

/// `updateClaimOwnerRefForSetAndPod`: the owner references a claim should have under the
/// retention policy: the set's when claims go with the set, the pod's when they go with a
/// scaled-down pod. Whether the claim changed.
fn set_claim_owners(claim: &mut PersistentVolumeClaim, set: &StatefulSet, pod: &Pod) -> bool {
    let (deleted, scaled) = policy(set);
    let scaled_down = !in_ordinal_range(pod, set);
    let want_set = deleted == "Delete" && !(scaled == "Delete" && scaled_down);
    let want_pod = scaled == "Delete" && scaled_down;
    let mut changed = false;
    for (want, owner) in [(want_set, owner_ref(set)), (want_pod, owner_ref(pod))] {
        let has = has_ref(claim, &owner.uid);
        if want && !has && !owner.uid.is_empty() {
            claim
                .metadata
                .owner_references
                .get_or_insert_with(Vec::new)
                .push(owner);
            changed = true;
        } else if !want && has {
            if let Some(refs) = claim.metadata.owner_references.as_mut() {
                refs.retain(|r| r.uid != owner.uid);
            }
            changed = true;
        }
    }
    changed
}

impl Ctx {
    fn claims_api(&self, set: &StatefulSet) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default())
    }

    fn pods_api(&self, set: &StatefulSet) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default())
    }

    /// `recordPodEvent`.
    async fn pod_event(&self, verb: &str, set: &StatefulSet, pod: &Pod, err: Option<&str>) {
        let title = format!("{}{}", verb[..1].to_uppercase(), &verb[1..]);
        let (name, set_name) = (pod.name_any(), set.name_any());
        match err {
            None => {
                let msg = format!("{verb} Pod {name} in StatefulSet {set_name} successful");
                self.recorder
                    .normal(set, &format!("Successful{title}"), &msg)
                    .await
            }
            Some(e) => {
                let msg = format!("{verb} Pod {name} in StatefulSet {set_name} failed error: {e}");
                self.recorder
                    .warning(set, &format!("Failed{title}"), &msg)
                    .await
            }
        }
    }

    /// `createPersistentVolumeClaims`: each missing claim of the pod is created (a claim
    /// being deleted is an error: the pod must wait for its replacement).
    pub async fn create_missing_claims(&self, set: &StatefulSet, pod: &Pod) -> Result<()> {
        let api = self.claims_api(set);
        let mut errors = Vec::new();
        for (_, claim) in claims(set, ordinal(pod)) {
            let name = claim.name_any();
            match api.get_opt(&name).await {
                Ok(None) => match api.create(&PostParams::default(), &claim).await {
                    Ok(_) => {
                        let msg = format!(
                            "create Claim {name} Pod {} in StatefulSet {} success",
                            pod.name_any(),
                            set.name_any()
                        );
                        self.recorder.normal(set, "SuccessfulCreate", &msg).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        let msg = format!(
                            "create Claim {name} for Pod {} in StatefulSet {} failed error: {}",
                            pod.name_any(),
                            set.name_any(),
                            api_message(&e)
                        );
                        self.recorder.warning(set, "FailedCreate", &msg).await;
                        errors.push(format!("failed to create PVC {name}: {}", api_message(&e)));
                    }
                },
                Ok(Some(c)) if c.metadata.deletion_timestamp.is_some() => {
                    errors.push(format!("pvc {name} is being deleted"))
                }
                Ok(Some(_)) => {}
                Err(e) => errors.push(format!(
                    "failed to retrieve PVC {name}: {}",
                    api_message(&e)
                )),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(errors.join("; ")))
        }
    }

    /// `CreateStatefulPod`: claims first, then the pod, then the claims' owners.
    pub async fn create_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<()> {
        if let Err(e) = self.create_missing_claims(set, pod).await {
            self.pod_event("create", set, pod, Some(&e.to_string()))
                .await;
            return Err(e);
        }
        match self.pods_api(set).create(&PostParams::default(), pod).await {
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Err(Error::Invalid(format!(
                    "pod {} already exists",
                    pod.name_any()
                )))
            }
            Err(e) => {
                self.pod_event("create", set, pod, Some(&api_message(&e)))
                    .await;
                return Err(e.into());
            }
            Ok(made) => {
                self.update_claim_owners(set, &made).await?;
            }
        }
        self.pod_event("create", set, pod, None).await;
        Ok(())
    }

    /// `DeleteStatefulPod` (this UID only: the name may already be a new pod's).
    pub async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<()> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.pods_api(set).delete(&pod.name_any(), &params).await {
            Ok(_) => {
                self.pod_event("delete", set, pod, None).await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => {
                self.pod_event("delete", set, pod, Some(&api_message(&e)))
                    .await;
                Err(e.into())
            }
        }
    }

    /// `UpdatePodClaimForRetentionPolicy`: existing claims get the owners the policy says.
    pub async fn update_claim_owners(&self, set: &StatefulSet, pod: &Pod) -> Result<()> {
        let api = self.claims_api(set);
        for (_, c) in claims(set, ordinal(pod)) {
            let Some(mut claim) = api.get_opt(&c.name_any()).await? else {
                continue;
            };
            if set_claim_owners(&mut claim, set, pod) {
                api.replace(&claim.name_any(), &PostParams::default(), &claim)
                    .await?;
            }
        }
        Ok(())
    }

    /// `ClaimsMatchRetentionPolicy`.
    pub async fn claims_match_policy(&self, set: &StatefulSet, pod: &Pod) -> Result<bool> {
        let api = self.claims_api(set);
        for (_, c) in claims(set, ordinal(pod)) {
            if let Some(mut claim) = api.get_opt(&c.name_any()).await? {
                if set_claim_owners(&mut claim, set, pod) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// `PodClaimIsStale`: with whenScaled Delete, a claim still owned by an earlier pod of
    /// this name is on its way out, and the pod must wait for it to go.
    pub async fn claim_is_stale(&self, set: &StatefulSet, pod: &Pod) -> Result<bool> {
        if policy(set).1 == "Retain" {
            return Ok(false);
        }
        let api = self.claims_api(set);
        for (_, c) in claims(set, ordinal(pod)) {
            if let Some(claim) = api.get_opt(&c.name_any()).await? {
                let stale = claim.owner_references().iter().any(|r| {
                    r.kind == "Pod"
                        && r.name == pod.name_any()
                        && Some(&r.uid) != pod.uid().as_ref()
                });
                if stale {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// `UpdateStatefulPod`: restores the ordinal's identity and storage on a pod that lost
    /// them (labels edited, say), creating claims it misses.
    pub async fn restore_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<()> {
        let mut pod = pod.clone();
        let mut changed = false;
        if !identity_matches(set, &pod) {
            let o = ordinal(&pod);
            update_identity(set, &mut pod, o);
            changed = true;
        }
        if !storage_matches(set, &pod) {
            update_storage(set, &mut pod);
            self.create_missing_claims(set, &pod).await?;
            changed = true;
        }
        if !self.claims_match_policy(set, &pod).await? {
            self.update_claim_owners(set, &pod).await?;
        }
        if !changed {
            return Ok(());
        }
        let r = self
            .pods_api(set)
            .replace(&pod.name_any(), &PostParams::default(), &pod)
            .await;
        let err = r.as_ref().err().map(api_message);
        self.pod_event("update", set, &pod, err.as_deref()).await;
        r.map(|_| ()).map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ordinal_pods_have_identity_and_claims() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}],
                    "volumes": [{"name": "www", "emptyDir": {}}, {"name": "other", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}
        }))
        .unwrap();
        let pod = new_pod(&set, 2, "web-abc");
        assert_eq!(pod.name_any(), "web-2");
        assert_eq!(ordinal(&pod), 2);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(
            volumes.len(),
            2,
            "the claim replaces the template's volume of its name"
        );
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "www-web-2"
        );
        assert!(identity_matches(&set, &pod) && storage_matches(&set, &pod));
        assert_eq!(pod.labels()[POD_INDEX_LABEL], "2");
        assert_eq!(claims(&set, 2)[0].1.labels()["app"], "web");
    }
}
