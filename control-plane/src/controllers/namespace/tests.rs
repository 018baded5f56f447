//! The namespace, service account and root CA publisher controllers against the in-process
//! apiserver.

use axum::http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::*;
use crate::controllers::endpointslice::tests::{manager, WAIT};
use crate::controllers::serviceaccount;
use crate::testing::cluster::{eventually, Cluster, Task};

async fn namespace(c: &Cluster, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.admin())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn condition(ns: &Namespace, ty: &str) -> Option<(String, String, String)> {
    let c = ns
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test]
async fn a_deleted_namespace_is_emptied_then_removed_by_the_controller() {
    let c = Cluster::new().await;
    let _ctl = Task::spawn(run(manager(&c)));
    namespace(&c, "doomed").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin(), "doomed");
    for (name, finalizers) in [("plain", json!([])), ("held", json!(["example.com/hold"]))] {
        let cm =
            serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers}}))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let secret = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    Api::<Secret>::namespaced(c.admin(), "doomed")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let dep = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(c.admin(), "doomed")
        .create(&PostParams::default(), &dep)
        .await
        .unwrap();

    let nss: Api<Namespace> = Api::all(c.admin());
    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    // Nothing new may go in; a second delete is told the system is on it.
    let again = c
        .call(Method::DELETE, "/api/v1/namespaces/doomed", None)
        .await;
    assert_eq!(again.code, StatusCode::CONFLICT, "{}", again.body);
    assert!(again.body["message"]
        .as_str()
        .unwrap()
        .ends_with("Upon completion, this namespace will automatically be purged by the system."));

    let ns = eventually("only the held ConfigMap left", WAIT, || async {
        let ns = nss.get("doomed").await.unwrap();
        let remaining = condition(&ns, "NamespaceContentRemaining")?;
        (remaining.2 == "Some resources are remaining: configmaps has 1 resource instances")
            .then_some(ns)
    })
    .await;
    assert_eq!(
        condition(&ns, "NamespaceFinalizersRemaining").unwrap(),
        (
            "True".into(),
            "SomeFinalizersRemain".into(),
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances".into()
        )
    );
    assert_eq!(
        condition(&ns, "NamespaceDeletionContentFailure").unwrap().1,
        "ContentDeleted"
    );
    assert!(Api::<Deployment>::namespaced(c.admin(), "doomed")
        .get_opt("d")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        ns.spec.unwrap().finalizers.unwrap(),
        ["kubernetes"],
        "kept while content remains"
    );

    // The last finalizer goes: so does the namespace.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("the namespace removed", WAIT, || async {
        nss.get_opt("doomed").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn finalize_writes_only_the_finalizers_and_checks_them() {
    let c = Cluster::new().await;
    namespace(&c, "f").await;
    let bad = c
        .call(
            Method::PUT,
            "/api/v1/namespaces/f/finalize",
            Some(&json!({"metadata": {"name": "f"}, "spec": {"finalizers": ["bogus"]}})),
        )
        .await;
    assert_eq!(bad.code, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let ok = c
        .call(
            Method::PUT,
            "/api/v1/namespaces/f/finalize",
            Some(&json!({"metadata": {"name": "f", "labels": {"ignored": "yes"}}, "spec": {"finalizers": []}})),
        )
        .await;
    assert_eq!(ok.code, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["spec"]["finalizers"], json!([]));
    assert!(ok.body["metadata"]["labels"]["ignored"].is_null());
    // Finalized before its deletion: the delete removes it at once (the first turns it
    // Terminating, the controller's — here the second — removes it).
    c.call(Method::DELETE, "/api/v1/namespaces/f", None).await;
    let second = c.call(Method::DELETE, "/api/v1/namespaces/f", None).await;
    assert_eq!(second.code, StatusCode::OK, "{}", second.body);
    let gone = c.call(Method::GET, "/api/v1/namespaces/f", None).await;
    assert_eq!(gone.code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_namespace_gets_its_default_service_account_and_the_cluster_ca() {
    let c = Cluster::new().await;
    let _sa = Task::spawn(serviceaccount::run(manager(&c)));
    let _ca = Task::spawn(serviceaccount::run_root_ca_publisher(
        manager(&c),
        c.pki_dir().join("ca.crt"),
    ));
    namespace(&c, "fresh").await;
    // A pod right away: admission waits for `default` as upstream's does.
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}))
    .unwrap();
    Api::<Pod>::namespaced(c.admin(), "fresh")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    let sas: Api<ServiceAccount> = Api::namespaced(c.admin(), "fresh");
    let cms: Api<ConfigMap> = Api::namespaced(c.admin(), "fresh");
    let ca = std::fs::read_to_string(c.pki_dir().join("ca.crt")).unwrap();
    let cm = eventually("kube-root-ca.crt", WAIT, || async {
        cms.get_opt("kube-root-ca.crt").await.unwrap()
    })
    .await;
    assert_eq!(cm.data.unwrap()["ca.crt"], ca);

    // Deleted or changed, they come back.
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    cms.patch(
        "kube-root-ca.crt",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": "tampered"}})),
    )
    .await
    .unwrap();
    eventually("default back", WAIT, || async {
        sas.get_opt("default").await.unwrap()
    })
    .await;
    eventually("the CA back", WAIT, || async {
        let cm = cms.get("kube-root-ca.crt").await.unwrap();
        (cm.data.unwrap()["ca.crt"] == ca).then_some(())
    })
    .await;
}
