//! The DaemonSet controller against the in-process apiserver, as
//! `system:kube-controller-manager`. Nodes are hollow (API objects only) and nothing binds the
//! pods, so a pod's node is the one its required node affinity pins it to; readiness is
//! written through pods/status, as a kubelet would.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    _c: Cluster,
    _loop: Task,
    nodes: Api<Node>,
    pods: Api<Pod>,
    dss: Api<DaemonSet>,
    admin: kube::Client,
}

impl Setup {
    async fn new() -> Setup {
        let c = Cluster::new().await;
        let admin = c.admin();
        let _loop = Task::spawn(run(c.client(CONTROLLER_MANAGER_USER, &[])));
        Setup {
            nodes: Api::all(admin.clone()),
            pods: Api::namespaced(admin.clone(), "default"),
            dss: Api::namespaced(admin.clone(), "default"),
            admin,
            _c: c,
            _loop,
        }
    }

    async fn node(&self, v: serde_json::Value) {
        let n: Node = serde_json::from_value(v).unwrap();
        self.nodes.create(&PostParams::default(), &n).await.unwrap();
    }

    async fn daemonset(&self, v: serde_json::Value) -> DaemonSet {
        let ds: DaemonSet = serde_json::from_value(v).unwrap();
        self.dss.create(&PostParams::default(), &ds).await.unwrap()
    }

    /// Live pods by the node they are pinned to, sorted by node.
    async fn placed(&self) -> Vec<(String, Pod)> {
        let mut v: Vec<(String, Pod)> = self
            .pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (target_node(&p).expect("pinned to a node"), p))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    async fn wait_nodes(&self, want: &[&str]) -> Vec<Pod> {
        eventually(
            &format!("daemon pods on exactly {want:?}"),
            WAIT,
            || async {
                let placed = self.placed().await;
                let nodes: Vec<&str> = placed.iter().map(|(n, _)| n.as_str()).collect();
                (nodes == want).then(|| placed.into_iter().map(|(_, p)| p).collect())
            },
        )
        .await
    }

