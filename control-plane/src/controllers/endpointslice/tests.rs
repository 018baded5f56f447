//! The EndpointSlice controller against the in-process apiserver, as
//! `system:kube-controller-manager`; pods' addresses and readiness are set through
//! `pods/status` as a kubelet would.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::*;
use crate::reconcile::rbac::CONTROLLER_MANAGER_USER;
use crate::testing::cluster::{eventually, Cluster, Task};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn manager(c: &Cluster) -> kube::Client {
    c.client(CONTROLLER_MANAGER_USER, &[])
}

/// A pod with `labels`, on node `n1`, its container exposing `ports` (name, number); then its
/// status as its kubelet would write it: Running at `ip`, ready or not.
pub(crate) async fn pod(
    c: &Cluster,
    name: &str,
    labels: Value,
    ports: &[(&str, i32)],
    ip: &str,
    ready: bool,
) {
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p}))
        .collect();
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1.36", "ports": ports}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    set_status(c, name, ip, ready).await;
}

pub(crate) async fn set_status(c: &Cluster, name: &str, ip: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(c.admin(), "default");
    let status = if ready { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": status}]}}),
        ),
    )
    .await
    .unwrap();
}

pub(crate) async fn service(c: &Cluster, name: &str, spec: Value) -> Service {
    let svcs: Api<Service> = Api::namespaced(c.admin(), "default");
    let s: Service =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    svcs.create(&PostParams::default(), &s).await.unwrap()
}

async fn slices_of(c: &Cluster, svc: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(c.admin(), "default");
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={svc}"));
    api.list(&lp).await.unwrap().items
}

/// The service's endpoints by pod: (ready, serving, terminating).
fn conditions(slices: &[EndpointSlice]) -> BTreeMap<String, (bool, bool, bool)> {
    slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.target_ref.as_ref().unwrap().name.clone().unwrap(),
                (
                    c.ready.unwrap_or(false),
                    c.serving.unwrap_or(false),
                    c.terminating.unwrap_or(false),
                ),
            )
        })
        .collect()
}

async fn wait_for<T>(
    c: &Cluster,
    svc: &str,
    what: &str,
    f: impl Fn(&[EndpointSlice]) -> Option<T>,
) -> T {
    eventually(what, WAIT, || async { f(&slices_of(c, svc).await) }).await
}

fn start(c: &Cluster, max: usize) -> Task {
    Task::spawn(run(manager(c), max))
}

#[tokio::test]
async fn slices_follow_the_pods_readiness_and_go_with_their_service() {
    let c = Cluster::new().await;
    let _ctl = start(&c, 100);
    let nodes: Api<Node> = Api::all(c.admin());
    let node: Node = serde_json::from_value(
        json!({"metadata": {"name": "n1", "labels": {ZONE_LABEL: "zone-a"}}}),
    )
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    pod(&c, "a", json!({"app": "web"}), &[], "10.0.0.1", true).await;
    pod(&c, "b", json!({"app": "web"}), &[], "10.0.0.2", false).await;
    pod(&c, "other", json!({"app": "db"}), &[], "10.0.0.9", true).await;
    let svc = service(
        &c,
        "web",
        json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
    )
    .await;
    // Without a selector a Service gets no slices from the controller.
    service(&c, "manual", json!({"ports": [{"port": 80}]})).await;

    let slices = wait_for(&c, "web", "two endpoints", |s| {
        (conditions(s).len() == 2).then(|| s.to_vec())
    })
    .await;
    assert_eq!(slices.len(), 1);
    let s = &slices[0];
    assert!(s.metadata.name.as_ref().unwrap().starts_with("web-"));
    assert_eq!(s.metadata.name.as_ref().unwrap().len(), "web-".len() + 5);
    assert_eq!(s.address_type, "IPv4");
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER_NAME);
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Service", svc.metadata.uid.as_deref().unwrap())
    );
    assert_eq!(owner.controller, Some(true));
    let port = &s.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), Some(8080), Some("TCP"))
    );
    let a = s
        .endpoints
        .iter()
        .find(|e| e.addresses == ["10.0.0.1"])
        .unwrap();
    assert_eq!(a.node_name.as_deref(), Some("n1"));
    assert_eq!(a.zone.as_deref(), Some("zone-a"));
    assert_eq!(a.target_ref.as_ref().unwrap().kind.as_deref(), Some("Pod"));
    assert_eq!(
        conditions(&slices),
        BTreeMap::from([
            ("a".to_string(), (true, true, false)),
            ("b".to_string(), (false, false, false)),
        ])
    );

    // b turns ready (its kubelet says so), then a goes.
    set_status(&c, "b", "10.0.0.2", true).await;
    wait_for(&c, "web", "b ready", |s| {
        (conditions(s).get("b") == Some(&(true, true, false))).then_some(())
    })
    .await;
    let name_before = slices[0].metadata.name.clone();
    Api::<Pod>::namespaced(c.admin(), "default")
        .delete("a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let after = wait_for(&c, "web", "a gone", |s| {
        (conditions(s).len() == 1).then(|| s.to_vec())
    })
    .await;
    assert_eq!(
        after[0].metadata.name, name_before,
        "the slice is updated, not replaced"
    );
    assert!(slices_of(&c, "manual").await.is_empty());

    Api::<Service>::namespaced(c.admin(), "default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&c, "web", "the slices gone", |s| s.is_empty().then_some(())).await;
}

