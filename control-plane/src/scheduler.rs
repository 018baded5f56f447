//! A minimal scheduler: pods with no node and `schedulerName: default-scheduler` are bound to the
//! node that fits them (not unschedulable, nodeSelector, taints tolerated, requests within
//! allocatable including the pods already there, pod count) with the most room left (least
//! allocated). Pods that fit nowhere get `PodScheduled=False`, reason `Unschedulable`, with
//! kube-scheduler's message, and are retried. Binding is a conditional write on the pod, so
//! several schedulers (one per apiserver sharing an etcd) never bind a pod twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{objects, resources};
use crate::store::{Store, StoreError};

/// A quantity in milli-units (`100m` → 100, `1` → 1000, `64Mi` → 64·2²⁰·1000).
pub fn milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with('e') || s.starts_with('E') => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some((n * mult * 1000.0).round() as i128)
}

/// The pod's effective requests (milli-cpu, milli-bytes): containers summed, init containers by
/// their maximum.
fn requests(pod: &Value, res: &str) -> i128 {
    let sum: i128 = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["resources"]["requests"][res].as_str().and_then(milli))
        .sum();
    let init = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["resources"]["requests"][res].as_str().and_then(milli))
        .max()
        .unwrap_or(0);
    sum.max(init)
}

fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            let key_ok =
                t["key"].is_null() && t["operator"] == "Exists" || t["key"] == taint["key"];
            let value_ok = t["operator"] == "Exists" || t["value"] == taint["value"];
            let effect_ok =
                t["effect"].is_null() || t["effect"] == "" || t["effect"] == taint["effect"];
            key_ok && value_ok && effect_ok
        })
}

/// Why `node` cannot take `pod` (kube-scheduler's reason texts), or None when it fits.
fn misfit(pod: &Value, node: &Value, on_node: &[&Value]) -> Option<String> {
    if node["spec"]["unschedulable"] == true {
        return Some("node(s) were unschedulable".into());
    }
    if let Some(sel) = pod["spec"]["nodeSelector"].as_object() {
        let labels = &node["metadata"]["labels"];
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    for t in node["spec"]["taints"].as_array().into_iter().flatten() {
        if matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")) && !tolerates(pod, t) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t["key"].as_str().unwrap_or_default(),
                t["value"].as_str().unwrap_or_default()
            ));
        }
    }
    let alloc = &node["status"]["allocatable"];
    let max_pods = alloc["pods"].as_str().and_then(milli).map(|m| m / 1000);
    if max_pods.is_some_and(|m| on_node.len() as i128 + 1 > m) {
        return Some("Too many pods".into());
    }
    for (res, name) in [("cpu", "cpu"), ("memory", "memory")] {
        let Some(cap) = alloc[res].as_str().and_then(milli) else {
            continue;
        };
        let used: i128 = on_node.iter().map(|p| requests(p, res)).sum();
        if used + requests(pod, res) > cap {
            return Some(format!("Insufficient {name}"));
        }
    }
    None
}

fn free_fraction(node: &Value, on_node: &[&Value], pod: &Value) -> f64 {
    let alloc = &node["status"]["allocatable"];
    let mut score = 0.0;
    for res in ["cpu", "memory"] {
        if let Some(cap) = alloc[res].as_str().and_then(milli).filter(|c| *c > 0) {
            let used: i128 =
                on_node.iter().map(|p| requests(p, res)).sum::<i128>() + requests(pod, res);
            score += 1.0 - used as f64 / cap as f64;
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
    let pods_r = &resources::PODS;
    let nodes_r = &resources::NODES;
    let nodes: Vec<Value> = all(store, nodes_r)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut pods = all(store, pods_r).await;
    let live = |p: &Value| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    for i in 0..pods.len() {
        let (pod, rev) = pods[i].clone();
        let pending = pod["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            && pod["spec"]["schedulerName"]
                .as_str()
                .unwrap_or("default-scheduler")
                == "default-scheduler"
            && pod["metadata"]["deletionTimestamp"].is_null();
        if !pending {
            continue;
        }
        let mut best: Option<(f64, &Value)> = None;
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let on: Vec<&Value> = pods
                .iter()
                .map(|(p, _)| p)
                .filter(|p| p["spec"]["nodeName"] == name && live(p))
                .collect();
            match misfit(&pod, node, &on) {
                Some(why) => *reasons.entry(why).or_default() += 1,
                None => {
                    let s = free_fraction(node, &on, &pod);
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, node));
                    }
                }
            }
        }
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = pods_r.key(Some(&ns), &name);
        let mut updated = pod.clone();
        let condition = match best {
            Some((_, node)) => {
                let node_name = node["metadata"]["name"].clone();
                updated["spec"]["nodeName"] = node_name.clone();
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
                let same = pod["status"]["conditions"]
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
            .update(&key, serde_json::to_vec(&updated).unwrap(), Some(rev))
            .await
        {
            Ok(kv) => pods[i] = (updated, kv.mod_rev),
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

    #[test]
    fn quantities_and_fit() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(milli("1e3"), Some(1_000_000));
        assert_eq!(milli("bogus"), None);
        let node = json!({"metadata": {"name": "n", "labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}, "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "2"}}});
        let pod = |cpu: &str, extra: Value| {
            let mut p = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": cpu}}}], "tolerations": [{"key": "gpu", "operator": "Exists"}]}});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    p["spec"][k] = v.clone();
                }
            }
            p
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
    }
}
