//! What every cluster starts with, and the store's upkeep.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::registry::{encode, namespaces};
use super::{auth, objects, resources};
use crate::store::{Rev, Store, StoreError};

/// Objects every cluster starts with; creating them is idempotent, so apiservers sharing one
/// store may all do it.
pub async fn bootstrap(store: &dyn Store, ca_pem: &str) -> anyhow::Result<()> {
    let nsr = &resources::NAMESPACES;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut obj = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now()}});
        objects::apply_defaults(nsr, &mut obj);
        match store.create(&nsr.key(None, ns), encode(&obj)).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => anyhow::bail!("creating namespace {ns}: {e}"),
        }
        namespaces::ensure_namespace_defaults(store, ns, ca_pem).await;
    }
    let (roles, bindings) = auth::default_rbac();
    for (r, objs) in [
        (&resources::CLUSTERROLES, roles),
        (&resources::CLUSTERROLEBINDINGS, bindings),
    ] {
        for mut o in objs {
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            o["metadata"]["uid"] = json!(objects::new_uid());
            o["metadata"]["creationTimestamp"] = json!(objects::now());
            match store.create(&r.key(None, &name), encode(&o)).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => anyhow::bail!("creating {} {name}: {e}", r.kind),
            }
        }
    }
    let pcr = &resources::PRIORITYCLASSES;
    for (name, value, desc) in [
        ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
        ("system-cluster-critical", 2_000_000_000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
    ] {
        let obj = json!({"kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1", "metadata": {"name": name, "uid": objects::new_uid(), "creationTimestamp": objects::now()}, "value": value, "description": desc, "preemptionPolicy": "PreemptLowerPriority"});
        let _ = store.create(&pcr.key(None, name), encode(&obj)).await;
    }
    Ok(())
}

/// Compacts history older than five minutes, every five minutes, as the kube-apiserver does.
pub async fn compactor(store: Arc<dyn Store>, every: Duration) {
    let mut previous: Option<Rev> = None;
    loop {
        tokio::time::sleep(every).await;
        if let Some(rev) = previous {
            if let Err(e) = store.compact(rev).await {
                tracing::warn!("compaction to {rev}: {e}");
            }
        }
        previous = store.current_rev().await.ok();
    }
}
