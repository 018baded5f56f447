//! The ReplicaSet and ReplicationController controllers against the in-process apiserver, as
//! `system:kube-controller-manager`. No kubelet runs: a test marks pods Ready through
//! `pods/status` as a kubelet would.

use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::store::Writer;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn manager(c: &Cluster) -> kube::Client {
    c.client(CONTROLLER_MANAGER_USER, &[])
}

/// Pods of `ns` with the label `app=<app>`, by name.
pub async fn pods_of(client: &kube::Client, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut pods = api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items;
    pods.sort_by_key(|p| p.name_any());
    pods
}

/// Marks a pod Running and Ready, as its kubelet would.
pub async fn make_ready(client: &kube::Client, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": crate::api::objects::now()}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
    }}))
    .unwrap()
}

async fn wait_pods(client: &kube::Client, app: &str, n: usize) -> Vec<Pod> {
    eventually(&format!("{n} pods of {app}"), WAIT, || async {
        let pods = pods_of(client, app).await;
        (pods.len() == n).then_some(pods)
    })
    .await
}

async fn wait_status(
    rss: &Api<ReplicaSet>,
    name: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, WAIT, || async {
        let rs = rss.get(name).await.unwrap();
        let st = serde_json::to_value(&rs).unwrap()["status"].clone();
        ok(&st).then_some(st)
    })
    .await
}

#[tokio::test]
async fn a_slow_watch_never_makes_it_create_twice() {
    let c = Cluster::new().await;
    let admin = c.admin();
    let rss: Api<ReplicaSet> = Api::namespaced(admin.clone(), "default");
    let rs = rss
        .create(&PostParams::default(), &replica_set("slow", 3))
        .await
        .unwrap();
    // The pod cache is fed by hand: the watch shows nothing until the test says so.
    let mut writer: Writer<Pod> = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let (owners, _owners_writer) = reflector::store::<ReplicaSet>();
    let ctx = Arc::new(Ctx {
        pods: Cache::new(writer.as_reader()),
        owners: Cache::new(owners),
        control: PodControl::new(manager(&c), ReplicaSet::COMPONENT),
    });
    assert_eq!(rs.metadata.generation, Some(1));
    // Each pass sees the ReplicaSet as stored (its status written by the pass before).
    let sync = || async {
        let rs = Arc::new(rss.get("slow").await.unwrap());
        reconcile(rs, ctx.clone()).await.unwrap();
    };
    sync().await;
    assert_eq!(pods_of(&admin, "slow").await.len(), 3);
    // The cache still shows no pod: the expectations hold the controller back.
    sync().await;
    sync().await;
    assert_eq!(pods_of(&admin, "slow").await.len(), 3);
    // Two of the three seen: still waiting.
    let made = pods_of(&admin, "slow").await;
    for p in &made[..2] {
        let ev = watcher::Event::Apply(p.clone());
        writer.apply_watcher_event(&ev);
        ctx.control.expectations.observe(&ev);
    }
    sync().await;
    assert_eq!(pods_of(&admin, "slow").await.len(), 3);
    let ev = watcher::Event::Apply(made[2].clone());
    writer.apply_watcher_event(&ev);
    ctx.control.expectations.observe(&ev);
    sync().await;
    assert_eq!(pods_of(&admin, "slow").await.len(), 3);
    for p in &made {
        assert!(p.name_any().starts_with("slow-") && p.name_any().len() == "slow-".len() + 5);
        let owner = controller_of(p).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", "slow")
        );
    }
}

#[tokio::test]
async fn keeps_the_count_replaces_deleted_pods_and_reports_status() {
    let c = Cluster::new().await;
    let admin = c.admin();
    let _rs = Task::spawn(run(manager(&c)));
    let rss: Api<ReplicaSet> = Api::namespaced(admin.clone(), "default");
    rss.create(&PostParams::default(), &replica_set("web", 3))
        .await
        .unwrap();
    let pods = wait_pods(&admin, "web", 3).await;
    for p in &pods[..2] {
        make_ready(&admin, &p.name_any()).await;
    }
    let st = wait_status(&rss, "web", "2 ready", |st| st["readyReplicas"] == 2).await;
    assert_eq!(st["replicas"], 3);
    assert_eq!(st["fullyLabeledReplicas"], 3);
    assert_eq!(st["availableReplicas"], 2);
    assert_eq!(st["observedGeneration"], 1);

    let pod_api: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let gone = pods[0].name_any();
    pod_api
        .delete(&gone, &DeleteParams::default())
        .await
        .unwrap();
    let again = wait_pods(&admin, "web", 3).await;
    assert!(again.iter().all(|p| p.name_any() != gone));

    // A successful create leaves an event on the ReplicaSet.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("web"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SuccessfulCreate"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn adopts_orphans_and_releases_pods_that_stop_matching() {
    let c = Cluster::new().await;
    let admin = c.admin();
    let pod_api: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let orphan: Pod = serde_json::from_value(
        json!({"metadata": {"name": "orphan", "labels": {"app": "adopt"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}),
    )
    .unwrap();
    pod_api
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let _rs = Task::spawn(run(manager(&c)));
    let rss: Api<ReplicaSet> = Api::namespaced(admin.clone(), "default");
    let rs = rss
        .create(&PostParams::default(), &replica_set("adopt", 2))
        .await
        .unwrap();
    let pods = wait_pods(&admin, "adopt", 2).await;
    let adopted = pods.iter().find(|p| p.name_any() == "orphan").unwrap();
    assert_eq!(controller_of(adopted).unwrap().uid, rs.uid().unwrap());

    // Relabelled away: released, and replaced.
    pod_api
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "elsewhere"}}})),
        )
        .await
        .unwrap();
    eventually("the relabelled pod released", WAIT, || async {
        let p = pod_api.get("orphan").await.unwrap();
        controller_of(&p).is_none().then_some(())
    })
    .await;
    let pods = wait_pods(&admin, "adopt", 2).await;
    assert!(pods.iter().all(|p| p.name_any() != "orphan"));
}

