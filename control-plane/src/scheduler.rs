//! A minimal scheduler: pods with no node and `schedulerName: default-scheduler` are bound to the
//! node that fits them (not unschedulable, nodeSelector and required node affinity, taints
//! tolerated, requests within allocatable including the pods already there, pod count) with the
//! most room left (least allocated). Pods that fit nowhere get `PodScheduled=False`, reason `Unschedulable`, with
//! kube-scheduler's message, and are retried. Binding is a conditional write on the pod, so
//! several schedulers (one per apiserver sharing an etcd) never bind a pod twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_rules::nodeaffinity::{required_node_affinity_matches, NodeFacts};
use k8s_rules::quantity::Milli;
use k8s_rules::resources::pod_request;
use k8s_rules::taints::{blocks_scheduling, find_untolerated};

use crate::api::{objects, resources};
use crate::store::{Store, StoreError};

/// What the scheduler needs of a pod: the stored object, its revision, the typed pod and its
/// effective requests (computed once a pass).
struct PodInfo {
    value: Value,
    rev: i64,
    pod: Pod,
    cpu: Milli,
    memory: Milli,
}

impl PodInfo {
    fn new(value: Value, rev: i64) -> Option<Self> {
        let pod: Pod = serde_json::from_value(value.clone()).ok()?;
        let spec = pod.spec.clone().unwrap_or_default();
        Some(Self {
            cpu: pod_request(&spec, "cpu"),
            memory: pod_request(&spec, "memory"),
            value,
            rev,
            pod,
        })
    }

    fn request(&self, res: &str) -> Milli {
        if res == "cpu" {
            self.cpu
        } else {
            self.memory
        }
    }
}

fn allocatable(node: &Node, res: &str) -> Option<Milli> {
    node.status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get(res)
        .and_then(|q| Milli::of(q).ok())
}

/// Why `node` cannot take `pod` (kube-scheduler's reason texts), or None when it fits.
fn misfit(pod: &PodInfo, node: &Node, on_node: &[&PodInfo]) -> Option<String> {
    let spec = pod.pod.spec.clone().unwrap_or_default();
    let node_spec = node.spec.clone().unwrap_or_default();
    if node_spec.unschedulable == Some(true) {
        return Some("node(s) were unschedulable".into());
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let facts = NodeFacts {
        name: node.metadata.name.as_deref().unwrap_or_default(),
        labels: &labels,
    };
    if !required_node_affinity_matches(&spec, facts) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let taints = node_spec.taints.unwrap_or_default();
    let tolerations = spec.tolerations.unwrap_or_default();
    if let Some(t) = find_untolerated(&taints, &tolerations, blocks_scheduling) {
        return Some(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or_default()
        ));
    }
    let max_pods = allocatable(node, "pods").map(Milli::value);
    if max_pods.is_some_and(|m| on_node.len() as i128 + 1 > m) {
        return Some("Too many pods".into());
    }
    for res in ["cpu", "memory"] {
        let Some(cap) = allocatable(node, res) else {
            continue;
        };
        let used: Milli = on_node.iter().map(|p| p.request(res)).sum();
        if used + pod.request(res) > cap {
            return Some(format!("Insufficient {res}"));
        }
    }
    None
}

fn free_fraction(node: &Node, on_node: &[&PodInfo], pod: &PodInfo) -> f64 {
    let mut score = 0.0;
    for res in ["cpu", "memory"] {
        if let Some(cap) = allocatable(node, res).filter(|c| *c > Milli::ZERO) {
            let used: Milli =
                on_node.iter().map(|p| p.request(res)).sum::<Milli>() + pod.request(res);
            score += 1.0 - used.milli() as f64 / cap.milli() as f64;
        }
    }
    score
}

async fn all(store: &dyn Store, r: &resources::Resource) -> Vec<(Value, i64)> {
    store
        .list(&r.prefix(), None)
        .await
        .map(|(kvs, _)| {
            kvs.iter()
                .filter_map(|kv| Some((serde_json::from_slice(&kv.value).ok()?, kv.mod_rev)))
                .collect()
        })
        .unwrap_or_default()
}

