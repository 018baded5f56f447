//! The garbage collector against the in-process apiserver, as
//! `system:kube-controller-manager`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    c: Cluster,
    cms: Api<ConfigMap>,
}

impl Setup {
    async fn new() -> Self {
        let c = Cluster::new().await;
        let cms = Api::namespaced(c.admin(), "default");
        Setup { c, cms }
    }

    fn manager(&self) -> kube::Client {
        self.c.client(CONTROLLER_MANAGER_USER, &[])
    }

    fn start_collector(&self) -> Task {
        Task::spawn(run(self.manager()))
    }

    /// A ConfigMap owned by the objects `owners`, held by `finalizers`; its uid.
    async fn config_map(
        &self,
        name: &str,
        owners: &[OwnerReference],
        finalizers: &[&str],
    ) -> String {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers},
        }))
        .unwrap();
        let made = self.cms.create(&PostParams::default(), &cm).await.unwrap();
        made.metadata.uid.unwrap()
    }

    async fn exists(&self, name: &str) -> Option<ConfigMap> {
        self.cms.get_opt(name).await.unwrap()
    }

    async fn gone(&self, name: &str) {
        eventually(&format!("{name} to be collected"), WAIT, || async {
            self.exists(name).await.is_none().then_some(())
        })
        .await
    }
}

/// A reference to `obj` as its owner.
fn owner_of<K: kube::Resource<DynamicType = ()>>(obj: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: obj.meta().name.clone().unwrap(),
        uid: obj.meta().uid.clone().unwrap(),
        ..Default::default()
    }
}

fn cm_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: name.into(),
        uid: uid.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn dependents_of_a_deleted_owner_are_collected() {
    let s = Setup::new().await;
    let _gc = s.start_collector();
    let owner = s.config_map("owner", &[], &[]).await;
    let keeper = s.config_map("keeper", &[], &[]).await;
    s.config_map("dep1", &[cm_owner("owner", &owner)], &[])
        .await;
    s.config_map("dep2", &[cm_owner("owner", &owner)], &[])
        .await;
    // One owner gone of two: still owned.
    s.config_map(
        "shared",
        &[cm_owner("owner", &owner), cm_owner("keeper", &keeper)],
        &[],
    )
    .await;
    s.cms
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    s.gone("dep1").await;
    s.gone("dep2").await;
    assert!(s.exists("shared").await.is_some());
    assert!(s.exists("keeper").await.is_some());
}

#[tokio::test]
async fn a_foreground_deletion_waits_for_the_dependents() {
    let s = Setup::new().await;
    let _gc = s.start_collector();
    let owner = s.config_map("owner", &[], &[]).await;
    s.config_map("held", &[cm_owner("owner", &owner)], &["example.com/hold"])
        .await;
    s.config_map("free", &[cm_owner("owner", &owner)], &[])
        .await;
    s.cms
        .delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    s.gone("free").await;
    eventually("held to be deleted", WAIT, || async {
        let held = s.exists("held").await?;
        held.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    // A dependent is still there (its finalizer holds it): so is the owner.
    let waiting = s.exists("owner").await.expect("the owner waits");
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers.as_deref(),
        Some(&[FOREGROUND.to_string()][..])
    );

    s.cms
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    s.gone("owner").await;
    assert!(s.exists("held").await.is_none());
}

#[tokio::test]
async fn owners_of_other_kinds_and_scopes_are_followed() {
    let s = Setup::new().await;
    let _gc = s.start_collector();
    let deployments: Api<Deployment> = Api::namespaced(s.c.admin(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}},
    }))
    .unwrap();
    let deployment = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(s.c.admin());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    let node = nodes.create(&PostParams::default(), &node).await.unwrap();
    s.config_map("web-config", &[owner_of(&deployment)], &[])
        .await;
    // A namespaced dependent may have a cluster-scoped owner.
    s.config_map("n1-config", &[owner_of(&node)], &[]).await;

    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    s.gone("web-config").await;
    assert!(s.exists("n1-config").await.is_some());
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    s.gone("n1-config").await;
}

/// Before the owner's watch has listed, the graph does not know it: the API decides.
#[tokio::test]
async fn an_owner_the_graph_has_not_seen_is_looked_up() {
    let s = Setup::new().await;
    let (collector, _wakes) = collector(s.manager());
    let kind = collector.kind_of("v1", "ConfigMap").unwrap();
    let ctx = Arc::new(KindLoop { collector, kind });
    let owner = s.config_map("owner", &[], &[]).await;
    s.config_map("dep", &[cm_owner("owner", &owner)], &[]).await;
    let dep = || async {
        let api: Api<DynamicObject> =
            Api::namespaced_with(s.manager(), "default", &ctx.collector.kinds[kind].ar);
        Arc::new(api.get("dep").await.unwrap())
    };

    reconcile(dep().await, ctx.clone()).await.unwrap();
    assert!(s.exists("dep").await.is_some(), "its owner exists");

    // Another object of the owner's name is not the owner.
    s.cms
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    s.config_map("owner", &[], &[]).await;
    reconcile(dep().await, ctx).await.unwrap();
    assert!(s.exists("dep").await.is_none(), "its owner is gone");
}

/// An owner of a kind the server does not serve (a custom resource whose definition is not
/// there yet) cannot be looked up: its dependents stay, as upstream's collector keeps them.
#[tokio::test]
async fn dependents_of_an_unknown_kind_are_kept() {
    let s = Setup::new().await;
    let (collector, _wakes) = collector(s.manager());
    let kind = collector.kind_of("v1", "ConfigMap").unwrap();
    let ctx = Arc::new(KindLoop { collector, kind });
    let widget = OwnerReference {
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        name: "w".into(),
        uid: "8b1c6f0e-0000-4000-8000-000000000001".into(),
        ..Default::default()
    };
    s.config_map("dep", &[widget], &[]).await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(s.manager(), "default", &ctx.collector.kinds[kind].ar);
    reconcile(Arc::new(api.get("dep").await.unwrap()), ctx)
        .await
        .unwrap();
    assert!(s.exists("dep").await.is_some(), "kept");
}
