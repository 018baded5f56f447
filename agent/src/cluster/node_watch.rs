//! The watch of this node's own Node object (`metadata.name=<node>`, as the kubelet's node
//! informer), which keeps `pod::ApiNode` — what admission places pods by — current with the
//! Node's labels and taints as the apiserver has them.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;

use crate::pod::ApiNode;

/// Follows the Node `node` into `sink` until the process ends (kube-rs relists on 410 and
/// backs off on errors); a new client (renewed certificate) restarts the watch.
pub async fn run(node: String, mut client: watch::Receiver<kube::Client>, sink: Arc<ApiNode>) {
    loop {
        let api: Api<Node> = Api::all(client.borrow_and_update().clone());
        let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        // A relist's Node, given to `sink` once the list is complete.
        let mut listed: Option<Node> = None;
        let ours = |n: &Node| n.metadata.name.as_deref() == Some(node.as_str());
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                r = client.changed() => { if r.is_err() { return } break }
            };
            match ev {
                Some(Ok(Event::Init)) => listed = None,
                Some(Ok(Event::InitApply(n))) if ours(&n) => listed = Some(n),
                Some(Ok(Event::InitDone)) => sink.set(listed.take().as_ref()),
                Some(Ok(Event::Apply(n))) if ours(&n) => sink.set(Some(&n)),
                Some(Ok(Event::Delete(n))) if ours(&n) => sink.set(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!("watching the Node {node}: {e}"),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::testing::Api2;
    use serde_json::json;
    use std::time::Duration;

    async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_nodes_labels_and_taints_follow_the_api() {
        let api = Api2::new(json!({"kubernetes.io/hostname": "n2"}), json!([])).await;
        let (_tx, client) = watch::channel(api.client());
        let sink = Arc::new(ApiNode::default());
        let task = tokio::spawn(run("n2".into(), client, sink.clone()));
        until("the Node listed", || {
            sink.current()
                .filter(|v| v.labels.contains_key("kubernetes.io/hostname"))
        })
        .await;
        // `kubectl label node n2 zone=b` and `kubectl taint node n2 dedicated=db:NoExecute`.
        api.update(
            json!({"zone": "b"}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]),
        )
        .await;
        let v = until("the label and taint", || {
            sink.current().filter(|v| v.labels.contains_key("zone"))
        })
        .await;
        assert_eq!(v.labels["zone"], "b");
        assert_eq!(
            (v.taints[0].key.as_str(), v.taints[0].effect.as_str()),
            ("dedicated", "NoExecute")
        );
        // Removed through the API: gone from the view too.
        api.update(json!({}), json!([])).await;
        until("the label and taint gone", || {
            sink.current()
                .filter(|v| !v.labels.contains_key("zone") && v.taints.is_empty())
        })
        .await;
        // A deleted Node leaves nothing to go by.
        api.delete().await;
        until("the Node gone", || sink.current().is_none().then_some(())).await;
        task.abort();
    }
}
