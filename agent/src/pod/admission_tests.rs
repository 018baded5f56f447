use super::*;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Toleration,
};

#[test]
fn refusals_read_as_the_kubelets() {
    let r = Refusal::OutOfResource {
        resource: Resource::Memory,
        requested: 2,
        used: 3,
        capacity: 4,
    };
    assert_eq!(r.reason(), "OutOfmemory");
    assert_eq!(
        r.message(),
        "Node didn't have enough resource: memory, requested: 2, used: 3, capacity: 4"
    );
    assert_eq!(
        r.status_message(),
        "Pod was rejected: Node didn't have enough resource: memory, requested: 2, used: 3, capacity: 4"
    );
    let a = Refusal::NodeAffinity;
    assert_eq!(
        (a.reason(), a.message().as_str(), a.status_message().as_str()),
        (
            "NodeAffinity",
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector",
            "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
        )
    );
    let t = Refusal::TaintToleration;
    assert_eq!(
        (t.reason(), t.status_message().as_str()),
        (
            "TaintToleration",
            "Pod was rejected: Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate"
        )
    );
    let s = Refusal::SysctlForbidden(SysctlProblem::NotNamespaced("kernel.pid_max".into()));
    assert_eq!(
        (s.reason(), s.status_message().as_str()),
        (
            "SysctlForbidden",
            "Pod was rejected: forbidden sysctl: \"kernel.pid_max\" not namespaced"
        )
    );
    assert!(s.at_admission());
    // An eviction is not a refusal at admission: its message stands alone.
    let e = Refusal::Evicted("The node was low on resource: memory.".into());
    assert_eq!(e.status_message(), "The node was low on resource: memory.");
    assert!(!e.at_admission());
}

fn view(labels: &[(&str, &str)], taints: &[(&str, &str)]) -> NodeView {
    NodeView {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        taints: taints
            .iter()
            .map(|(k, e)| Taint {
                key: k.to_string(),
                value: Some("v".into()),
                effect: e.to_string(),
                ..Default::default()
            })
            .collect(),
    }
}