/// One pass: tries every pending pod once.
pub async fn schedule_pending(store: &dyn Store) {
    let pods_r = resources::find("", "v1", "pods").unwrap();
    let nodes_r = resources::find("", "v1", "nodes").unwrap();
    let nodes: Vec<Node> = all(store, nodes_r)
        .await
        .into_iter()
        .filter_map(|(n, _)| serde_json::from_value(n).ok())
        .collect();
    let mut pods: Vec<PodInfo> = all(store, pods_r)
        .await
        .into_iter()
        .filter_map(|(v, rev)| PodInfo::new(v, rev))
        .collect();
    let live = |p: &PodInfo| {
        !matches!(
            p.value["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
    };
    for i in 0..pods.len() {
        let pod = &pods[i];
        let spec = pod.pod.spec.as_ref();
        let pending = spec
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default()
            .is_empty()
            && spec
                .and_then(|s| s.scheduler_name.as_deref())
                .unwrap_or("default-scheduler")
                == "default-scheduler"
            && pod.pod.metadata.deletion_timestamp.is_none();
        if !pending {
            continue;
        }
        let mut best: Option<(f64, &Node)> = None;
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for node in &nodes {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            let on: Vec<&PodInfo> = pods
                .iter()
                .filter(|p| p.value["spec"]["nodeName"] == name && live(p))
                .collect();
            match misfit(pod, node, &on) {
                Some(why) => *reasons.entry(why).or_default() += 1,
                None => {
                    let s = free_fraction(node, &on, pod);
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, node));
                    }
                }
            }
        }
        let ns = pod
            .pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.pod.metadata.name.clone().unwrap_or_default();
        let key = pods_r.key(Some(&ns), &name);
        let mut updated = pod.value.clone();
        let condition = match best {
            Some((_, node)) => {
                let node_name = node.metadata.name.clone().unwrap_or_default();
                updated["spec"]["nodeName"] = json!(node_name);
                tracing::info!(pod = %format!("{ns}/{name}"), node = %node_name, "scheduled");
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()})
            }
            None => {
                let mut msg = format!("0/{} nodes are available", nodes.len());
                if !reasons.is_empty() {
                    let parts: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                    msg = format!("{msg}: {}.", parts.join(", "));
                } else {
                    msg.push('.');
                }
                let same = pod.value["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == "PodScheduled"
                            && c["reason"] == "Unschedulable"
                            && c["message"] == msg.as_str()
                    });
                if same {
                    continue;
                }
                json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": objects::now(), "reason": "Unschedulable", "message": msg})
            }
        };
        let conds = updated["status"]
            .as_object_mut()
            .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(c)) = conds {
            c.retain(|c| c["type"] != "PodScheduled");
            c.push(condition);
        }
        match store
            .update(&key, serde_json::to_vec(&updated).unwrap(), Some(pod.rev))
            .await
        {
            Ok(kv) => {
                if let Some(p) = PodInfo::new(updated, kv.mod_rev) {
                    pods[i] = p;
                }
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => tracing::warn!("scheduling {ns}/{name}: {e}"),
        }
    }
}

/// Runs until the process ends: a pass after every pod or node change (batched), and every
/// few seconds for pods that fit nowhere yet.
pub async fn run(store: Arc<dyn Store>) {
    loop {
        let rev = store.current_rev().await.unwrap_or(0);
        schedule_pending(&*store).await;
        let pods = store.watch("/registry/core/pods/", rev).await;
        let nodes = store.watch("/registry/core/nodes/", rev).await;
        let (Ok(mut pods), Ok(mut nodes)) = (pods, nodes) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        tokio::select! {
            _ = pods.recv() => {}
            _ = nodes.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // Let a burst of changes arrive before the next pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_rules::quantity::milli;

    #[test]
    fn quantities_and_fit() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(milli("1e3"), Some(1_000_000));
        assert_eq!(milli("bogus"), None);
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n", "labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "2"}}})).unwrap();
        let pod = |cpu: &str, extra: Value| {
            let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}], "tolerations": [{"key": "gpu", "operator": "Exists"}]}});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    p["spec"][k] = v.clone();
                }
            }
            PodInfo::new(p, 1).unwrap()
        };
        assert_eq!(misfit(&pod("500m", json!({})), &node, &[]), None);
        assert_eq!(
            misfit(&pod("2", json!({})), &node, &[]).unwrap(),
            "Insufficient cpu"
        );
        assert!(misfit(
            &pod("1m", json!({"nodeSelector": {"disk": "hdd"}})),
            &node,
            &[]
        )
        .unwrap()
        .contains("node affinity/selector"));
        let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}}});
        assert!(misfit(&pod("1m", affinity), &node, &[])
            .unwrap()
            .contains("node affinity/selector"));
        assert!(misfit(&pod("1m", json!({"tolerations": []})), &node, &[])
            .unwrap()
            .contains("untolerated taint {gpu: yes}"));
        let a = pod("600m", json!({}));
        assert_eq!(
            misfit(&pod("500m", json!({})), &node, &[&a]).unwrap(),
            "Insufficient cpu"
        );
        assert_eq!(
            misfit(&pod("1m", json!({})), &node, &[&a, &a]).unwrap(),
            "Too many pods"
        );
        // Requests and capacity compare exactly: 1000m of a 1-CPU node fits.
        assert_eq!(misfit(&pod("1000m", json!({})), &node, &[]), None);
    }
}
