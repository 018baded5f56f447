//! The service load balancer controller against the in-process apiserver.

use std::time::Duration;

use kube::api::PostParams;
use serde_json::json;

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

async fn node(api: &Api<Node>, name: &str, ip: &str, ready: bool, labels: Value) {
    let n: Node =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    let mut made = api.create(&PostParams::default(), &n).await.unwrap();
    made.status = Some(
        serde_json::from_value(json!({
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}))
        .unwrap(),
    );
    api.replace_status(name, &PostParams::default(), &made)
        .await
        .unwrap();
}

fn ingress(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

#[tokio::test]
async fn load_balancers_get_the_ready_nodes_addresses() {
    let c = Cluster::new().await;
    let nodes: Api<Node> = Api::all(c.admin());
    let svcs: Api<Service> = Api::namespaced(c.admin(), "default");
    let _lb = Task::spawn(run(c.client(CONTROLLER_MANAGER_USER, &[])));
    node(&nodes, "b", "10.200.1.12", true, json!({})).await;
    node(&nodes, "a", "10.200.1.11", true, json!({})).await;
    node(&nodes, "down", "10.200.1.13", false, json!({})).await;
    node(&nodes, "out", "10.200.1.14", true, json!({EXCLUDE: ""})).await;
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let classed: Service = serde_json::from_value(json!({"metadata": {"name": "other"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb", "ports": [{"port": 80}]}}))
    .unwrap();
    svcs.create(&PostParams::default(), &classed).await.unwrap();
    eventually("the ingress", Duration::from_secs(15), || async {
        let s = svcs.get("lb").await.unwrap();
        (ingress(&s) == ["10.200.1.11", "10.200.1.12"]).then_some(())
    })
    .await;
    // A node becoming Ready joins.
    node(&nodes, "late", "10.200.1.15", true, json!({})).await;
    eventually(
        "the new node in the ingress",
        Duration::from_secs(15),
        || async { (ingress(&svcs.get("lb").await.unwrap()).len() == 3).then_some(()) },
    )
    .await;
    // Another implementation's service is left alone; a service that is no longer a load
    // balancer loses its ingress.
    assert!(ingress(&svcs.get("other").await.unwrap()).is_empty());
    svcs.patch(
        "lb",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
    )
    .await
    .unwrap();
    eventually("the ingress cleared", Duration::from_secs(15), || async {
        ingress(&svcs.get("lb").await.unwrap())
            .is_empty()
            .then_some(())
    })
    .await;
}