/// A pod whose required node affinity wants `key` In `values`, with `tolerations`.
fn pod(key: &str, values: &[&str], tolerations: Vec<Toleration>) -> Pod {
    Pod {
        spec: Some(PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: key.into(),
                                operator: "In".into(),
                                values: Some(values.iter().map(|v| v.to_string()).collect()),
                            }]),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tolerations: Some(tolerations),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn placement_goes_by_the_nodes_labels_and_noexecute_taints() {
    let zone = "topology.kubernetes.io/zone";
    let want_zone_2 = pod(zone, &["zone-2"], vec![]);
    // The label as set through the API admits; another value or none refuses.
    let n2 = view(&[(zone, "zone-2")], &[]);
    assert_eq!(place(&want_zone_2, "n2", &n2).verdict(), Ok(()));
    let n1 = view(&[(zone, "zone-1")], &[]);
    assert_eq!(
        place(&want_zone_2, "n1", &n1).verdict(),
        Err(Refusal::NodeAffinity)
    );
    assert_eq!(
        place(&want_zone_2, "n2", &view(&[], &[])).verdict(),
        Err(Refusal::NodeAffinity)
    );
    let selects = Pod {
        spec: Some(PodSpec {
            node_selector: Some(BTreeMap::from([(zone.to_string(), "zone-2".to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(place(&selects, "n2", &n2).verdict(), Ok(()));
    assert_eq!(
        place(&selects, "n1", &n1).verdict(),
        Err(Refusal::NodeAffinity)
    );

    // Only NoExecute taints count, and a toleration lets the pod in.
    let anywhere = pod(zone, &["zone-2"], vec![]);
    let no_schedule = view(&[(zone, "zone-2")], &[("dedicated", "NoSchedule")]);
    assert_eq!(place(&anywhere, "n2", &no_schedule).verdict(), Ok(()));
    let no_execute = view(&[(zone, "zone-2")], &[("dedicated", "NoExecute")]);
    let found = place(&anywhere, "n2", &no_execute);
    assert_eq!(found.untolerated.map(|t| t.key.as_str()), Some("dedicated"));
    assert_eq!(found.verdict(), Err(Refusal::TaintToleration));
    let tolerates = pod(
        zone,
        &["zone-2"],
        vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        }],
    );
    assert_eq!(place(&tolerates, "n2", &no_execute).verdict(), Ok(()));
    // Static pods are not checked against taints (node affinity still counts).
    let mut static_pod = anywhere.clone();
    static_pod.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/config.source".to_string(),
        "file".to_string(),
    )]));
    assert_eq!(place(&static_pod, "n2", &no_execute).verdict(), Ok(()));
    assert_eq!(
        place(&static_pod, "n1", &view(&[], &[("dedicated", "NoExecute")])).verdict(),
        Err(Refusal::NodeAffinity)
    );
    // Both failing: node affinity is the reason, as the kubelet's first predicate.
    let tainted = view(&[], &[("dedicated", "NoExecute")]);
    let both = place(&anywhere, "n1", &tainted);
    assert!(!both.affinity && both.untolerated.is_some());
    assert_eq!(both.verdict(), Err(Refusal::NodeAffinity));
}

/// Admission on node `n2` registered with `--node-labels pool=local` and
/// `--register-with-taints local=x:NoExecute`.
fn admission(node: Arc<ApiNode>) -> Admission {
    let cfg = crate::config::Config::resolve(crate::config::Settings {
        node_name: Some("n2".into()),
        node_labels: Some("pool=local".into()),
        register_with_taints: Some("local=x:NoExecute".into()),
        ..Default::default()
    })
    .expect("a test config");
    Admission::new(Arc::new(NodeInfo::for_tests(cfg)), node)
}

fn api_node(labels: serde_json::Value, taints: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n2", "labels": labels}, "spec": {"taints": taints}})
}

#[tokio::test]
async fn a_standalone_node_places_by_its_local_labels_and_taints() {
    let a = admission(Arc::default());
    let tolerates_local = vec![Toleration {
        key: Some("local".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }];
    assert_eq!(
        a.placement(&pod("pool", &["local"], tolerates_local.clone()))
            .await,
        Ok(())
    );
    assert_eq!(
        a.placement(&pod("kubernetes.io/hostname", &["n2"], tolerates_local))
            .await,
        Ok(()),
        "the well-known labels"
    );
    assert_eq!(
        a.placement(&pod("pool", &["blue"], vec![])).await,
        Err(Refusal::NodeAffinity)
    );
    assert_eq!(
        a.placement(&pod("pool", &["local"], vec![])).await,
        Err(Refusal::TaintToleration)
    );
}

#[tokio::test]
async fn a_cluster_node_places_by_its_node_as_the_api_has_it() {
    let node = Arc::new(ApiNode::default());
    let a = admission(node.clone());
    // What the watch saw: labelled blue through the API, the registered label and taint
    // since removed through it.
    let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(api_node(
        serde_json::json!({"pool": "blue", "kubernetes.io/hostname": "n2"}),
        serde_json::json!([]),
    ))
    .unwrap();
    node.set(Some(&n));
    assert_eq!(a.placement(&pod("pool", &["blue"], vec![])).await, Ok(()));
    assert_eq!(
        a.placement(&pod("pool", &["local"], vec![])).await,
        Err(Refusal::NodeAffinity)
    );
    // A NoExecute taint set through the API.
    let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(api_node(
        serde_json::json!({"pool": "blue"}),
        serde_json::json!([{"key": "dedicated", "value": "db", "effect": "NoExecute"}]),
    ))
    .unwrap();
    node.set(Some(&n));
    assert_eq!(
        a.placement(&pod("pool", &["blue"], vec![])).await,
        Err(Refusal::TaintToleration)
    );
}

#[tokio::test]
async fn a_node_affinity_failure_reads_the_node_again() {
    use crate::pod::apinode::testing::Api2;
    let api = Api2::new(serde_json::json!({"pool": "blue"}), serde_json::json!([])).await;
    let (_tx, client) = tokio::sync::watch::channel(api.client());
    let node = Arc::new(ApiNode::default());
    node.connect("n2", client);
    let a = admission(node.clone());
    // The watch has not seen the Node yet (the local labels and taint do not count), or
    // not its label: the fresh read has it.
    assert_eq!(a.placement(&pod("pool", &["blue"], vec![])).await, Ok(()));
    let stale: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(api_node(serde_json::json!({}), serde_json::json!([]))).unwrap();
    node.set(Some(&stale));
    assert_eq!(a.placement(&pod("pool", &["blue"], vec![])).await, Ok(()));
    assert_eq!(
        a.placement(&pod("pool", &["green"], vec![])).await,
        Err(Refusal::NodeAffinity),
        "matching neither"
    );
    // A taint the watch's copy has refuses without a read, even with the label matching.
    let current: k8s_openapi::api::core::v1::Node = serde_json::from_value(api_node(
        serde_json::json!({"pool": "blue"}),
        serde_json::json!([{"key": "dedicated", "effect": "NoExecute"}]),
    ))
    .unwrap();
    node.set(Some(&current));
    assert_eq!(
        a.placement(&pod("pool", &["blue"], vec![])).await,
        Err(Refusal::TaintToleration)
    );
    // Without an answer, the watch's copy decides.
    node.set(Some(&stale));
    api.link.cut();
    assert_eq!(
        a.placement(&pod("pool", &["blue"], vec![])).await,
        Err(Refusal::NodeAffinity)
    );
}
