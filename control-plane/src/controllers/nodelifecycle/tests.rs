//! Hollow nodes: Nodes and Leases the test writes as a kubelet would, whose heartbeats it
//! stops and resumes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

const WITHIN: Duration = Duration::from_secs(20);

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// A kubelet's status: every condition it posts, Ready True, heartbeats now.
fn kubelet_status() -> serde_json::Value {
    let t = now();
    let cond = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "from the hollow kubelet",
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    json!({"status": {"conditions": [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        cond("Ready", "True", "KubeletReady"),
    ]}})
}

async fn hollow_node(c: &Cluster, name: &str) {
    let nodes: Api<Node> = Api::all(c.admin());
    let node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(kubelet_status()),
        )
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(c.admin(), LEASE_NAMESPACE);
    let lease = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}}))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
}

/// Renews the Lease of every node in `beating`, as kubelets do, every 100 ms.
fn heartbeats(c: &Cluster, beating: Arc<Mutex<HashSet<String>>>) -> Task {
    let leases: Api<Lease> = Api::namespaced(c.admin(), LEASE_NAMESPACE);
    Task::spawn(async move {
        loop {
            let names: Vec<String> = beating.lock().unwrap().iter().cloned().collect();
            for n in names {
                let renew = jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                let _ = leases
                    .patch(
                        &n,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"renewTime": renew}})),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn bound_pod(c: &Cluster, name: &str, node: &str, tolerations: serde_json::Value) -> Pod {
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": tolerations,
                 "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let t = now();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": t},
        ]}})),
    )
    .await
    .unwrap()
}

fn cond<'a>(node: &'a Node, t: &str) -> &'a k8s_openapi::api::core::v1::NodeCondition {
    taints::condition(node, t).unwrap_or_else(|| panic!("no {t} condition"))
}

