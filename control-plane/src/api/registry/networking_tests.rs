//! NetworkPolicies through the in-process apiserver: discovery, defaults on create, upstream's
//! refusals, the generation, and what a node may read to enforce them.

use axum::http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::testing::cluster::Cluster;

const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies";

#[tokio::test]
async fn network_policies_are_served_defaulted_and_validated() {
    let c = Cluster::new().await;
    let group = c
        .call(Method::GET, "/apis/networking.k8s.io/v1", None)
        .await;
    assert_eq!(group.code, StatusCode::OK, "{}", group.body);
    let r = group.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "networkpolicies")
        .cloned()
        .expect("networkpolicies in discovery");
    assert_eq!(r["kind"], "NetworkPolicy");
    assert_eq!(r["namespaced"], true);
    assert_eq!(r["shortNames"], json!(["netpol"]));

    let p = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                              "ports": [{"port": "http"}]}],
                 "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]}});
    let created = c.call(Method::POST, POLICIES, Some(&p)).await;
    assert_eq!(created.code, StatusCode::CREATED, "{}", created.body);
    let o = &created.body;
    assert_eq!(o["metadata"]["generation"], 1);
    assert_eq!(o["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(o["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(o["spec"]["egress"][0]["ports"][0]["protocol"], "UDP");
    assert_eq!(o["spec"]["egress"][0]["ports"][1]["protocol"], "TCP");

    // A label change leaves the generation; a rule change moves it.
    let item = format!("{POLICIES}/web");
    let mut labelled = o.clone();
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let u = c.call(Method::PUT, &item, Some(&labelled)).await;
    assert_eq!(u.code, StatusCode::OK, "{}", u.body);
    assert_eq!(u.body["metadata"]["generation"], 1);
    let mut changed = u.body.clone();
    changed["spec"]["ingress"][0]["ports"][0]["port"] = json!(8080);
    let u = c.call(Method::PUT, &item, Some(&changed)).await;
    assert_eq!(u.code, StatusCode::OK, "{}", u.body);
    assert_eq!(u.body["metadata"]["generation"], 2);

    let bad = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad"},
        "spec": {"podSelector": {},
                 "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}],
                              "ports": [{"port": 70000}]}]}});
    let refused = c.call(Method::POST, POLICIES, Some(&bad)).await;
    assert_eq!(
        refused.code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(
        refused.body["message"],
        "NetworkPolicy.networking.k8s.io \"bad\" is invalid: [spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive, spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`]"
    );

    // A node reads every namespace and policy (what its enforcement watches), writes none.
    let node = c.client("system:node:n1", &["system:nodes"]);
    let all: Api<NetworkPolicy> = Api::all(node.clone());
    let listed = all
        .list(&ListParams::default())
        .await
        .expect("a node lists policies");
    assert_eq!(listed.items.len(), 1);
    let ns: Api<Namespace> = Api::all(node.clone());
    assert!(ns.list(&ListParams::default()).await.is_ok());
    let mine: Api<NetworkPolicy> = Api::namespaced(node, "default");
    let p: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {}})).unwrap();
    let err = mine.create(&Default::default(), &p).await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
}
