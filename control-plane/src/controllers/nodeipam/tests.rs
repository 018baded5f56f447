use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

fn node(name: &str, pod_cidr: Option<&str>) -> Node {
    let spec = match pod_cidr {
        Some(c) => json!({"podCIDR": c, "podCIDRs": [c]}),
        None => json!({}),
    };
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn cidrs_of(nodes: &Api<Node>, name: &str) -> Option<Vec<String>> {
    let n = nodes.get(name).await.ok()?;
    let spec = n.spec?;
    let list = spec.pod_cidrs.filter(|l| !l.is_empty())?;
    assert_eq!(
        spec.pod_cidr.as_deref(),
        Some(list[0].as_str()),
        "podCIDR is podCIDRs[0]"
    );
    Some(list)
}

#[test]
fn flags_make_cidr_sets_as_kube_controller_manager() {
    let cfg = |cidr: &str, m: Option<u8>, m4: Option<u8>, m6: Option<u8>| Config {
        cluster_cidrs: parse_cluster_cidr(cidr).unwrap(),
        node_cidr_mask_size: m,
        node_cidr_mask_size_ipv4: m4,
        node_cidr_mask_size_ipv6: m6,
    };
    assert_eq!(Config::default().mask_sizes().unwrap(), [24]);
    assert_eq!(
        cfg("10.244.0.0/16,fd00:10:244::/56", None, Some(26), None)
            .mask_sizes()
            .unwrap(),
        [26, 64]
    );
    assert_eq!(
        cfg("10.0.0.0/8", Some(20), None, None)
            .mask_sizes()
            .unwrap(),
        [20]
    );
    let err = cfg("10.244.0.0/16,fd00::/56", Some(24), None, None)
        .cidr_sets()
        .unwrap_err();
    assert_eq!(
        err,
        "usage of --node-cidr-mask-size is not allowed with dual-stack clusters"
    );
    let err = cfg("10.244.0.0/16,10.245.0.0/16", None, None, None)
        .cidr_sets()
        .unwrap_err();
    assert!(err.contains("different IP families"), "{err}");
    let err = cfg("10.0.0.0/8", None, Some(30), None)
        .cidr_sets()
        .unwrap_err();
    assert!(err.contains("too big"), "{err}");
    let err = parse_cluster_cidr("10.244.0.0/16,nonsense").unwrap_err();
    assert!(err.starts_with("--cluster-cidr: \"nonsense\""), "{err}");
}

#[tokio::test]
async fn nodes_get_cidrs_kept_released_and_exhaustion_is_reported() {
    let c = Cluster::new().await;
    let nodes: Api<Node> = Api::all(c.admin());
    let pp = PostParams::default();
    // Already there before the controller starts: keeps its CIDR, which is marked used.
    nodes
        .create(&pp, &node("old", Some("10.244.1.0/24")))
        .await
        .unwrap();
    let cfg = Config {
        cluster_cidrs: parse_cluster_cidr("10.244.0.0/23").unwrap(),
        ..Config::default()
    };
    let _loop = Task::spawn(run(c.client(CONTROLLER_MANAGER_USER, &[]), cfg));

    nodes.create(&pp, &node("a", None)).await.unwrap();
    let a = eventually("node a's CIDR", Duration::from_secs(10), || {
        cidrs_of(&nodes, "a")
    })
    .await;
    assert_eq!(a, ["10.244.0.0/24"]);
    assert_eq!(cidrs_of(&nodes, "old").await.unwrap(), ["10.244.1.0/24"]);

    // The range is used up: b waits, with upstream's event.
    nodes.create(&pp, &node("b", None)).await.unwrap();
    let events: Api<Event> = Api::namespaced(c.admin(), "default");
    let ev = eventually("a CIDRNotAvailable event", Duration::from_secs(10), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("CIDRNotAvailable"))
        }
    })
    .await;
    assert_eq!(
        ev.message.as_deref(),
        Some("Node b status is now: CIDRNotAvailable")
    );
    assert_eq!(ev.involved_object.kind.as_deref(), Some("Node"));
    assert_eq!(ev.involved_object.name.as_deref(), Some("b"));
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert_eq!(cidrs_of(&nodes, "b").await, None);

    // old goes: its CIDR is released and b gets it.
    nodes.delete("old", &DeleteParams::default()).await.unwrap();
    let b = eventually("node b's CIDR", Duration::from_secs(15), || {
        cidrs_of(&nodes, "b")
    })
    .await;
    assert_eq!(b, ["10.244.1.0/24"]);
}

#[tokio::test]
async fn dual_stack_nodes_get_one_cidr_per_family() {
    let c = Cluster::new().await;
    let nodes: Api<Node> = Api::all(c.admin());
    let cfg = Config {
        cluster_cidrs: parse_cluster_cidr("10.244.0.0/16,fd00:10:244::/56").unwrap(),
        ..Config::default()
    };
    let _loop = Task::spawn(run(c.client(CONTROLLER_MANAGER_USER, &[]), cfg));
    nodes
        .create(&PostParams::default(), &node("n1", None))
        .await
        .unwrap();
    let got = eventually("n1's CIDRs", Duration::from_secs(10), || {
        cidrs_of(&nodes, "n1")
    })
    .await;
    assert_eq!(got, ["10.244.0.0/24", "fd00:10:244::/64"]);
}

#[tokio::test]
async fn pod_cidrs_cannot_change_once_set() {
    let c = Cluster::new().await;
    let nodes: Api<Node> = Api::all(c.admin());
    nodes
        .create(&PostParams::default(), &node("n", None))
        .await
        .unwrap();
    let set = |cidr: &'static str| {
        let nodes = nodes.clone();
        async move {
            nodes
                .patch(
                    "n",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
                )
                .await
        }
    };
    set("10.244.3.0/24").await.expect("from unset to a CIDR");
    set("10.244.3.0/24").await.expect("the same again");
    match set("10.244.4.0/24").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .contains("node updates may not change podCIDR except from \"\" to valid"),
                "{}",
                s.message
            );
        }
        other => panic!("changed podCIDR: {other:?}"),
    }
}
