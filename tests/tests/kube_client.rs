//! End-to-end: kube-rs (the Rust client library) against `podlet control-plane`, over TLS with the
//! admin kubeconfig: typed create/list/patch, and a watcher that keeps going through a kill -9
//! and restart of the apiserver.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use podlet_e2e::apiserver::ControlPlane;

async fn wait_for(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, name: &str) -> bool {
    let fut = async {
        while let Some(n) = rx.recv().await {
            if n == name {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or(false)
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_and_watches_through_an_apiserver_restart() {
    let mut cp = ControlPlane::start();
    let kc = kube::config::Kubeconfig::read_from(cp.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    assert_eq!(
        created.spec.unwrap().restart_policy.as_deref(),
        Some("Always"),
        "defaults come back typed"
    );
    let list = pods
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let patched = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"patched": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["patched"], "yes");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let err = cms.get("missing").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{err:?}"
    );

    // A watcher (list, then watch, re-listing on errors with back-off) sees every pod.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(p) = ev {
                let _ = tx.send(p.metadata.name.unwrap_or_default());
            }
        }
    });
    assert!(wait_for(&mut rx, "a").await, "the watcher lists pod a");

    // The apiserver dies and comes back on the same store; the watcher carries on.
    tokio::task::block_in_place(|| cp.restart());
    pods.create(&PostParams::default(), &pod("b"))
        .await
        .unwrap();
    assert!(
        wait_for(&mut rx, "b").await,
        "the watcher sees pod b after the restart"
    );
    task.abort();
}
