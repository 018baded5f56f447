//! The scheduler's loop against the in-process apiserver, as `system:kube-scheduler`: its
//! RBAC role is all it has, so pods can only be placed through `pods/binding`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use crate::reconcile::rbac::SCHEDULER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

/// A node with `cpu` CPUs, 4 GiB and room for 110 pods; `extra` is merged into it.
fn node(name: &str, cpu: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        },
    });
    merge(&mut n, extra);
    serde_json::from_value(n).expect("a Node")
}

/// A pod asking for `cpu`; `spec` is merged into its spec.
fn pod(name: &str, cpu: &str, spec: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": cpu}}}]},
    });
    merge(&mut p["spec"], spec);
    serde_json::from_value(p).expect("a Pod")
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

struct Setup {
    c: Cluster,
    nodes: Api<Node>,
    pods: Api<Pod>,
}

impl Setup {
    async fn new() -> Self {
        let c = Cluster::new().await;
        let (nodes, pods) = (Api::all(c.admin()), Api::namespaced(c.admin(), "default"));
        Setup { c, nodes, pods }
    }

    fn start_scheduler(&self) -> Task {
        Task::spawn(super::run(self.c.client(SCHEDULER_USER, &[])))
    }

    async fn add_nodes(&self, nodes: &[Node]) {
        for n in nodes {
            self.nodes.create(&PostParams::default(), n).await.unwrap();
        }
    }

    async fn add_pods(&self, pods: &[Pod]) {
        for p in pods {
            self.pods.create(&PostParams::default(), p).await.unwrap();
        }
    }

    /// Where `name` is bound, once it is, within `within`.
    async fn bound(&self, name: &str, within: Duration) -> String {
        eventually(&format!("{name} to be bound"), within, || async {
            let p = self.pods.get(name).await.unwrap();
            super::node_name(&p).map(str::to_owned)
        })
        .await
    }

    /// The PodScheduled condition, once the scheduler has written one.
    async fn scheduled(&self, name: &str) -> (String, Option<String>, Option<String>) {
        eventually(&format!("{name}'s PodScheduled"), WAIT, || async {
            let p = self.pods.get(name).await.unwrap();
            scheduled_condition(&p)
        })
        .await
    }
}

