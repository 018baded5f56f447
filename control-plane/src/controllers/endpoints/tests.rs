//! The Endpoints controller against the in-process apiserver.

use kube::api::DeleteParams;
use serde_json::json;

use super::*;
use crate::controllers::endpointslice::tests::{manager, pod, service, set_status, WAIT};
use crate::testing::cluster::{eventually, Cluster, Task};

fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<String> {
    a.iter().flatten().map(|a| a.ip.clone()).collect()
}

#[tokio::test]
async fn endpoints_list_ready_and_unready_addresses_per_port() {
    let c = Cluster::new().await;
    let _ctl = Task::spawn(run(manager(&c)));
    pod(
        &c,
        "a",
        json!({"app": "web"}),
        &[("http", 8080)],
        "10.0.0.1",
        true,
    )
    .await;
    pod(
        &c,
        "b",
        json!({"app": "web"}),
        &[("http", 8080)],
        "10.0.0.2",
        false,
    )
    .await;
    // No `http` port: only in the port given by number.
    pod(&c, "c", json!({"app": "web"}), &[], "10.0.0.3", true).await;
    service(
        &c,
        "web",
        json!({"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9100, "targetPort": 9100},
        ]}),
    )
    .await;
    let api: Api<Endpoints> = Api::namespaced(c.admin(), "default");
    let ep = eventually("the endpoints", WAIT, || async {
        let ep = api.get_opt("web").await.unwrap()?;
        let n: usize = ep
            .subsets
            .iter()
            .flatten()
            .map(|s| len(&s.addresses) + len(&s.not_ready_addresses))
            .sum();
        (n == 5).then_some(ep)
    })
    .await;
    let subsets = ep.subsets.clone().unwrap();
    assert_eq!(subsets.len(), 2, "{subsets:?}");
    let by_port = |name: &str| {
        subsets
            .iter()
            .find(|s| {
                s.ports
                    .as_ref()
                    .unwrap()
                    .iter()
                    .any(|p| p.name.as_deref() == Some(name))
            })
            .unwrap()
            .clone()
    };
    let http = by_port("http");
    assert_eq!(http.ports.as_ref().unwrap().len(), 1);
    assert_eq!(http.ports.as_ref().unwrap()[0].port, 8080);
    assert_eq!(ips(&http.addresses), ["10.0.0.1"]);
    assert_eq!(ips(&http.not_ready_addresses), ["10.0.0.2"]);
    let metrics = by_port("metrics");
    assert_eq!(ips(&metrics.addresses), ["10.0.0.1", "10.0.0.3"]);
    assert_eq!(ips(&metrics.not_ready_addresses), ["10.0.0.2"]);
    let a = &http.addresses.as_ref().unwrap()[0];
    assert_eq!(a.node_name.as_deref(), Some("n1"));
    assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
    assert!(ep
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .contains_key(TRIGGER_TIME_ANNOTATION));

    // b turns ready: no address is left unready.
    set_status(&c, "b", "10.0.0.2", true).await;
    eventually("b ready", WAIT, || async {
        let ep = api.get("web").await.unwrap();
        let all_ready = ep
            .subsets
            .iter()
            .flatten()
            .all(|s| s.not_ready_addresses.is_none());
        all_ready.then_some(())
    })
    .await;

    Api::<Service>::namespaced(c.admin(), "default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the endpoints gone", WAIT, || async {
        api.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[test]
fn over_a_thousand_addresses_are_truncated_ready_first() {
    let addr = |i: usize| EndpointAddress {
        ip: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
        ..Default::default()
    };
    let mut subsets = vec![EndpointSubset {
        addresses: Some((0..900).map(addr).collect()),
        not_ready_addresses: Some((900..1200).map(addr).collect()),
        ports: None,
    }];
    assert!(truncate(&mut subsets, MAX_CAPACITY));
    assert_eq!(len(&subsets[0].addresses), 900);
    assert_eq!(len(&subsets[0].not_ready_addresses), 100);
    let mut small = vec![EndpointSubset {
        addresses: Some((0..3).map(addr).collect()),
        ..Default::default()
    }];
    assert!(!truncate(&mut small, MAX_CAPACITY));
}
