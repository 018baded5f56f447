//! The StatefulSet controller against the in-process apiserver, as
//! `system:kube-controller-manager`. No kubelet runs: a pod becomes Running and Ready when the
//! test writes its status through pods/status, as a kubelet would.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::*;
use crate::controllers::history::HASH_LABEL;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    _c: Cluster,
    _loop: Task,
    pods: Api<Pod>,
    sets: Api<StatefulSet>,
    admin: kube::Client,
}

impl Setup {
    async fn new() -> Setup {
        let c = Cluster::new().await;
        let admin = c.admin();
        let _loop = Task::spawn(run(c.client(CONTROLLER_MANAGER_USER, &[])));
        Setup {
            pods: Api::namespaced(admin.clone(), "default"),
            sets: Api::namespaced(admin.clone(), "default"),
            admin,
            _c: c,
            _loop,
        }
    }

    async fn create(&self, name: &str, extra: serde_json::Value) {
        let mut v = json!({"metadata": {"name": name}, "spec": {
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}});
        crate::api::patch::strategic_merge(&mut v, &extra);
        let set: StatefulSet = serde_json::from_value(v).unwrap();
        self.sets
            .create(&PostParams::default(), &set)
            .await
            .unwrap();
    }

    async fn live(&self) -> Vec<Pod> {
        let mut pods: Vec<Pod> = self
            .pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    async fn names(&self) -> Vec<String> {
        self.live().await.iter().map(|p| p.name_any()).collect()
    }

    async fn wait_names(&self, want: &[&str]) -> Vec<Pod> {
        eventually(&format!("pods {want:?}"), WAIT, || async {
            let pods = self.live().await;
            let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
            (names == want).then_some(pods)
        })
        .await
    }

    async fn make_ready(&self, pod: &str) {
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        self.pods
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    /// `kubectl scale`: through the scale subresource.
    async fn scale(&self, name: &str, replicas: i32) {
        let scale = self
            .sets
            .patch_scale(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
        assert_eq!(scale.spec.unwrap().replicas, Some(replicas));
    }

    async fn set_image(&self, name: &str, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
        self.sets
            .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
    }

    /// Makes every live pod ready until `done` holds.
    async fn ready_until<F, Fut>(&self, what: &str, done: F)
    where
        F: Fn(Vec<Pod>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        eventually(what, WAIT, || async {
            let pods = self.live().await;
            for p in pods.iter().filter(|p| !k8s_rules::pods::is_ready(p)) {
                let _ = self
                    .pods
                    .patch_status(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}})),
                    )
                    .await;
            }
            done(pods).await.then_some(())
        })
        .await
    }
}