    async fn make_ready(&self, pod: &str) {
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        self.pods
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
}

fn ds_spec(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut v = json!({"metadata": {"name": name}, "spec": {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    crate::api::patch::strategic_merge(&mut v, &extra);
    v
}

#[tokio::test]
async fn one_pod_per_eligible_node_following_nodes_as_they_come_go_and_change() {
    let s = Setup::new().await;
    s.node(json!({"metadata": {"name": "n1", "labels": {"pool": "a"}}}))
        .await;
    s.node(json!({"metadata": {"name": "n2", "labels": {"pool": "a"}}}))
        .await;
    s.node(json!({"metadata": {"name": "n3", "labels": {"pool": "b"}}}))
        .await;
    s.node(
        json!({"metadata": {"name": "tainted", "labels": {"pool": "a"}},
        "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
    )
    .await;
    s.daemonset(ds_spec(
        "agent",
        json!({"spec": {"template": {"spec": {"nodeSelector": {"pool": "a"}}}}}),
    ))
    .await;

    // n3 does not match the node selector; the tainted node is not tolerated.
    let pods = s.wait_nodes(&["n1", "n2"]).await;
    let pod = &pods[0];
    assert!(pod.name_any().starts_with("agent-") && pod.name_any().len() == "agent-".len() + 5);
    let spec = pod.spec.as_ref().unwrap();
    assert!(
        spec.node_name.is_none(),
        "placed by the scheduler, not by nodeName"
    );
    let terms = &spec
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    assert_eq!(terms.len(), 1);
    let field = &terms[0].match_fields.as_ref().unwrap()[0];
    assert_eq!(
        (field.key.as_str(), field.operator.as_str()),
        ("metadata.name", "In")
    );
    let tolerations = spec.tolerations.as_ref().unwrap();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unschedulable",
    ] {
        assert!(
            tolerations.iter().any(|t| t.key.as_deref() == Some(key)),
            "{key}"
        );
    }
    assert!(pod.labels().contains_key(HASH_LABEL));
    assert_eq!(pod.labels()["pod-template-generation"], "1");
    let owner = controller_of(pod).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("DaemonSet", "agent")
    );

    // Status counts the two eligible nodes; readiness follows the pods.
    s.make_ready(&pods[0].name_any()).await;
    eventually("status", WAIT, || async {
        let st = s.dss.get("agent").await.unwrap().status?;
        (st.desired_number_scheduled == 2
            && st.current_number_scheduled == 2
            && st.number_ready == 1
            && st.number_available == Some(1)
            && st.number_unavailable == Some(1)
            && st.updated_number_scheduled == Some(2)
            && st.observed_generation == Some(1))
        .then_some(())
    })
    .await;

    // A failed pod is replaced (after the per-node back-off, which starts at a second).
    s.pods
        .patch_status(
            &pods[1].name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    eventually("the failed pod replaced", WAIT, || async {
        let placed = s.placed().await;
        let on_n2: Vec<&Pod> = placed
            .iter()
            .filter(|(n, _)| n == "n2")
            .map(|(_, p)| p)
            .collect();
        (on_n2.len() == 1 && on_n2[0].name_any() != pods[1].name_any()).then_some(())
    })
    .await;

    // Tolerating the taint brings the tainted node in (a template change: a rollout).
    s.dss
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}}}})),
        )
        .await
        .unwrap();
    s.wait_nodes(&["n1", "n2", "tainted"]).await;

    // A new node gets a pod; a deleted one loses it; one relabelled out of the selector too.
    s.node(json!({"metadata": {"name": "n4", "labels": {"pool": "a"}}}))
        .await;
    s.wait_nodes(&["n1", "n2", "n4", "tainted"]).await;
    s.nodes
        .delete("n2", &DeleteParams::default())
        .await
        .unwrap();
    s.wait_nodes(&["n1", "n4", "tainted"]).await;
    s.nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pool": "b"}}})),
        )
        .await
        .unwrap();
    s.wait_nodes(&["n4", "tainted"]).await;

    // A surplus pod on a node is deleted.
    let extra = PodControl::pod_from_template(
        &s.dss.get("agent").await.unwrap(),
        &serde_json::from_value(json!({"metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}],
                "affinity": pin_to_node(None, "n4")}}))
        .unwrap(),
        "agent-extra".into(),
    );
    s.pods.create(&PostParams::default(), &extra).await.unwrap();
    s.wait_nodes(&["n4", "tainted"]).await;

    let events: Api<Event> = Api::namespaced(s.admin.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("agent"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SuccessfulCreate"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "SuccessfulDelete"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_rolling_update_replaces_pods_within_max_unavailable_and_keeps_history() {
    let s = Setup::new().await;
    for n in ["n1", "n2", "n3"] {
        s.node(json!({"metadata": {"name": n}})).await;
    }
    s.daemonset(ds_spec(
        "roll",
        json!({"spec": {"revisionHistoryLimit": 1}}),
    ))
    .await;
    for p in s.wait_nodes(&["n1", "n2", "n3"]).await {
        s.make_ready(&p.name_any()).await;
    }
    let first_hash = s.placed().await[0].1.labels()[HASH_LABEL].clone();
    let set_image = |image: &'static str| {
        let dss = s.dss.clone();
        async move {
            dss.patch(
                "roll",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})),
            )
            .await
            .unwrap();
        }
    };
    set_image("busybox:1.37").await;

    // One node at a time: the new pod appears only where the old one went, and the next old
    // pod goes only once the new one is ready (maxUnavailable 1).
    let mut new_hash = String::new();
    for done in 1..=3 {
        let (fresh, old) = eventually(&format!("{done} updated pods"), WAIT, || async {
            let placed = s.placed().await;
            let (fresh, old): (Vec<_>, Vec<_>) = placed
                .into_iter()
                .map(|(_, p)| p)
                .partition(|p| p.labels()[HASH_LABEL] != first_hash);
            (fresh.len() == done && fresh.len() + old.len() == 3).then_some((fresh, old))
        })
        .await;
        let not_ready: Vec<&Pod> = fresh
            .iter()
            .chain(&old)
            .filter(|p| !k8s_rules::pods::is_ready(p))
            .collect();
        assert_eq!(not_ready.len(), 1, "only the replacement is unavailable");
        new_hash = not_ready[0].labels()[HASH_LABEL].clone();
        s.make_ready(&not_ready[0].name_any()).await;
    }
    eventually("updated status", WAIT, || async {
        let st = s.dss.get("roll").await.unwrap().status?;
        (st.updated_number_scheduled == Some(3) && st.number_available == Some(3)).then_some(())
    })
    .await;

    // Revisions: the template's patch, numbered, owned; the old one kept (limit 1).
    let revisions: Api<ControllerRevision> = Api::namespaced(s.admin.clone(), "default");
    let mut list = revisions.list(&ListParams::default()).await.unwrap().items;
    list.sort_by_key(|r| r.revision);
    let names: Vec<String> = list.iter().map(|r| r.name_any()).collect();
    assert_eq!(
        names,
        [format!("roll-{first_hash}"), format!("roll-{new_hash}")]
    );
    assert_eq!(list[1].revision, 2);
    let data = crate::controllers::history::data(&list[1]);
    assert_eq!(data["spec"]["template"]["$patch"], "replace");
    assert_eq!(
        data["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.37"
    );

    // A third template: the first revision is beyond the limit once no pod is of it.
    set_image("busybox:1.38").await;
    eventually("history truncated", WAIT, || async {
        let list = revisions.list(&ListParams::default()).await.unwrap().items;
        let names: Vec<String> = list.iter().map(|r| r.name_any()).collect();
        (list.len() == 2 && !names.contains(&format!("roll-{first_hash}"))).then_some(())
    })
    .await;

    // `kubectl rollout undo --to-revision=2`: the revision's data patched onto the DaemonSet.
    s.dss
        .patch(
            "roll",
            &PatchParams::default(),
            &Patch::Strategic(data.clone()),
        )
        .await
        .unwrap();
    eventually("revision 2 renumbered as the newest", WAIT, || async {
        let r = revisions.get(&format!("roll-{new_hash}")).await.ok()?;
        (r.revision == 4).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_max_surge_the_new_pod_comes_up_beside_the_old_one() {
    let s = Setup::new().await;
    for n in ["n1", "n2"] {
        s.node(json!({"metadata": {"name": n}})).await;
    }
    s.daemonset(ds_spec(
        "surge",
        json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}),
    ))
    .await;
    let first = s.wait_nodes(&["n1", "n2"]).await;
    for p in &first {
        s.make_ready(&p.name_any()).await;
    }
    let old_hash = first[0].labels()[HASH_LABEL].clone();
    s.dss
        .patch(
            "surge",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}})),
        )
        .await
        .unwrap();
    // Node by node: a new pod beside the still-ready old one (never both nodes at once); the
    // old one goes once the new one is ready.
    for done in 1..=2 {
        let fresh = eventually(&format!("surge {done}"), WAIT, || async {
            let placed = s.placed().await;
            let fresh: Vec<Pod> = placed
                .iter()
                .filter(|(_, p)| {
                    p.labels()[HASH_LABEL] != old_hash && !k8s_rules::pods::is_ready(p)
                })
                .map(|(_, p)| p.clone())
                .collect();
            let old = placed
                .iter()
                .filter(|(_, p)| p.labels()[HASH_LABEL] == old_hash)
                .count();
            (fresh.len() == 1 && old == 3 - done).then_some(fresh)
        })
        .await;
        assert_eq!(s.placed().await.len(), 3, "one surge pod at a time");
        s.make_ready(&fresh[0].name_any()).await;
    }
    eventually("old pods gone", WAIT, || async {
        let placed = s.placed().await;
        (placed.len() == 2
            && placed
                .iter()
                .all(|(_, p)| p.labels()[HASH_LABEL] != old_hash))
        .then_some(())
    })
    .await;
}
