//! The node's own Node object as the apiserver has it, for admission: its labels and taints as
//! they are now — set at registration or later through the API (`kubectl label`, `kubectl
//! taint`, controllers) — as the kubelet's predicates read the Node from its informer. The
//! cluster side keeps it current with a watch of this one Node (`cluster::node_watch`) and
//! connects the client for a fresh read; a standalone agent has neither, and admission then
//! goes by the local labels and `--register-with-taints` (the kubelet's `initialNode`).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::Api;
use tokio::sync::watch;

/// How long admission waits for a fresh read of the Node.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What admission places a pod by: the node's labels and taints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl NodeView {
    pub fn of(node: &Node) -> Self {
        Self {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default(),
        }
    }
}

/// The Node as the apiserver has it: the watch's latest copy, and a client for a fresh read.
#[derive(Default)]
pub struct ApiNode {
    /// The Node's name and the apiserver client (replaced when the node's certificate is
    /// renewed); unset on a standalone node.
    client: OnceLock<(String, watch::Receiver<kube::Client>)>,
    /// The Node as the watch saw it last; None before its first list, or while the Node does
    /// not exist.
    seen: RwLock<Option<Arc<NodeView>>>,
}

impl ApiNode {
    /// Makes this a cluster node: `name`'s Node through `client`.
    pub fn connect(&self, name: &str, client: watch::Receiver<kube::Client>) {
        let _ = self.client.set((name.to_string(), client));
    }

    /// Whether the node is in a cluster (admission then goes by the API's Node).
    pub fn connected(&self) -> bool {
        self.client.get().is_some()
    }

    /// The watch's news: the Node as it is now, or None when it is gone.
    pub fn set(&self, node: Option<&Node>) {
        let view = node.map(|n| Arc::new(NodeView::of(n)));
        let mut seen = self.seen.write().expect("node view lock");
        if seen.as_deref() != view.as_deref() {
            match &view {
                Some(v) => tracing::debug!(
                    labels = ?v.labels,
                    taints = ?v.taints,
                    "the Node's labels and taints"
                ),
                None => tracing::debug!("the Node is gone"),
            }
        }
        *seen = view;
    }

    /// The Node as the watch saw it last.
    pub fn current(&self) -> Option<Arc<NodeView>> {
        self.seen.read().expect("node view lock").clone()
    }

    /// Reads the Node from the apiserver now (the kubelet's `getNodeAnyWay` without its
    /// cache); None on a standalone node, or when the read fails or takes too long (logged).
    pub async fn fetch(&self) -> Option<NodeView> {
        let (name, client) = self.client.get()?;
        let api: Api<Node> = Api::all(client.borrow().clone());
        match tokio::time::timeout(FETCH_TIMEOUT, api.get(name)).await {
            Ok(Ok(n)) => Some(NodeView::of(&n)),
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => {
                // Not registered yet (static pods start before), or deleted and not yet again.
                tracing::debug!("reading the Node {name}: not found");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!("reading the Node {name}: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "reading the Node {name}: no answer within {}s",
                    FETCH_TIMEOUT.as_secs()
                );
                None
            }
        }
    }
}

/// The real apiserver in-process for the tests that read a Node through it.
#[cfg(test)]
pub(crate) mod testing {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use podlet_control_plane::testing::cluster::{Cluster, Link};
    use serde_json::{json, Value};

    /// An apiserver holding Node `n2` with `labels` and `taints`; the node's own client
    /// (`system:node:n2`) goes through `link`, which a test may cut.
    pub struct Api2 {
        pub cluster: Cluster,
        pub link: Link,
    }

    pub fn node(labels: Value, taints: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "n2", "labels": labels}, "spec": {"taints": taints}})
    }

    impl Api2 {
        pub async fn new(labels: Value, taints: Value) -> Api2 {
            let cluster = Cluster::new().await;
            let n: Node = serde_json::from_value(node(labels, taints)).unwrap();
            Api::<Node>::all(cluster.admin())
                .create(&PostParams::default(), &n)
                .await
                .unwrap();
            Api2 {
                cluster,
                link: Link::default(),
            }
        }

        /// The agent's client: the node's identity, checked by the Node authorizer.
        pub fn client(&self) -> kube::Client {
            self.cluster
                .client_on("system:node:n2", &["system:nodes"], self.link.clone())
        }

        /// `kubectl label` / `kubectl taint`: the Node's labels and taints become these.
        pub async fn update(&self, labels: Value, taints: Value) {
            let patch = json!({"metadata": {"labels": null}, "spec": {"taints": null}});
            let nodes = Api::<Node>::all(self.cluster.admin());
            let pp = PatchParams::default();
            nodes.patch("n2", &pp, &Patch::Merge(patch)).await.unwrap();
            let patch = json!({"metadata": {"labels": labels}, "spec": {"taints": taints}});
            nodes.patch("n2", &pp, &Patch::Merge(patch)).await.unwrap();
        }

        pub async fn delete(&self) {
            Api::<Node>::all(self.cluster.admin())
                .delete("n2", &Default::default())
                .await
                .unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(
                taints
                    .iter()
                    .map(|(k, e)| Taint {
                        key: k.to_string(),
                        effect: e.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    #[test]
    fn the_watch_news_replace_the_view() {
        let a = ApiNode::default();
        assert!(!a.connected());
        assert_eq!(a.current(), None, "nothing before the first list");
        a.set(Some(&node(&[("zone", "a")], &[("k", "NoExecute")])));
        let v = a.current().unwrap();
        assert_eq!(v.labels["zone"], "a");
        assert_eq!(v.taints[0].key, "k");
        // A label and a taint removed through the API are gone (the Node replaces the view).
        a.set(Some(&node(&[("zone", "b")], &[])));
        let v = a.current().unwrap();
        assert_eq!(
            v.labels,
            BTreeMap::from([("zone".to_string(), "b".to_string())])
        );
        assert!(v.taints.is_empty());
        a.set(None);
        assert_eq!(a.current(), None, "a deleted Node");
    }

    #[tokio::test]
    async fn a_fresh_read_is_the_nodes_as_the_api_has_it_now() {
        assert_eq!(ApiNode::default().fetch().await, None, "standalone");
        let api = testing::Api2::new(serde_json::json!({"zone": "a"}), serde_json::json!([])).await;
        let (_tx, client) = watch::channel(api.client());
        let a = ApiNode::default();
        a.connect("n2", client);
        assert!(a.connected());
        assert_eq!(a.fetch().await.unwrap().labels["zone"], "a");
        api.update(serde_json::json!({"zone": "b"}), serde_json::json!([]))
            .await;
        assert_eq!(a.fetch().await.unwrap().labels["zone"], "b");
        assert_eq!(a.current(), None, "a read does not stand in for the watch");
        api.link.cut();
        assert_eq!(a.fetch().await, None);
    }
}