fn scheduled_condition(p: &Pod) -> Option<(String, Option<String>, Option<String>)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_pod_goes_to_the_least_allocated_node_that_fits() {
    let s = Setup::new().await;
    let ssd = json!({"metadata": {"labels": {"disk": "ssd"}}});
    s.add_nodes(&[
        node("busy", "3", ssd.clone()),
        node("idle", "2", ssd.clone()),
        node("hdd", "8", json!({"metadata": {"labels": {"disk": "hdd"}}})),
        node(
            "tainted",
            "8",
            json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ),
        node(
            "cordoned",
            "8",
            json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"unschedulable": true}}),
        ),
    ])
    .await;
    // "busy" has more CPU than "idle" but less of it free once this pod's two are counted.
    s.add_pods(&[pod("running", "2", json!({"nodeName": "busy"}))])
        .await;
    let _scheduler = s.start_scheduler();
    s.add_pods(&[pod("web", "500m", json!({"nodeSelector": {"disk": "ssd"}}))])
        .await;
    assert_eq!(s.bound("web", WAIT).await, "idle");
    let (status, reason, _) = s.scheduled("web").await;
    assert_eq!((status.as_str(), reason), ("True", None));
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_is_unschedulable_until_a_node_comes_or_changes() {
    let s = Setup::new().await;
    s.add_nodes(&[
        node("small", "1", json!({})),
        node("cordoned", "8", json!({"spec": {"unschedulable": true}})),
    ])
    .await;
    let _scheduler = s.start_scheduler();
    s.add_pods(&[pod("huge", "4", json!({}))]).await;
    let unschedulable = |message: &'static str| {
        (
            "False".to_string(),
            Some("Unschedulable".to_string()),
            Some(message.to_string()),
        )
    };
    assert_eq!(
        s.scheduled("huge").await,
        unschedulable("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) were unschedulable. preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling.")
    );
    assert!(super::node_name(&s.pods.get("huge").await.unwrap()).is_none());

    // Unschedulable pods are retried every 5 s: placed sooner, they were placed because
    // the node came.
    let soon = Duration::from_secs(4);
    s.add_nodes(&[node("big", "8", json!({}))]).await;
    assert_eq!(s.bound("huge", soon).await, "big");

    s.add_pods(&[pod("huger", "6", json!({}))]).await;
    let marked = eventually("huger to be unschedulable", WAIT, || async {
        scheduled_condition(&s.pods.get("huger").await.unwrap()).filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(
        marked,
        unschedulable("0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.")
    );
    s.nodes
        .patch(
            "cordoned",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .unwrap();
    assert_eq!(s.bound("huger", soon).await, "cordoned");
    let (status, _, _) = s.scheduled("huger").await;
    assert_eq!(status, "True");
}

#[tokio::test]
async fn a_pod_in_a_cluster_without_nodes_waits_for_the_first() {
    let s = Setup::new().await;
    let _scheduler = s.start_scheduler();
    s.add_pods(&[pod("early", "100m", json!({}))]).await;
    assert_eq!(
        s.scheduled("early").await,
        (
            "False".to_string(),
            Some("Unschedulable".to_string()),
            Some("no nodes available to schedule pods".to_string())
        )
    );
    // A node stating only its capacity has that much allocatable (the apiserver's default).
    let mut first = node("first", "1", json!({}));
    first.status.as_mut().unwrap().allocatable = None;
    s.add_nodes(&[first]).await;
    let stored = s.nodes.get("first").await.unwrap().status.unwrap();
    assert_eq!(stored.allocatable, stored.capacity);
    assert_eq!(s.bound("early", Duration::from_secs(4)).await, "first");
}

/// Pods pending together are placed one after another, each counting the ones placed before
/// it even when the pod cache does not show those bound yet.
#[tokio::test]
async fn pods_placed_together_never_overcommit_a_node() {
    let s = Setup::new().await;
    s.add_nodes(&[node("n1", "1", json!({})), node("n2", "1", json!({}))])
        .await;
    let names = ["p1", "p2", "p3", "p4", "p5"];
    let pods: Vec<Pod> = names.iter().map(|n| pod(n, "600m", json!({}))).collect();
    s.add_pods(&pods).await;
    let _scheduler = s.start_scheduler();
    let settled = eventually("every pod bound or unschedulable", WAIT, || async {
        let mut out = Vec::new();
        for n in names {
            let p = s.pods.get(n).await.unwrap();
            match (super::node_name(&p), scheduled_condition(&p)) {
                (Some(node), _) => out.push(Some(node.to_string())),
                (None, Some((st, Some(reason), _)))
                    if st == "False" && reason == "Unschedulable" =>
                {
                    out.push(None)
                }
                _ => return None,
            }
        }
        Some(out)
    })
    .await;
    let on = |node: &str| {
        settled
            .iter()
            .filter(|n| n.as_deref() == Some(node))
            .count()
    };
    assert_eq!((on("n1"), on("n2")), (1, 1), "{settled:?}");
    for n in names {
        let p = s.pods.get(n).await.unwrap();
        if super::node_name(&p).is_none() {
            let (_, _, message) = scheduled_condition(&p).unwrap();
            assert_eq!(
                message.as_deref(),
                Some("0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.")
            );
        }
    }
}

#[tokio::test]
async fn a_gated_pod_waits_untouched_until_its_gates_are_removed() {
    let s = Setup::new().await;
    s.add_nodes(&[node("n1", "2", json!({}))]).await;
    let _scheduler = s.start_scheduler();
    let gated = pod(
        "gated",
        "100m",
        json!({"schedulingGates": [{"name": "example.com/quota"}, {"name": "example.com/arch"}]}),
    );
    s.add_pods(&[gated]).await;
    // The apiserver says why it waits; the scheduler writes nothing.
    let p = s.pods.get("gated").await.unwrap();
    let (status, reason, message) = scheduled_condition(&p).expect("a PodScheduled condition");
    assert_eq!(
        (status.as_str(), reason.as_deref(), message.as_deref()),
        (
            "False",
            Some("SchedulingGated"),
            Some("Scheduling is blocked due to non-empty scheduling gates")
        )
    );
    // An ungated pod created after it is bound, so the scheduler has seen both.
    s.add_pods(&[pod("plain", "100m", json!({}))]).await;
    s.bound("plain", WAIT).await;
    assert_eq!(super::node_name(&s.pods.get("gated").await.unwrap()), None);

    // Gates may only go: adding one is refused with upstream's message.
    let add = json!({"spec": {"schedulingGates": [{"name": "example.com/quota"}, {"name": "example.com/arch"}, {"name": "x"}]}});
    let err = s
        .pods
        .patch("gated", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .unwrap_err();
    let kube::Error::Api(e) = err else {
        panic!("{err}")
    };
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.schedulingGates[2].name: Forbidden: only deletion is allowed, but found new scheduling gate 'x'"),
        "{}",
        e.message
    );
    // One gate left: still waiting; none: scheduled.
    let one = json!({"spec": {"schedulingGates": [{"name": "example.com/arch"}]}});
    s.pods
        .patch("gated", &PatchParams::default(), &Patch::Merge(&one))
        .await
        .unwrap();
    let none = json!({"spec": {"schedulingGates": null}});
    s.pods
        .patch("gated", &PatchParams::default(), &Patch::Merge(&none))
        .await
        .unwrap();
    assert_eq!(s.bound("gated", WAIT).await, "n1");

    // A pod may not name a node while gated.
    let bad = pod(
        "bad",
        "1m",
        json!({"nodeName": "n1", "schedulingGates": [{"name": "g"}]}),
    );
    let err = s
        .pods
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "spec.nodeName: Forbidden: cannot be set until all schedulingGates have been cleared"
        ),
        "{err}"
    );
}

