//! The apiserver in-process, as Kubernetes' `registry/rest/resttest` drives a store: the router
//! over an embedded store in a temporary directory, requests sent with `oneshot` as the
//! cluster administrator's client certificate. The generic verbs are checked for every
//! registered kind by iterating the registry, so a new kind is tested by being registered.

use std::time::Duration;

use axum::http::{header, Method, StatusCode};
use serde_json::json;

use crate::api::resources::{self, Resource, RESOURCES};
use crate::testing::cluster::{Cluster, Task};

fn base(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    }
}

fn collection(r: &Resource) -> String {
    if r.namespaced {
        format!("{}/namespaces/default/{}", base(r), r.plural)
    } else {
        format!("{}/{}", base(r), r.plural)
    }
}

fn item(r: &Resource, name: &str) -> String {
    format!("{}/{name}", collection(r))
}

/// Create, get, list, watch, update, a stale update, delete, gone: for every stored kind.
#[tokio::test]
async fn generic_verbs_work_for_every_stored_kind() {
    let c = Cluster::new().await;
    // Deleted namespaces are emptied and removed by the namespace controller.
    let _namespaces = Task::spawn(crate::controllers::namespace::run(
        c.client(crate::reconcile::rbac::CONTROLLER_MANAGER_USER, &[]),
    ));
    let stored: Vec<&Resource> = RESOURCES.iter().copied().filter(|r| r.stored).collect();
    assert!(
        stored.len() > 20,
        "the registry lists {} stored kinds",
        stored.len()
    );
    for r in stored {
        let kind = r.qualified();
        let name = format!("t-{}", r.singular());
        let before = c.call(Method::GET, &collection(r), None).await;
        assert_eq!(
            before.code,
            StatusCode::OK,
            "{kind}: list {:?}",
            before.body
        );
        let from = before.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();

        let created = c
            .call(
                Method::POST,
                &collection(r),
                Some(&r.strategy.example(&name)),
            )
            .await;
        assert_eq!(
            created.code,
            StatusCode::CREATED,
            "{kind}: create {}",
            created.body
        );
        assert_eq!(created.body["kind"], r.kind, "{kind}");
        assert_eq!(created.body["apiVersion"], r.api_version(), "{kind}");
        let created_rv = created.body["metadata"]["resourceVersion"].clone();
        assert!(created.body["metadata"]["uid"].is_string(), "{kind}: uid");

        let got = c.call(Method::GET, &item(r, &name), None).await;
        assert_eq!(got.code, StatusCode::OK, "{kind}: get {}", got.body);
        assert_eq!(
            got.body["metadata"]["uid"], created.body["metadata"]["uid"],
            "{kind}"
        );
        assert_eq!(
            got.body["metadata"]["resourceVersion"], created_rv,
            "{kind}"
        );

        let list = c.call(Method::GET, &collection(r), None).await;
        assert_eq!(list.body["kind"], r.list_kind(), "{kind}");
        assert!(
            list.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["metadata"]["name"] == name.as_str()),
            "{kind}: list {}",
            list.body
        );

        let watch = format!("{}?watch=1&resourceVersion={from}", collection(r));
        let added = c
            .watch_until(&watch, |ev| {
                ev["object"]["metadata"]["name"] == name.as_str()
            })
            .await;
        assert_eq!(added["type"], "ADDED", "{kind}: {added}");

        let mut changed = got.body.clone();
        changed["metadata"]["labels"]["tested"] = json!("yes");
        let updated = c.call(Method::PUT, &item(r, &name), Some(&changed)).await;
        assert_eq!(
            updated.code,
            StatusCode::OK,
            "{kind}: update {}",
            updated.body
        );
        assert_eq!(
            updated.body["metadata"]["labels"]["tested"], "yes",
            "{kind}"
        );
        let modified = c
            .watch_until(&watch, |ev| {
                ev["type"] == "MODIFIED" && ev["object"]["metadata"]["name"] == name.as_str()
            })
            .await;
        assert_eq!(
            modified["object"]["metadata"]["labels"]["tested"], "yes",
            "{kind}"
        );

        let stale = c.call(Method::PUT, &item(r, &name), Some(&got.body)).await;
        assert_eq!(
            stale.code,
            StatusCode::CONFLICT,
            "{kind}: stale update {}",
            stale.body
        );
        assert_eq!(stale.body["reason"], "Conflict", "{kind}");
        assert_eq!(
            stale.body["message"],
            format!("Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        );

        let deleted = c.call(Method::DELETE, &item(r, &name), None).await;
        assert_eq!(
            deleted.code,
            StatusCode::OK,
            "{kind}: delete {}",
            deleted.body
        );
        // A namespace goes once the namespace controller emptied it.
        let mut gone = c.call(Method::GET, &item(r, &name), None).await;
        for _ in 0..50 {
            if gone.code == StatusCode::NOT_FOUND {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            gone = c.call(Method::GET, &item(r, &name), None).await;
        }
        assert_eq!(
            gone.code,
            StatusCode::NOT_FOUND,
            "{kind}: after delete {}",
            gone.body
        );
        assert_eq!(gone.body["message"], format!("{kind} \"{name}\" not found"));
        assert_eq!(gone.body["details"]["kind"], r.plural, "{kind}");
    }
}

/// Reviews answer a create and list nothing; computed kinds list and refuse writes.
#[tokio::test]
async fn reviews_and_computed_kinds_answer() {
    let c = Cluster::new().await;
    for r in RESOURCES.iter().filter(|r| !r.stored) {
        let kind = r.qualified();
        let list = c.call(Method::GET, &collection(r), None).await;
        assert_eq!(list.code, StatusCode::OK, "{kind}: list {}", list.body);
        assert_eq!(list.body["kind"], r.list_kind(), "{kind}");
        let posted = c
            .call(Method::POST, &collection(r), Some(&r.strategy.example("x")))
            .await;
        if r.review {
            assert_eq!(posted.code, StatusCode::CREATED, "{kind}: {}", posted.body);
            assert!(posted.body["status"].is_object(), "{kind}: {}", posted.body);
            assert_eq!(list.body["items"], json!([]), "{kind}");
        } else {
            assert_eq!(posted.code, StatusCode::METHOD_NOT_ALLOWED, "{kind}");
            assert!(!list.body["items"].as_array().unwrap().is_empty(), "{kind}");
        }
    }
    let ssar = c
        .call(
            Method::POST,
            &collection(&resources::SELFSUBJECTACCESSREVIEWS),
            Some(&json!({"spec": {"resourceAttributes": {"verb": "delete", "resource": "nodes"}}})),
        )
        .await;
    assert_eq!(ssar.body["status"]["allowed"], true, "{}", ssar.body);
    let who = c
        .call(
            Method::POST,
            &collection(&resources::SELFSUBJECTREVIEWS),
            Some(&json!({})),
        )
        .await;
    assert_eq!(who.body["status"]["userInfo"]["username"], "admin");
}

/// The status store writes only the status; the main resource keeps it.
#[tokio::test]
async fn status_and_main_writes_keep_each_others_fields() {
    let c = Cluster::new().await;
    let r = &resources::DEPLOYMENTS;
    let created = c
        .call(
            Method::POST,
            &collection(r),
            Some(&r.strategy.example("web")),
        )
        .await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    let mut body = created.body.clone();
    body["spec"]["replicas"] = json!(5);
    body["status"] = json!({"replicas": 3});
    let status = c
        .call(
            Method::PUT,
            &format!("{}/status", item(r, "web")),
            Some(&body),
        )
        .await;
    assert_eq!(status.code, StatusCode::OK, "{}", status.body);
    assert_eq!(status.body["status"]["replicas"], 3);
    assert_eq!(
        status.body["spec"]["replicas"],
        created.body["spec"]["replicas"]
    );
    assert_eq!(status.body["metadata"]["generation"], 1);

    let mut body = status.body.clone();
    body["spec"]["replicas"] = json!(2);
    body["status"] = json!({"replicas": 9});
    let main = c.call(Method::PUT, &item(r, "web"), Some(&body)).await;
    assert_eq!(main.code, StatusCode::OK, "{}", main.body);
    assert_eq!(main.body["spec"]["replicas"], 2);
    assert_eq!(main.body["status"]["replicas"], 3);
    assert_eq!(main.body["metadata"]["generation"], 2);

    // A kind without a status subresource has no status verbs beyond the generic ones.
    let cm = &resources::CONFIGMAPS;
    let gone = c
        .call(Method::DELETE, &format!("{}/status", item(cm, "x")), None)
        .await;
    assert_eq!(gone.code, StatusCode::NOT_FOUND);
    let refused = c
        .call(Method::DELETE, &format!("{}/status", item(r, "web")), None)
        .await;
    assert_eq!(refused.code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        refused.body["message"],
        "the server does not allow this method on the requested resource (status)"
    );
}

#[tokio::test]
async fn dry_runs_store_nothing() {
    let c = Cluster::new().await;
    let r = &resources::CONFIGMAPS;
    let dry = c
        .call(
            Method::POST,
            &format!("{}?dryRun=All", collection(r)),
            Some(&json!({"metadata": {"name": "dry"}, "data": {"a": "b"}})),
        )
        .await;
    assert_eq!(dry.code, StatusCode::CREATED, "{}", dry.body);
    assert_eq!(dry.body["data"]["a"], "b");
    assert_eq!(
        c.call(Method::GET, &item(r, "dry"), None).await.code,
        StatusCode::NOT_FOUND
    );

    let svc = &resources::SERVICES;
    let dry = c
        .call(
            Method::POST,
            &format!("{}?dryRun=All", collection(svc)),
            Some(&json!({"metadata": {"name": "dry"}, "spec": {"ports": [{"port": 80}]}})),
        )
        .await;
    assert_eq!(dry.code, StatusCode::CREATED, "{}", dry.body);
    assert!(
        dry.body["spec"]["clusterIP"].is_null(),
        "a dry run allocates no IP"
    );

    c.call(
        Method::POST,
        &collection(r),
        Some(&json!({"metadata": {"name": "kept"}})),
    )
    .await;
    let dry = c
        .call(
            Method::DELETE,
            &format!("{}?dryRun=All", item(r, "kept")),
            None,
        )
        .await;
    assert_eq!(dry.code, StatusCode::OK);
    assert_eq!(
        c.call(Method::GET, &item(r, "kept"), None).await.code,
        StatusCode::OK
    );
    let mut changed = c.call(Method::GET, &item(r, "kept"), None).await.body;
    changed["data"] = json!({"x": "y"});
    let dry = c
        .call(
            Method::PUT,
            &format!("{}?dryRun=All", item(r, "kept")),
            Some(&changed),
        )
        .await;
    assert_eq!(dry.body["data"]["x"], "y");
    let stored = c.call(Method::GET, &item(r, "kept"), None).await;
    assert!(stored.body["data"].is_null(), "{}", stored.body);
}

#[tokio::test]
async fn delete_preconditions_are_checked() {
    let c = Cluster::new().await;
    let r = &resources::CONFIGMAPS;
    let created = c
        .call(
            Method::POST,
            &collection(r),
            Some(&json!({"metadata": {"name": "p"}})),
        )
        .await;
    let uid = created.body["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let rv = created.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let wrong_uid = c
        .call(
            Method::DELETE,
            &item(r, "p"),
            Some(&json!({"preconditions": {"uid": "nope"}})),
        )
        .await;
    assert_eq!(wrong_uid.code, StatusCode::CONFLICT);
    assert_eq!(
        wrong_uid.body["message"],
        format!("Operation cannot be fulfilled on configmaps \"p\": Precondition failed: UID in precondition: nope, UID in object meta: {uid}")
    );
    let wrong_rv = c
        .call(
            Method::DELETE,
            &item(r, "p"),
            Some(&json!({"preconditions": {"resourceVersion": "1"}})),
        )
        .await;
    assert_eq!(wrong_rv.code, StatusCode::CONFLICT);
    assert_eq!(wrong_rv.body["reason"], "Conflict");
    let right = c
        .call(
            Method::DELETE,
            &item(r, "p"),
            Some(&json!({"preconditions": {"uid": uid, "resourceVersion": rv}})),
        )
        .await;
    assert_eq!(right.code, StatusCode::OK, "{}", right.body);
    assert_eq!(
        c.call(Method::GET, &item(r, "p"), None).await.code,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_finalizer_holds_a_delete() {
    let c = Cluster::new().await;
    let r = &resources::CONFIGMAPS;
    c.call(
        Method::POST,
        &collection(r),
        Some(&json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})),
    )
    .await;
    let deleted = c.call(Method::DELETE, &item(r, "held"), None).await;
    assert_eq!(deleted.code, StatusCode::OK);
    assert!(deleted.body["metadata"]["deletionTimestamp"].is_string());
    let held = c.call(Method::GET, &item(r, "held"), None).await;
    assert_eq!(held.code, StatusCode::OK);
    assert_eq!(held.body["metadata"]["deletionGracePeriodSeconds"], 0);
    let released = c
        .call_as(
            Method::PATCH,
            &item(r, "held"),
            Some(&json!({"metadata": {"finalizers": null}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(released.code, StatusCode::OK, "{}", released.body);
    assert_eq!(
        c.call(Method::GET, &item(r, "held"), None).await.code,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn generate_name_makes_a_name() {
    let c = Cluster::new().await;
    let r = &resources::CONFIGMAPS;
    let created = c
        .call(
            Method::POST,
            &collection(r),
            Some(&json!({"metadata": {"generateName": "gen-"}})),
        )
        .await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    let name = created.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert_eq!(
        c.call(Method::GET, &item(r, name), None).await.code,
        StatusCode::OK
    );
    let nameless = c
        .call(Method::POST, &collection(r), Some(&json!({"metadata": {}})))
        .await;
    assert_eq!(nameless.code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        nameless.body["message"],
        "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required"
    );
}

#[tokio::test]
async fn strict_field_validation_refuses_unknown_fields() {
    let c = Cluster::new().await;
    let r = &resources::CONFIGMAPS;
    let body = json!({"metadata": {"name": "s"}, "bogus": 1});
    let strict = c
        .call(
            Method::POST,
            &format!("{}?fieldValidation=Strict", collection(r)),
            Some(&body),
        )
        .await;
    assert_eq!(strict.code, StatusCode::BAD_REQUEST);
    assert_eq!(
        strict.body["message"],
        "strict decoding error: unknown field \"bogus\""
    );
    let warned = c.call(Method::POST, &collection(r), Some(&body)).await;
    assert_eq!(warned.code, StatusCode::CREATED);
    assert_eq!(
        warned.headers.get(header::WARNING).unwrap(),
        "299 - \"unknown field 'bogus'\""
    );
    assert!(warned.body.get("bogus").is_none());
}

/// Unconditional writes (patches, `kubectl scale`, bindings) racing a controller's status
/// writes all land, as the kube-apiserver retries them on a conflict; one that names a stale
/// resourceVersion is refused.
#[tokio::test]
async fn unconditional_writes_are_retried_on_a_concurrent_write() {
    let c = &Cluster::new().await;
    let r = &resources::DEPLOYMENTS;
    let created = c
        .call(
            Method::POST,
            &collection(r),
            Some(&r.strategy.example("web")),
        )
        .await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    let merge = "application/merge-patch+json";
    let scale = format!("{}/scale", item(r, "web"));
    let status = format!("{}/status", item(r, "web"));
    let writes = (1..=20).flat_map(|i| {
        [
            (scale.clone(), json!({"spec": {"replicas": i}})),
            (status.clone(), json!({"status": {"observedGeneration": i}})),
            (
                item(r, "web"),
                json!({"metadata": {"labels": {format!("l{i}"): "x"}}}),
            ),
        ]
    });
    let answers = futures_util::future::join_all(writes.map(|(path, body)| async move {
        c.call_as(Method::PATCH, &path, Some(&body), merge).await
    }))
    .await;
    for a in &answers {
        assert_eq!(a.code, StatusCode::OK, "{}", a.body);
    }
    let got = c.call(Method::GET, &item(r, "web"), None).await.body;
    for i in 1..=20 {
        assert_eq!(got["metadata"]["labels"][format!("l{i}")], "x", "{got}");
    }

    // Deletes racing status writes land too.
    for i in 0..10 {
        let made = c
            .call(
                Method::POST,
                &collection(r),
                Some(&r.strategy.example(&format!("d{i}"))),
            )
            .await;
        assert_eq!(made.code, StatusCode::CREATED, "{}", made.body);
    }
    let ops = (0..10).flat_map(|i| {
        let status = json!({"status": {"observedGeneration": i}});
        [
            (
                Method::PATCH,
                format!("{}/status", item(r, &format!("d{i}"))),
                Some(status),
            ),
            (Method::DELETE, item(r, &format!("d{i}")), None),
        ]
    });
    let answers = futures_util::future::join_all(ops.map(|(method, path, body)| async move {
        let deleting = method == Method::DELETE;
        (
            deleting,
            c.call_as(method, &path, body.as_ref(), merge).await,
        )
    }))
    .await;
    for (deleting, a) in answers {
        let fine = if deleting {
            a.code == StatusCode::OK
        } else {
            matches!(a.code.as_u16(), 200 | 404)
        };
        assert!(fine, "{}", a.body);
    }
    for i in 0..10 {
        let gone = c.call(Method::GET, &item(r, &format!("d{i}")), None).await;
        assert_eq!(gone.code, StatusCode::NOT_FOUND);
    }

    let stale = json!({"metadata": {"resourceVersion": created.body["metadata"]["resourceVersion"]}, "spec": {"replicas": 7}});
    let refused = c.call_as(Method::PATCH, &scale, Some(&stale), merge).await;
    assert_eq!(refused.code, StatusCode::CONFLICT, "{}", refused.body);
}