fn pod_ready(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Short periods, but a grace of 30 heartbeats: a loaded machine (the whole suite in
/// parallel) can delay a few, and a healthy node judged dead puts the zone in full
/// disruption, where nothing is tainted.
fn fast() -> Config {
    Config {
        node_monitor_period: Duration::from_millis(100),
        node_monitor_grace_period: Duration::from_secs(3),
        node_startup_grace_period: Duration::from_secs(3),
        node_eviction_rate: 100.0,
        ..Config::default()
    }
}

#[test]
fn flags_are_checked() {
    assert!(Config::default().validate().is_ok());
    let bad = Config {
        unhealthy_zone_threshold: 1.5,
        ..Config::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .starts_with("--unhealthy-zone-threshold"));
    let bad = Config {
        node_eviction_rate: -1.0,
        ..Config::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .starts_with("--node-eviction-rate"));
    let bad = Config {
        node_monitor_period: Duration::ZERO,
        ..Config::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .starts_with("--node-monitor-period"));
}

#[tokio::test]
async fn a_silent_node_goes_unknown_is_tainted_its_pods_evicted_and_it_recovers() {
    let c = Cluster::new().await;
    hollow_node(&c, "alive").await;
    hollow_node(&c, "dead").await;
    let beating = Arc::new(Mutex::new(HashSet::from([
        "alive".to_string(),
        "dead".to_string(),
    ])));
    let _beats = heartbeats(&c, beating.clone());

    // DefaultTolerationSeconds gives "patient" 300 s for both taints.
    let quick = json!([{"key": taints::UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}]);
    bound_pod(&c, "quick", "dead", quick).await;
    let patient = bound_pod(&c, "patient", "dead", json!([])).await;
    let defaults: Vec<(String, Option<i64>)> = patient
        .spec
        .unwrap()
        .tolerations
        .unwrap()
        .into_iter()
        .map(|t| (t.key.unwrap_or_default(), t.toleration_seconds))
        .collect();
    assert!(
        defaults.contains(&(taints::UNREACHABLE.to_string(), Some(300))),
        "{defaults:?}"
    );
    assert!(
        defaults.contains(&(taints::NOT_READY.to_string(), Some(300))),
        "{defaults:?}"
    );
    bound_pod(&c, "forever", "dead", json!([{"operator": "Exists"}])).await;
    bound_pod(&c, "elsewhere", "alive", json!([])).await;

    let cm = c.client(CONTROLLER_MANAGER_USER, &[]);
    let _lifecycle = Task::spawn(run(cm.clone(), fast()));
    let _eviction = Task::spawn(tainteviction::run(cm));
    let nodes: Api<Node> = Api::all(c.admin());
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");

    // Healthy nodes are left alone for longer than the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for n in ["alive", "dead"] {
        let node = nodes.get(n).await.unwrap();
        assert_eq!(cond(&node, "Ready").status, "True", "{n}");
        assert!(
            taints::taints(&node).is_empty(),
            "{n}: {:?}",
            taints::taints(&node)
        );
    }

    // "dead" stops heartbeating.
    beating.lock().unwrap().remove("dead");
    let dead = eventually("dead tainted unreachable", WITHIN, || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("dead").await.ok()?;
            (taints::has(&n, taints::UNREACHABLE, "NoExecute")
                && taints::has(&n, taints::UNREACHABLE, "NoSchedule"))
            .then_some(n)
        }
    })
    .await;
    for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        let c = cond(&dead, t);
        assert_eq!(c.status, "Unknown", "{t}");
        assert_eq!(c.reason.as_deref(), Some("NodeStatusUnknown"), "{t}");
        assert_eq!(
            c.message.as_deref(),
            Some("Kubelet stopped posting node status."),
            "{t}"
        );
    }
    let no_execute = taints::taints(&dead)
        .iter()
        .find(|t| t.effect == "NoExecute")
        .unwrap();
    assert!(
        no_execute.time_added.is_some(),
        "NoExecute taints carry timeAdded"
    );

    // Its pods are not Ready; the one tolerating 1 s is evicted, the others stay.
    for p in ["quick", "patient", "forever"] {
        let ready = eventually(&format!("{p} not Ready"), WITHIN, || {
            let pods = pods.clone();
            async move {
                pods.get(p)
                    .await
                    .ok()
                    .and_then(|p| pod_ready(&p))
                    .filter(|s| s == "False")
            }
        })
        .await;
        assert_eq!(ready, "False");
    }
    let evicted = eventually("quick evicted", WITHIN, || {
        let pods = pods.clone();
        async move {
            pods.get("quick")
                .await
                .ok()
                .filter(|p| p.metadata.deletion_timestamp.is_some())
        }
    })
    .await;
    let target = evicted
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("a DisruptionTarget condition");
    assert_eq!(target.reason.as_deref(), Some("DeletionByTaintManager"));
    for p in ["patient", "forever", "elsewhere"] {
        let pod = pods.get(p).await.unwrap();
        assert!(pod.metadata.deletion_timestamp.is_none(), "{p} was deleted");
    }
    assert_eq!(
        pod_ready(&pods.get("elsewhere").await.unwrap()).as_deref(),
        Some("True")
    );
    let alive = nodes.get("alive").await.unwrap();
    assert_eq!(cond(&alive, "Ready").status, "True");
    assert!(taints::taints(&alive).is_empty());

    let events: Api<Event> = Api::namespaced(c.admin(), "default");
    let reasons: Vec<(String, String)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect();
    for want in [
        (
            "NodeNotReady".to_string(),
            "Node dead status is now: NodeNotReady".to_string(),
        ),
        ("NodeNotReady".to_string(), "Node is not ready".to_string()),
        (
            "TaintManagerEviction".to_string(),
            "Marking for deletion Pod default/quick".to_string(),
        ),
        (
            "RegisteredNode".to_string(),
            "Registered Node dead in Controller".to_string(),
        ),
    ] {
        assert!(reasons.contains(&want), "{want:?} not in {reasons:?}");
    }

    // The kubelet is back: its conditions stand, the taints go.
    nodes
        .patch_status(
            "dead",
            &PatchParams::default(),
            &Patch::Merge(kubelet_status()),
        )
        .await
        .unwrap();
    beating.lock().unwrap().insert("dead".to_string());
    let back = eventually("dead untainted", WITHIN, || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("dead").await.ok()?;
            taints::taints(&n).is_empty().then_some(n)
        }
    })
    .await;
    assert_eq!(cond(&back, "Ready").status, "True");
    assert_eq!(cond(&back, "Ready").reason.as_deref(), Some("KubeletReady"));
    assert!(pods
        .get("patient")
        .await
        .unwrap()
        .metadata
        .deletion_timestamp
        .is_none());
}