/// A higher-priority pod that fits nowhere preempts: the victim is marked DisruptionTarget,
/// deleted gracefully and told why; the preemptor is nominated to the node and placed there
/// once the victim is gone.
#[tokio::test]
async fn a_higher_priority_pod_preempts_a_lower_one() {
    let s = Setup::new().await;
    s.add_nodes(&[node("n1", "1", json!({}))]).await;
    let _scheduler = s.start_scheduler();
    s.add_pods(&[pod("low", "800m", json!({"priority": 0}))])
        .await;
    assert_eq!(s.bound("low", WAIT).await, "n1");
    s.add_pods(&[pod("high", "800m", json!({"priority": 100}))])
        .await;
    let victim = eventually("the victim to be going", WAIT, || async {
        let p = s.pods.get("low").await.unwrap();
        p.metadata.deletion_timestamp.is_some().then_some(p)
    })
    .await;
    let disruption = victim
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget").cloned())
        .expect("a DisruptionTarget condition");
    assert_eq!(
        (
            disruption.status.as_str(),
            disruption.reason.as_deref(),
            disruption.message.as_deref()
        ),
        (
            "True",
            Some("PreemptionByScheduler"),
            Some("default-scheduler: preempting to accommodate a higher priority pod")
        )
    );
    let high = eventually("the preemptor nominated", WAIT, || async {
        let p = s.pods.get("high").await.unwrap();
        let n = p
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone());
        n.map(|n| (n, p))
    })
    .await;
    assert_eq!(high.0, "n1");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(s.c.admin(), "default");
    let preempted = eventually("the Preempted event", WAIT, || async {
        let list = events.list(&Default::default()).await.unwrap().items;
        list.into_iter()
            .find(|e| e.reason.as_deref() == Some("Preempted"))
    })
    .await;
    let uid = high.1.metadata.uid.clone().unwrap();
    assert_eq!(
        preempted.message.as_deref(),
        Some(format!("Preempted by pod {uid} on node n1").as_str())
    );
    assert_eq!(preempted.involved_object.name.as_deref(), Some("low"));
    // No kubelet here: finish the victim's graceful deletion as one would.
    s.pods
        .delete("low", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(s.bound("high", WAIT).await, "n1");
    // A pod that may not preempt says so.
    s.add_pods(&[pod(
        "polite",
        "800m",
        json!({"priority": 1000, "preemptionPolicy": "Never"}),
    )])
    .await;
    let (_, _, message) = s.scheduled("polite").await;
    assert_eq!(
        message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.")
    );
}