#[tokio::test]
async fn a_terminating_pod_serves_but_is_not_ready_and_unready_addresses_can_be_published() {
    let c = Cluster::new().await;
    let _ctl = start(&c, 100);
    pod(&c, "t", json!({"app": "t"}), &[], "10.0.1.1", true).await;
    pod(&c, "u", json!({"app": "t"}), &[], "10.0.1.2", false).await;
    // A finalizer keeps the deleted pod, terminating.
    Api::<Pod>::namespaced(c.admin(), "default")
        .patch(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(c.admin(), "default")
        .delete("t", &DeleteParams::default())
        .await
        .unwrap();
    service(
        &c,
        "plain",
        json!({"selector": {"app": "t"}, "ports": [{"port": 80}]}),
    )
    .await;
    service(
        &c,
        "publish",
        json!({"selector": {"app": "t"}, "ports": [{"port": 80}], "publishNotReadyAddresses": true}),
    )
    .await;
    let plain = wait_for(&c, "plain", "both endpoints", |s| {
        let c = conditions(s);
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(
        plain["t"],
        (false, true, true),
        "terminating: serving, not ready"
    );
    assert_eq!(plain["u"], (false, false, false));
    let published = wait_for(&c, "publish", "both endpoints", |s| {
        let c = conditions(s);
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(published["t"], (true, true, true));
    assert_eq!(published["u"], (true, true, false));
}

#[tokio::test]
async fn named_ports_resolve_per_pod_into_separate_slices() {
    let c = Cluster::new().await;
    let _ctl = start(&c, 100);
    pod(
        &c,
        "old",
        json!({"app": "api"}),
        &[("http", 8080)],
        "10.0.2.1",
        true,
    )
    .await;
    pod(
        &c,
        "new",
        json!({"app": "api"}),
        &[("http", 9090)],
        "10.0.2.2",
        true,
    )
    .await;
    pod(
        &c,
        "new2",
        json!({"app": "api"}),
        &[("http", 9090)],
        "10.0.2.3",
        true,
    )
    .await;
    service(
        &c,
        "api",
        json!({"selector": {"app": "api"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}),
    )
    .await;
    let by_port = wait_for(&c, "api", "two slices", |s| {
        let m: BTreeMap<i32, Vec<String>> = s
            .iter()
            .map(|s| {
                let mut ips: Vec<String> = s
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses.clone())
                    .collect();
                ips.sort();
                (s.ports.as_ref().unwrap()[0].port.unwrap(), ips)
            })
            .collect();
        (s.len() == 2 && m.values().map(Vec::len).sum::<usize>() == 3).then_some(m)
    })
    .await;
    assert_eq!(by_port[&8080], ["10.0.2.1"]);
    assert_eq!(by_port[&9090], ["10.0.2.2", "10.0.2.3"]);
}

#[tokio::test]
async fn no_slice_holds_more_than_the_limit_and_an_empty_service_keeps_a_placeholder() {
    let c = Cluster::new().await;
    let _ctl = start(&c, 100);
    service(
        &c,
        "big",
        json!({"selector": {"app": "big"}, "ports": [{"port": 80}]}),
    )
    .await;
    let placeholder = wait_for(&c, "big", "a placeholder", |s| {
        (s.len() == 1).then(|| s[0].clone())
    })
    .await;
    assert!(placeholder.endpoints.is_empty());
    for i in 0..205 {
        let ip = format!("10.1.{}.{}", i / 200, i % 200 + 1);
        pod(&c, &format!("p{i}"), json!({"app": "big"}), &[], &ip, true).await;
    }
    let mut sizes = wait_for(&c, "big", "205 endpoints", |s| {
        let sizes: Vec<usize> = s.iter().map(|s| s.endpoints.len()).collect();
        (sizes.iter().sum::<usize>() == 205 && !sizes.contains(&0)).then_some(sizes)
    })
    .await;
    sizes.sort();
    assert_eq!(sizes, [5, 100, 100]);
}

#[test]
fn the_plan_changes_the_fewest_slices() {
    let ep = |name: &str| Endpoint {
        addresses: vec![format!("10.0.0.{}", name.len())],
        target_ref: Some(ObjectReference {
            name: Some(name.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let slice = |name: &str, eps: Vec<Endpoint>| EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: eps,
        ports: Some(vec![EndpointPort {
            port: Some(1),
            ..Default::default()
        }]),
    };
    let m = Mapping::new(
        "IPv4",
        &[EndpointPort {
            port: Some(1),
            ..Default::default()
        }],
    );
    let desired = |eps: Vec<Endpoint>| {
        BTreeMap::from([(
            m.clone(),
            Desired {
                ports: vec![EndpointPort {
                    port: Some(1),
                    ..Default::default()
                }],
                endpoints: eps,
            },
        )])
    };
    // Unchanged: nothing written.
    let p = reconciler::plan(
        vec![slice("s1", vec![ep("a")])],
        desired(vec![ep("a")]),
        2,
        "IPv4",
    );
    assert!(
        p.create.is_empty() && p.update.is_empty() && p.delete.is_empty(),
        "{p:?}"
    );
    // A new endpoint fills the slice with room; one over the limit makes a new slice.
    let p = reconciler::plan(
        vec![slice("s1", vec![ep("a")])],
        desired(vec![ep("a"), ep("bb"), ep("ccc")]),
        2,
        "IPv4",
    );
    assert_eq!(p.update.len(), 1);
    assert_eq!(p.update[0].endpoints.len(), 2);
    assert_eq!(p.create.len(), 1);
    // All gone: the slice goes, a placeholder stays.
    let p = reconciler::plan(vec![slice("s1", vec![ep("a")])], BTreeMap::new(), 2, "IPv4");
    assert_eq!(p.delete, ["s1"]);
    assert_eq!(p.create.len(), 1);
    assert!(p.create[0].endpoints.is_empty());
}
