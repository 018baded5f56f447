//! The disruption controller and the eviction subresource against the in-process apiserver;
//! ReplicaSets and Deployments are created as objects (no workload controller runs).

use axum::http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::*;
use crate::controllers::endpointslice::tests::{manager, WAIT};
use crate::controllers::podcontrol::controller_ref;
use crate::testing::cluster::{eventually, Cluster, Task};

async fn create<K>(c: &Cluster, v: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(c.admin(), "default");
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap()
}

fn template(app: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}})
}

/// A running, ready (or not) pod of `owner`.
async fn owned_pod(c: &Cluster, name: &str, app: &str, owner: Option<OwnerReference>, ready: bool) {
    let owners: Vec<OwnerReference> = owner.into_iter().collect();
    create::<Pod>(
        c,
        json!({"metadata": {"name": name, "labels": {"app": app}, "ownerReferences": owners},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1.36"}]}}),
    )
    .await;
    let st = if ready { "True" } else { "False" };
    Api::<Pod>::namespaced(c.admin(), "default")
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": st}]}})),
        )
        .await
        .unwrap();
}

async fn status_when(
    c: &Cluster,
    name: &str,
    what: &str,
    f: impl Fn(&PodDisruptionBudgetStatus) -> bool,
) -> PodDisruptionBudgetStatus {
    let api: Api<PodDisruptionBudget> = Api::namespaced(c.admin(), "default");
    eventually(what, WAIT, || async {
        let st = api.get(name).await.unwrap().status?;
        f(&st).then_some(st)
    })
    .await
}

async fn evict(c: &Cluster, pod: &str) -> (StatusCode, Value) {
    let a = c
        .call(
            Method::POST,
            &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
            Some(&json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": "default"}})),
        )
        .await;
    (a.code, a.body)
}

fn condition(st: &PodDisruptionBudgetStatus) -> (String, String) {
    let c = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed")
        .unwrap();
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn a_budget_over_a_replica_set_allows_evictions_while_enough_pods_are_healthy() {
    let c = Cluster::new().await;
    let _ctl = Task::spawn(run(manager(&c)));
    let rs: ReplicaSet = create(
        &c,
        json!({"metadata": {"name": "db"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "db"}}, "template": template("db")}}),
    )
    .await;
    for i in 0..3 {
        owned_pod(
            &c,
            &format!("db-{i}"),
            "db",
            Some(controller_ref(&rs)),
            true,
        )
        .await;
    }
    create::<PodDisruptionBudget>(
        &c,
        json!({"metadata": {"name": "db"}, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "db"}}}}),
    )
    .await;
    let st = status_when(&c, "db", "one disruption allowed", |s| {
        s.disruptions_allowed == 1
    })
    .await;
    assert_eq!(
        (st.expected_pods, st.current_healthy, st.desired_healthy),
        (3, 3, 2)
    );
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(condition(&st), ("True".into(), "SufficientPods".into()));

    // The first eviction takes the only disruption allowed, at once.
    let (code, body) = evict(&c, "db-0").await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.admin(), "default");
    let after = pdbs.get("db").await.unwrap().status.unwrap();
    assert_eq!(after.disruptions_allowed, 0);
    let pod = Api::<Pod>::namespaced(c.admin(), "default")
        .get("db-0")
        .await
        .unwrap();
    assert!(
        pod.metadata.deletion_timestamp.is_some(),
        "db-0 is being deleted"
    );
    let why = pod.status.unwrap().conditions.unwrap();
    let why = why.iter().find(|c| c.type_ == "DisruptionTarget").unwrap();
    assert_eq!(
        (why.reason.as_deref(), why.message.as_deref()),
        (
            Some("EvictionByEvictionAPI"),
            Some("Eviction API: evicting")
        )
    );

    // The next is refused as upstream refuses it, its message quoting the budget's status
    // (once the controller has counted db-0 out).
    status_when(&c, "db", "db-0 counted out", |s| s.current_healthy == 2).await;
    let (code, body) = evict(&c, "db-1").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        body["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(body["details"]["causes"][0]["reason"], "DisruptionBudget");
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "The disruption budget db needs 2 healthy pods and has 2 currently"
    );
    let st = status_when(&c, "db", "db-0 terminating", |s| {
        s.current_healthy == 2 && s.disruptions_allowed == 0
    })
    .await;
    assert_eq!(condition(&st), ("False".into(), "InsufficientPods".into()));

    // A replacement turns ready: one more may go.
    owned_pod(&c, "db-3", "db", Some(controller_ref(&rs)), true).await;
    status_when(&c, "db", "a disruption allowed again", |s| {
        s.disruptions_allowed == 1
    })
    .await;
    let (code, body) = evict(&c, "db-1").await;
    assert_eq!(code, StatusCode::CREATED, "{body}");

    // A pod not running is nobody's disruption.
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");
    create::<Pod>(
        &c,
        json!({"metadata": {"name": "db-pending", "labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}),
    )
    .await;
    let (code, body) = evict(&c, "db-pending").await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert!(pods
        .get_opt("db-pending")
        .await
        .unwrap()
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some()));
}

#[tokio::test]
async fn a_percentage_counts_the_deployments_scale_and_unknown_controllers_fail_safe() {
    let c = Cluster::new().await;
    let _ctl = Task::spawn(run(manager(&c)));
    let dep: Deployment = create(
        &c,
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}}),
    )
    .await;
    let mut rs: Value = json!({"metadata": {"name": "web-abc", "ownerReferences": [controller_ref(&dep)]},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}});
    rs["metadata"]["labels"] = json!({"app": "web"});
    let rs: ReplicaSet = create(&c, rs).await;
    // Two of the four the Deployment wants exist, both ready.
    for i in 0..2 {
        owned_pod(
            &c,
            &format!("web-{i}"),
            "web",
            Some(controller_ref(&rs)),
            true,
        )
        .await;
    }
    create::<PodDisruptionBudget>(
        &c,
        json!({"metadata": {"name": "web"}, "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}}}),
    )
    .await;
    let st = status_when(&c, "web", "counted from the deployment", |s| {
        s.expected_pods == 4
    })
    .await;
    assert_eq!(
        (
            st.desired_healthy,
            st.current_healthy,
            st.disruptions_allowed
        ),
        (2, 2, 0)
    );

    // A pod whose controller is of no kind the controller knows: no disruption at all.
    let foreign = OwnerReference {
        api_version: "example.com/v1".into(),
        kind: "Thing".into(),
        name: "t".into(),
        uid: "u-thing".into(),
        controller: Some(true),
        ..Default::default()
    };
    owned_pod(&c, "odd-0", "odd", Some(foreign), true).await;
    owned_pod(&c, "odd-1", "odd", None, true).await;
    create::<PodDisruptionBudget>(
        &c,
        json!({"metadata": {"name": "odd"}, "spec": {"maxUnavailable": "10%", "selector": {"matchLabels": {"app": "odd"}}}}),
    )
    .await;
    let st = status_when(&c, "odd", "sync failed", |s| {
        s.conditions
            .iter()
            .flatten()
            .any(|c| c.reason == "SyncFailed")
    })
    .await;
    assert_eq!(st.disruptions_allowed, 0);
    let cond = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionAllowed")
        .unwrap();
    assert_eq!(cond.message, "found no controllers for pod \"odd-0\"");

    // Two budgets over one pod: the eviction cannot choose.
    create::<PodDisruptionBudget>(
        &c,
        json!({"metadata": {"name": "web-too"}, "spec": {"minAvailable": 0, "selector": {"matchLabels": {"app": "web"}}}}),
    )
    .await;
    let (code, body) = evict(&c, "web-0").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("more than one PodDisruptionBudget"));
    Api::<PodDisruptionBudget>::namespaced(c.admin(), "default")
        .delete("web-too", &DeleteParams::default())
        .await
        .unwrap();
}