/// Required anti-affinity spreads replicas one per node; the one too many waits with
/// kube-scheduler's message.
#[tokio::test]
async fn required_anti_affinity_places_one_replica_per_node() {
    let s = Setup::new().await;
    s.add_nodes(&[
        node("n1", "4", json!({})),
        node("n2", "4", json!({})),
        node("n3", "4", json!({})),
    ])
    .await;
    let _scheduler = s.start_scheduler();
    let replica = |name: &str| {
        let mut p = pod(
            name,
            "100m",
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        );
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p
    };
    s.add_pods(&[replica("w1"), replica("w2"), replica("w3")])
        .await;
    let mut nodes = Vec::new();
    for n in ["w1", "w2", "w3"] {
        nodes.push(s.bound(n, WAIT).await);
    }
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    s.add_pods(&[replica("w4")]).await;
    let (status, reason, message) = s.scheduled("w4").await;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("False", Some("Unschedulable"))
    );
    assert_eq!(
        message.as_deref(),
        Some("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.")
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(s.c.admin(), "default");
    let scheduled = eventually("Scheduled events", WAIT, || async {
        let list = events.list(&Default::default()).await.unwrap().items;
        let n = list
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Scheduled"))
            .count();
        (n == 3).then_some(list)
    })
    .await;
    let w1 = scheduled
        .iter()
        .find(|e| {
            e.involved_object.name.as_deref() == Some("w1")
                && e.reason.as_deref() == Some("Scheduled")
        })
        .unwrap();
    assert_eq!(
        w1.message.as_deref(),
        Some(
            format!(
                "Successfully assigned default/w1 to {}",
                s.bound("w1", WAIT).await
            )
            .as_str()
        )
    );
    assert_eq!(
        w1.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    // Removing a replica makes room: the waiting one is placed on the node it leaves.
    let gone = s.bound("w2", WAIT).await;
    s.pods
        .delete("w2", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(s.bound("w4", WAIT).await, gone);
}

/// Profiles are chosen by `schedulerName`; pods for schedulers with no profile are left to
/// theirs.
#[tokio::test]
async fn profiles_are_picked_by_scheduler_name() {
    let s = Setup::new().await;
    s.add_nodes(&[node("small", "2", json!({})), node("big", "8", json!({}))])
        .await;
    let cfg = super::config::SchedulerConfig::parse(
        "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packing
  plugins:
    score:
      disabled:
      - name: '*'
      enabled:
      - name: NodeResourcesFit
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
",
    )
    .unwrap();
    let _scheduler = Task::spawn(super::run_with(
        s.c.client(SCHEDULER_USER, &[]),
        std::sync::Arc::new(cfg),
    ));
    // The other scheduler's pod comes first: had it been taken, it would be placed before
    // the two after it.
    s.add_pods(&[
        pod("theirs", "1", json!({"schedulerName": "someone-else"})),
        pod("spread", "1", json!({})),
        pod("packed", "1", json!({"schedulerName": "bin-packing"})),
    ])
    .await;
    assert_eq!(s.bound("spread", WAIT).await, "big");
    assert_eq!(s.bound("packed", WAIT).await, "small");
    let theirs = s.pods.get("theirs").await.unwrap();
    assert!(super::node_name(&theirs).is_none());
    assert!(scheduled_condition(&theirs).is_none());
}