#[tokio::test]
async fn scales_down_in_deletion_order() {
    let c = Cluster::new().await;
    let admin = c.admin();
    let _rs = Task::spawn(run(manager(&c)));
    let rss: Api<ReplicaSet> = Api::namespaced(admin.clone(), "default");
    rss.create(&PostParams::default(), &replica_set("down", 4))
        .await
        .unwrap();
    let pods = wait_pods(&admin, "down", 4).await;
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    // names[0] stays Pending; the others are ready, names[3] the cheapest to delete.
    for n in &names[1..] {
        make_ready(&admin, n).await;
    }
    let pod_api: Api<Pod> = Api::namespaced(admin.clone(), "default");
    pod_api
        .patch(
            &names[3],
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {k8s_rules::pods::DELETION_COST: "-10"}}}),
            ),
        )
        .await
        .unwrap();
    wait_status(&rss, "down", "3 ready", |st| st["readyReplicas"] == 3).await;
    rss.patch(
        "down",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    let left = wait_pods(&admin, "down", 2).await;
    let left: Vec<String> = left.iter().map(|p| p.name_any()).collect();
    let mut expected = vec![names[1].clone(), names[2].clone()];
    expected.sort();
    assert_eq!(
        left, expected,
        "the pending pod and the cheapest ready one go first"
    );
    wait_status(&rss, "down", "2 replicas, generation 2", |st| {
        st["replicas"] == 2 && st["observedGeneration"] == 2
    })
    .await;
}

#[tokio::test]
async fn a_quota_refusal_is_a_replica_failure_until_creates_succeed() {
    let c = Cluster::new().await;
    let admin = c.admin();
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), "default");
    let q = serde_json::from_value(
        json!({"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "2"}}}),
    )
    .unwrap();
    quotas.create(&PostParams::default(), &q).await.unwrap();
    let _rs = Task::spawn(run(manager(&c)));
    let rss: Api<ReplicaSet> = Api::namespaced(admin.clone(), "default");
    rss.create(&PostParams::default(), &replica_set("quota", 3))
        .await
        .unwrap();
    let st = wait_status(&rss, "quota", "a ReplicaFailure", |st| {
        st["conditions"][0]["type"] == "ReplicaFailure"
    })
    .await;
    let cond = &st["conditions"][0];
    assert_eq!(cond["status"], "True");
    assert_eq!(cond["reason"], "FailedCreate");
    let msg = cond["message"].as_str().unwrap();
    assert!(msg.contains("is forbidden: exceeded quota: pods"), "{msg}");
    assert_eq!(pods_of(&admin, "quota").await.len(), 2);

    quotas
        .patch(
            "pods",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hard": {"pods": "5"}}})),
        )
        .await
        .unwrap();
    wait_status(&rss, "quota", "the failure cleared", |st| {
        st["replicas"] == 3 && st["conditions"].is_null()
    })
    .await;
}

#[tokio::test]
async fn replication_controllers_keep_their_pods_and_scale() {
    let c = Cluster::new().await;
    let admin = c.admin();
    let _rc = Task::spawn(run(manager(&c)));
    let rcs: Api<ReplicationController> = Api::namespaced(admin.clone(), "default");
    // The selector is defaulted from the template's labels.
    let rc = serde_json::from_value(json!({"metadata": {"name": "legacy"}, "spec": {"replicas": 2,
        "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    rcs.create(&PostParams::default(), &rc).await.unwrap();
    let pods = wait_pods(&admin, "legacy", 2).await;
    for p in &pods {
        let owner = controller_of(p).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.api_version.as_str()),
            ("ReplicationController", "v1")
        );
        make_ready(&admin, &p.name_any()).await;
    }
    let scale = rcs
        .patch_scale(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(
        scale.status.unwrap().selector.as_deref(),
        Some("app=legacy")
    );
    wait_pods(&admin, "legacy", 3).await;
    eventually("the RC's status", WAIT, || async {
        let rc = rcs.get("legacy").await.unwrap();
        let st = rc.status.unwrap_or_default();
        (st.replicas == 3 && st.ready_replicas == Some(2) && st.observed_generation == Some(2))
            .then_some(())
    })
    .await;
    pods_of(&admin, "legacy").await;
}