/// The eviction alone (no controller): each takes one disruption from the status it finds.
#[tokio::test]
async fn evictions_spend_the_budget_in_its_status() {
    let c = Cluster::new().await;
    for (name, ready) in [("a", true), ("b", true), ("c", true), ("sick", false)] {
        owned_pod(&c, name, "x", None, ready).await;
    }
    create::<PodDisruptionBudget>(
        &c,
        json!({"metadata": {"name": "x"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "x"}}}}),
    )
    .await;
    // Not yet observed by a controller: retry later.
    let (code, body) = evict(&c, "a").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "The disruption budget x is still being processed by the server."
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.admin(), "default");
    pdbs.patch_status(
        "x",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"observedGeneration": 1, "disruptionsAllowed": 2,
            "currentHealthy": 3, "desiredHealthy": 1, "expectedPods": 4}}),
        ),
    )
    .await
    .unwrap();
    let (code, body) = evict(&c, "a").await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let st = pdbs.get("x").await.unwrap().status.unwrap();
    assert_eq!(st.disruptions_allowed, 1);
    assert!(st.disrupted_pods.unwrap().contains_key("a"));
    let (code, _) = evict(&c, "b").await;
    assert_eq!(code, StatusCode::CREATED);
    let st = pdbs.get("x").await.unwrap().status.unwrap();
    assert_eq!(st.disruptions_allowed, 0);
    assert_eq!(st.disrupted_pods.as_ref().unwrap().len(), 2);
    assert_eq!(condition(&st), ("False".into(), "InsufficientPods".into()));
    let (code, _) = evict(&c, "c").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    // An unready pod may go while the budget is healthy (IfHealthyBudget), without spending.
    let (code, body) = evict(&c, "sick").await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        pdbs.get("x")
            .await
            .unwrap()
            .status
            .unwrap()
            .disruptions_allowed,
        0
    );
}