#[tokio::test]
async fn ordered_ready_creates_in_order_with_claims_and_scales_down_in_reverse() {
    let s = Setup::new().await;
    s.create(
        "web",
        json!({"spec": {"replicas": 3, "volumeClaimTemplates": [
            {"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    )
    .await;

    let pods = s.wait_names(&["web-0"]).await;
    let pod = &pods[0];
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-0"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    let vol = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(vol.name, "www");
    assert_eq!(
        vol.persistent_volume_claim.as_ref().unwrap().claim_name,
        "www-web-0"
    );
    assert_eq!(pod.labels()[POD_NAME_LABEL], "web-0");
    assert_eq!(pod.labels()[POD_INDEX_LABEL], "0");
    assert!(pod.labels()[HASH_LABEL].starts_with("web-"));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(s.admin.clone(), "default");
    let claim = claims.get("www-web-0").await.unwrap();
    assert_eq!(claim.labels()["app"], "web");

    // web-1 waits for web-0 to be Running and Ready (the status shows the sync happened).
    eventually("status of one replica", WAIT, || async {
        let st = s.sets.get("web").await.unwrap().status?;
        (st.replicas == 1 && st.observed_generation == Some(1)).then_some(())
    })
    .await;
    assert_eq!(s.names().await, ["web-0"]);
    s.make_ready("web-0").await;
    s.wait_names(&["web-0", "web-1"]).await;
    s.make_ready("web-1").await;
    s.wait_names(&["web-0", "web-1", "web-2"]).await;
    s.make_ready("web-2").await;
    for n in 0..3 {
        claims.get(&format!("www-web-{n}")).await.unwrap();
    }
    eventually("all ready", WAIT, || async {
        let st = s.sets.get("web").await.unwrap().status?;
        (st.ready_replicas == Some(3) && st.available_replicas == Some(3)).then_some(())
    })
    .await;

    // Scale to one: web-2 goes before web-1.
    let deleted = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = deleted.clone();
    let pods_api = s.pods.clone();
    let _watch = Task::spawn(async move {
        let mut w = std::pin::pin!(watcher(pods_api, watcher::Config::default()));
        while let Some(e) = w.next().await {
            if let Ok(watcher::Event::Delete(p)) = e {
                seen.lock().unwrap().push(p.name_any());
            }
        }
    });
    s.scale("web", 1).await;
    s.wait_names(&["web-0"]).await;
    eventually("both deletions seen", WAIT, || async {
        (deleted.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    assert_eq!(*deleted.lock().unwrap(), ["web-2", "web-1"]);
    // Claims are retained (the default policy).
    claims.get("www-web-2").await.unwrap();

    let events: Api<Event> = Api::namespaced(s.admin.clone(), "default");
    let messages: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    for m in [
        "create Pod web-0 in StatefulSet web successful",
        "create Claim www-web-0 Pod web-0 in StatefulSet web success",
        "delete Pod web-2 in StatefulSet web successful",
    ] {
        assert!(messages.iter().any(|x| x == m), "{m} in {messages:?}");
    }
}

#[tokio::test]
async fn parallel_creates_at_once_and_claims_follow_the_retention_policy() {
    let s = Setup::new().await;
    s.create(
        "par",
        json!({"spec": {"replicas": 3, "podManagementPolicy": "Parallel",
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}}),
    )
    .await;
    // No pod is ready, yet all three exist.
    let pods = s.wait_names(&["par-0", "par-1", "par-2"]).await;
    // A failed pod is deleted and made again.
    s.pods
        .patch_status(
            "par-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    eventually("par-0 recreated", WAIT, || async {
        let p = s.pods.get_opt("par-0").await.unwrap()?;
        (p.uid() != pods[0].uid() && p.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(s.admin.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "RecreatingFailedPod"),
        "{reasons:?}"
    );
    let set = s.sets.get("par").await.unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(s.admin.clone(), "default");
    let owned_by_set = |c: &PersistentVolumeClaim| {
        c.owner_references()
            .iter()
            .any(|r| Some(&r.uid) == set.metadata.uid.as_ref())
    };
    eventually("claims owned by the set", WAIT, || async {
        let c = claims.get("data-par-2").await.ok()?;
        owned_by_set(&c).then_some(())
    })
    .await;
    s.scale("par", 2).await;
    s.wait_names(&["par-0", "par-1"]).await;
    // A scaled-down pod's claim is handed to the pod (to go with it) and no longer the set's.
    let c = claims.get("data-par-2").await.unwrap();
    assert!(!owned_by_set(&c), "{:?}", c.owner_references());
    assert!(c
        .owner_references()
        .iter()
        .any(|r| r.kind == "Pod" && r.name == "par-2"));
}

#[tokio::test]
async fn a_partitioned_rolling_update_updates_only_ordinals_at_or_above_the_partition() {
    let s = Setup::new().await;
    s.create(
        "db",
        json!({"spec": {"replicas": 3, "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}}),
    )
    .await;
    s.wait_names(&["db-0", "db-1", "db-2"]).await;
    s.ready_until("all ready", |_| async {
        let st = s.sets.get("db").await.unwrap().status;
        st.is_some_and(|st| st.ready_replicas == Some(3))
    })
    .await;
    let first = s
        .sets
        .get("db")
        .await
        .unwrap()
        .status
        .unwrap()
        .update_revision
        .unwrap();

    s.set_image("db", "nginx:1.26").await;
    let image = |p: &Pod| {
        p.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    s.ready_until("ordinals 1 and 2 updated", |pods| async move {
        pods.len() == 3
            && image(&pods[1]) == "nginx:1.26"
            && image(&pods[2]) == "nginx:1.26"
            && pods.iter().all(k8s_rules::pods::is_ready)
    })
    .await;
    let pods = s.live().await;
    assert_eq!(image(&pods[0]), "nginx:1.25", "below the partition");
    assert_eq!(pods[0].labels()[HASH_LABEL], first);
    let st = s.sets.get("db").await.unwrap().status.unwrap();
    let second = st.update_revision.clone().unwrap();
    assert_ne!(first, second);
    assert_eq!(st.current_revision.as_deref(), Some(first.as_str()));
    assert_eq!(
        (st.updated_replicas, st.current_replicas),
        (Some(2), Some(1))
    );
    assert_eq!(pods[2].labels()[HASH_LABEL], second);

    // The revisions: numbered, owned by the set, holding the template's patch.
    let revisions: Api<ControllerRevision> = Api::namespaced(s.admin.clone(), "default");
    let list = revisions.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 2);
    let r1 = revisions.get(&first).await.unwrap();
    assert_eq!(r1.revision, 1);
    let data = crate::controllers::history::data(&r1).clone();
    assert_eq!(
        data["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );

    // `kubectl rollout undo`: revision 1's data patched onto the set brings revision 1 back
    // as the newest (no new revision), and the updated ordinals roll back.
    s.sets
        .patch("db", &PatchParams::default(), &Patch::Strategic(data))
        .await
        .unwrap();
    s.ready_until("rolled back", |pods| async move {
        pods.len() == 3
            && pods
                .iter()
                .all(|p| image(p) == "nginx:1.25" && k8s_rules::pods::is_ready(p))
    })
    .await;
    assert_eq!(revisions.get(&first).await.unwrap().revision, 3);
    assert_eq!(
        revisions
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let st = s.sets.get("db").await.unwrap().status.unwrap();
    assert_eq!(st.update_revision.as_deref(), Some(first.as_str()));
}

#[tokio::test]
async fn history_is_truncated_to_the_limit_keeping_live_revisions() {
    let s = Setup::new().await;
    s.create(
        "hist",
        json!({"spec": {"replicas": 0, "revisionHistoryLimit": 1}}),
    )
    .await;
    let revisions: Api<ControllerRevision> = Api::namespaced(s.admin.clone(), "default");
    let count = |n: usize| {
        let revisions = revisions.clone();
        async move {
            eventually(&format!("{n} revisions"), WAIT, || async {
                let list = revisions.list(&ListParams::default()).await.unwrap().items;
                (list.len() == n).then_some(list)
            })
            .await
        }
    };
    count(1).await;
    for (i, image) in ["nginx:1.26", "nginx:1.27", "nginx:1.28"]
        .into_iter()
        .enumerate()
    {
        s.set_image("hist", image).await;
        eventually("the new revision", WAIT, || async {
            let st = s.sets.get("hist").await.unwrap().status?;
            let r = revisions.get(st.update_revision.as_deref()?).await.ok()?;
            (r.revision == i as i64 + 2).then_some(())
        })
        .await;
    }
    // The update revision and one more.
    let mut list = count(2).await;
    list.sort_by_key(|r| r.revision);
    assert_eq!(list.iter().map(|r| r.revision).collect::<Vec<_>>(), [3, 4]);
}
