use std::sync::Arc;

use serde_json::json;

use super::*;
use podlet_cni::nft::family::Family;

pub fn scope() -> Scope {
    Scope {
        family: Family::V4,
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        local_dns: vec!["10.96.0.10".parse().unwrap()],
        node_name: "n1".into(),
    }
}

fn service(name: &str, ip: &str, ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": name},
        "spec": {"clusterIP": ip, "ports": ports},
    }))
    .unwrap()
}

fn slice(svc: &str, name: &str, ports: serde_json::Value, eps: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": name,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": eps,
    }))
    .unwrap()
}

fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (m.namespace.clone().unwrap(), m.name.clone().unwrap())
    };
    Snapshot {
        services: services
            .into_iter()
            .map(|s| (key(&s.metadata), Arc::new(s)))
            .collect(),
        slices: slices
            .into_iter()
            .map(|s| (key(&s.metadata), Arc::new(s)))
            .collect(),
        synced: true,
        ..Default::default()
    }
}

fn ep(
    ip: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    term: Option<bool>,
) -> serde_json::Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": term}})
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn several_ports_and_a_named_target_port_resolve_per_slice() {
    let svc = service(
        "web",
        "10.96.0.50",
        json!([{"name": "http", "port": 80, "targetPort": "web"},
               {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]),
    );
    // Two slices whose pods call the named port by different numbers.
    let a = slice(
        "web",
        "web-a",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"},
               {"name": "dns", "port": 5353, "protocol": "UDP"}]),
        json!([ep("10.244.1.2", None, None, None)]),
    );
    let b = slice(
        "web",
        "web-b",
        json!([{"name": "http", "port": 9090, "protocol": "TCP"}]),
        json!([ep("10.244.2.2", Some(true), None, None)]),
    );
    let w = wanted(&snapshot(vec![svc], vec![a, b]), &scope());
    let http = &w.ports["default/web/tcp/http"];
    assert_eq!(
        (http.cluster_ip, http.proto, http.port),
        (v4("10.96.0.50"), 6, 80)
    );
    assert_eq!(
        http.endpoints,
        vec![(v4("10.244.1.2"), 8080), (v4("10.244.2.2"), 9090)]
    );
    let dns = &w.ports["default/web/udp/dns"];
    assert_eq!((dns.proto, dns.port), (17, 53));
    assert_eq!(dns.endpoints, vec![(v4("10.244.1.2"), 5353)]);
}

#[test]
fn ready_endpoints_first_then_serving_terminating_ones() {
    let svc = service("s", "10.96.0.51", json!([{"port": 80}]));
    let ports = json!([{"port": 8080}]);
    let mixed = slice(
        "s",
        "s-1",
        ports.clone(),
        json!([
            ep("10.244.1.2", Some(true), None, None),
            ep("10.244.1.3", Some(false), Some(true), Some(true)),
            ep("10.244.1.4", Some(false), Some(false), None)
        ]),
    );
    let w = wanted(&snapshot(vec![svc.clone()], vec![mixed]), &scope());
    assert_eq!(
        w.ports["default/s/tcp/"].endpoints,
        vec![(v4("10.244.1.2"), 8080)]
    );

    let terminating = slice(
        "s",
        "s-1",
        ports,
        json!([
            ep("10.244.1.3", Some(false), Some(true), Some(true)),
            ep("10.244.1.5", Some(false), Some(false), Some(true)),
            ep("10.244.1.4", Some(false), Some(false), None)
        ]),
    );
    let w = wanted(&snapshot(vec![svc], vec![terminating]), &scope());
    assert_eq!(
        w.ports["default/s/tcp/"].endpoints,
        vec![(v4("10.244.1.3"), 8080)]
    );
}

#[test]
fn no_endpoints_headless_external_name_and_cluster_dns() {
    let empty = service("empty", "10.96.0.52", json!([{"port": 80}]));
    let headless = service("headless", "None", json!([{"port": 80}]));
    let mut ext = service("ext", "", json!([]));
    ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    let dns = service(
        "kube-dns",
        "10.96.0.10",
        json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
    );
    let w = wanted(&snapshot(vec![empty, headless, ext, dns], vec![]), &scope());
    assert_eq!(w.ports.keys().collect::<Vec<_>>(), ["default/empty/tcp/"]);
    assert!(w.ports["default/empty/tcp/"].endpoints.is_empty());
    assert_eq!(
        w.cluster_ips().into_iter().collect::<Vec<_>>(),
        [v4("10.96.0.52")]
    );
}

#[test]
fn a_slice_without_the_port_or_of_another_family_gives_nothing() {
    let svc = service("s", "10.96.0.53", json!([{"name": "a", "port": 80}]));
    let other_port = slice(
        "s",
        "s-1",
        json!([{"name": "b", "port": 1}]),
        json!([ep("10.244.1.2", None, None, None)]),
    );
    let mut v6 = slice(
        "s",
        "s-2",
        json!([{"name": "a", "port": 1}]),
        json!([ep("fd00::1", None, None, None)]),
    );
    v6.address_type = "IPv6".into();
    let w = wanted(&snapshot(vec![svc], vec![other_port, v6]), &scope());
    assert!(w.ports["default/s/tcp/a"].endpoints.is_empty());
}

fn port(ip: &str, port: u16, eps: &[(&str, u16)]) -> ServicePort {
    ServicePort {
        cluster_ip: v4(ip),
        proto: 6,
        port,
        endpoints: eps.iter().map(|(i, p)| (v4(i), *p)).collect(),
        local_endpoints: Vec::new(),
        internal_local: false,
        external_local: false,
        affinity: None,
        node_port: None,
        external_ips: Vec::new(),
    }
}

#[test]
fn diff_names_added_removed_and_changed_ports() {
    let mut old = Wanted::default();
    old.ports
        .insert("a".into(), port("10.96.0.1", 80, &[("10.244.1.2", 80)]));
    old.ports.insert("b".into(), port("10.96.0.2", 80, &[]));
    old.ports.insert("c".into(), port("10.96.0.3", 80, &[]));
    old.ports.insert("d".into(), port("10.96.0.4", 80, &[]));
    let mut new = old.clone();
    new.ports
        .insert("a".into(), port("10.96.0.1", 80, &[("10.244.2.2", 80)]));
    new.ports.remove("b");
    new.ports.insert("c".into(), port("10.96.0.3", 81, &[]));
    new.ports.insert("e".into(), port("10.96.0.5", 80, &[]));
    let d = diff(&old, &new);
    assert_eq!(d.endpoints_changed, ["a"]);
    assert_eq!(d.removed, ["b", "c"]);
    assert_eq!(d.added, ["c", "e"]);
    assert!(diff(&new, &new).is_empty());
}

#[test]
fn chain_names_follow_kube_proxy() {
    let n = "default/web/tcp/http";
    let c = service_chain(n);
    assert!(
        c.starts_with("service-") && c.ends_with("-default/web/tcp/http"),
        "{c}"
    );
    assert_eq!(c.len(), "service-".len() + 8 + 1 + n.len());
    let e = endpoint_chain(n, (v4("10.244.1.2"), 8080));
    assert!(e.ends_with("-default/web/tcp/http__10.244.1.2/8080"), "{e}");
    assert_eq!(service_chain(n), c, "stable");
    assert_ne!(endpoints_map(n), endpoints_map("default/web/tcp/other"));
}

#[test]
fn node_ports_of_node_port_and_load_balancer_services_only() {
    let mut np = service(
        "np",
        "10.96.0.50",
        json!([{"name": "a", "port": 80, "nodePort": 30080}]),
    );
    np.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    let mut lb = service(
        "lb",
        "10.96.0.51",
        json!([{"name": "a", "port": 80, "nodePort": 30081}]),
    );
    lb.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
    // A ClusterIP service's stray nodePort is not served.
    let ip = service(
        "ip",
        "10.96.0.52",
        json!([{"name": "a", "port": 80, "nodePort": 30082}]),
    );
    let eps = |svc: &str| {
        slice(
            svc,
            &format!("{svc}-x"),
            json!([{"name": "a", "port": 8080}]),
            json!([ep("10.244.1.5", None, None, None)]),
        )
    };
    let snap = snapshot(vec![np, lb, ip], vec![eps("np"), eps("lb"), eps("ip")]);
    let w = wanted(&snap, &scope());
    assert_eq!(w.ports["default/np/tcp/a"].node_port, Some(30080));
    assert_eq!(w.ports["default/lb/tcp/a"].node_port, Some(30081));
    assert_eq!(w.ports["default/ip/tcp/a"].node_port, None);
    // A changed node port is the port removed and added again.
    let mut w2 = w.clone();
    w2.ports.get_mut("default/np/tcp/a").unwrap().node_port = Some(30090);
    let d = diff(&w, &w2);
    assert_eq!(d.removed, ["default/np/tcp/a"]);
    assert_eq!(d.added, ["default/np/tcp/a"]);
    assert!(external_chain("default/np/tcp/a").starts_with("external-"));
}

#[test]
fn external_and_load_balancer_ips() {
    let mut lb = service(
        "lb",
        "10.96.0.51",
        json!([{"name": "a", "port": 80, "nodePort": 30081}]),
    );
    let spec = lb.spec.as_mut().unwrap();
    spec.type_ = Some("LoadBalancer".into());
    spec.external_ips = Some(vec!["192.0.2.5".into(), "fd00::5".into()]);
    lb.status = serde_json::from_value(
        json!({"loadBalancer": {"ingress": [{"ip": "10.200.1.11"}, {"ip": "10.200.1.12"}]}}),
    )
    .unwrap();
    // The ingress of a service that is no longer a LoadBalancer is not served.
    let mut ip = service("ip", "10.96.0.52", json!([{"name": "a", "port": 80}]));
    ip.status = lb.status.clone();
    let eps = |svc: &str| {
        slice(
            svc,
            &format!("{svc}-x"),
            json!([{"name": "a", "port": 8080}]),
            json!([ep("10.244.1.5", None, None, None)]),
        )
    };
    let w = wanted(
        &snapshot(vec![lb, ip], vec![eps("lb"), eps("ip")]),
        &scope(),
    );
    let p = &w.ports["default/lb/tcp/a"];
    assert_eq!(
        p.external_ips,
        [v4("10.200.1.11"), v4("10.200.1.12"), v4("192.0.2.5")]
    );
    assert!(p.external());
    assert!(w.ports["default/ip/tcp/a"].external_ips.is_empty());
    assert!(!w.ports["default/ip/tcp/a"].external());
}

fn on(node: &str, ip: &str, ready: bool) -> serde_json::Value {
    json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready, "serving": ready}})
}

fn with_spec(mut svc: Service, extra: serde_json::Value) -> Service {
    let mut spec = serde_json::to_value(svc.spec.take().unwrap()).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    svc.spec = Some(serde_json::from_value(spec).unwrap());
    svc
}

#[test]
fn local_policies_use_this_nodes_endpoints_and_drop_without_any() {
    let base = service(
        "web",
        "10.96.0.60",
        json!([{"port": 80, "nodePort": 30080}]),
    );
    let svc = with_spec(
        base,
        json!({"type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"}),
    );
    let eps = json!([on("n1", "10.244.1.2", true), on("n2", "10.244.2.2", true)]);
    let s = slice("web", "web-1", json!([{"port": 8080}]), eps);
    let w = wanted(&snapshot(vec![svc.clone()], vec![s]), &scope());
    let p = &w.ports["default/web/tcp/"];
    assert_eq!(p.endpoints.len(), 2);
    assert_eq!(p.local_endpoints, vec![(v4("10.244.1.2"), 8080)]);
    assert!(p.internal_local && p.external_local && p.has_local_chain());
    let name = "default/web/tcp/";
    assert_eq!(p.internal_chain(name), Some(local_chain(name)));
    assert!(p.has_external_endpoints());
    assert_eq!(p.chained_endpoints().len(), 2);

    // Only the other node has endpoints: ClusterIP and node port traffic is dropped here
    // (not rejected: the service has endpoints).
    let eps = json!([on("n2", "10.244.2.2", true)]);
    let s = slice("web", "web-1", json!([{"port": 8080}]), eps);
    let w = wanted(&snapshot(vec![svc], vec![s]), &scope());
    let p = &w.ports[name];
    assert!(!p.has_local_chain() && !p.no_endpoints());
    assert_eq!(p.internal_chain(name), None);
    assert!(!p.has_external_endpoints());
    // Still an external chain, for the short-circuit of pods and the node.
    assert!(p.has_external_chain());
}

#[test]
fn cluster_policies_ignore_the_node_and_external_local_needs_an_external_service() {
    let svc = with_spec(
        service("web", "10.96.0.61", json!([{"port": 80}])),
        json!({"externalTrafficPolicy": "Local"}),
    );
    let eps = json!([on("n2", "10.244.2.2", true)]);
    let s = slice("web", "web-1", json!([{"port": 8080}]), eps);
    let w = wanted(&snapshot(vec![svc], vec![s]), &scope());
    let p = &w.ports["default/web/tcp/"];
    assert!(
        !p.external_local,
        "a ClusterIP service has no external traffic"
    );
    assert!(p.local_endpoints.is_empty());
    assert_eq!(
        p.internal_chain("default/web/tcp/"),
        Some(service_chain("default/web/tcp/"))
    );
}

#[test]
fn client_ip_affinity_and_its_default_timeout() {
    let svc = service("web", "10.96.0.62", json!([{"port": 80}]));
    let sticky = with_spec(svc.clone(), json!({"sessionAffinity": "ClientIP"}));
    let timed = with_spec(
        svc.clone(),
        json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    );
    let eps = json!([on("n1", "10.244.1.2", true)]);
    let s = slice("web", "web-1", json!([{"port": 8080}]), eps);
    let affinity = |svc: &Service| {
        let w = wanted(&snapshot(vec![svc.clone()], vec![s.clone()]), &scope());
        w.ports["default/web/tcp/"].affinity
    };
    assert_eq!(affinity(&svc), None);
    assert_eq!(affinity(&sticky), Some(10800));
    assert_eq!(affinity(&timed), Some(60));
    // Affinity on or off remakes the port; endpoints alone only refill it.
    let old = wanted(&snapshot(vec![svc], vec![s.clone()]), &scope());
    let new = wanted(&snapshot(vec![timed], vec![s]), &scope());
    let d = diff(&old, &new);
    assert_eq!(d.removed, vec!["default/web/tcp/"]);
    assert_eq!(d.added, vec!["default/web/tcp/"]);
}

#[test]
fn a_local_chain_appearing_remakes_the_port_and_endpoint_moves_refill_it() {
    let svc = with_spec(
        service("web", "10.96.0.63", json!([{"port": 80}])),
        json!({"internalTrafficPolicy": "Local"}),
    );
    let at = |eps: serde_json::Value| {
        let s = slice("web", "web-1", json!([{"port": 8080}]), eps);
        wanted(&snapshot(vec![svc.clone()], vec![s]), &scope())
    };
    let remote = at(json!([on("n2", "10.244.2.2", true)]));
    let both = at(json!([
        on("n2", "10.244.2.2", true),
        on("n1", "10.244.1.2", true)
    ]));
    let both2 = at(json!([
        on("n2", "10.244.2.3", true),
        on("n1", "10.244.1.2", true)
    ]));
    assert_eq!(diff(&remote, &both).added, vec!["default/web/tcp/"]);
    let d = diff(&both, &both2);
    assert!(d.added.is_empty() && d.removed.is_empty());
    assert_eq!(d.endpoints_changed, vec!["default/web/tcp/"]);
}

#[test]
fn the_memo_recomputes_only_services_whose_objects_changed() {
    let ports = json!([{"name": "http", "port": 80}]);
    let web = service("web", "10.96.0.50", ports.clone());
    let api = service("api", "10.96.0.51", ports.clone());
    let sp = json!([{"name": "http", "port": 8080}]);
    let s1 = slice(
        "web",
        "web-1",
        sp.clone(),
        json!([ep("10.244.1.2", None, None, None)]),
    );
    let s2 = slice(
        "api",
        "api-1",
        sp.clone(),
        json!([ep("10.244.1.3", None, None, None)]),
    );
    let mut snap = snapshot(vec![web, api], vec![s1, s2]);
    let mut memo = Memo::default();
    let first = memo.wanted(&snap, &scope());
    assert_eq!(first, wanted(&snap, &scope()));

    // A new slice object for web (an endpoint added), api's untouched: both as computed fresh.
    let s1b = slice(
        "web",
        "web-1",
        sp.clone(),
        json!([
            ep("10.244.1.2", None, None, None),
            ep("10.244.2.2", None, None, None)
        ]),
    );
    snap.slices
        .insert(("default".into(), "web-1".into()), Arc::new(s1b));
    snap.by_service = Default::default();
    let second = memo.wanted(&snap, &scope());
    assert_eq!(second, wanted(&snap, &scope()));
    assert_eq!(second.ports["default/web/tcp/http"].endpoints.len(), 2);
    assert_eq!(
        second.ports["default/api/tcp/http"],
        first.ports["default/api/tcp/http"]
    );

    // A second slice, then the service changed (another port), then gone.
    let s1c = slice(
        "web",
        "web-2",
        sp,
        json!([ep("10.244.3.2", None, None, None)]),
    );
    snap.slices
        .insert(("default".into(), "web-2".into()), Arc::new(s1c));
    snap.by_service = Default::default();
    assert_eq!(memo.wanted(&snap, &scope()), wanted(&snap, &scope()));
    let web2 = service("web", "10.96.0.50", json!([{"name": "http", "port": 81}]));
    snap.services
        .insert(("default".into(), "web".into()), Arc::new(web2));
    let w = memo.wanted(&snap, &scope());
    assert_eq!(w, wanted(&snap, &scope()));
    assert_eq!(w.ports["default/web/tcp/http"].port, 81);
    snap.services.remove(&("default".into(), "web".into()));
    let w = memo.wanted(&snap, &scope());
    assert_eq!(w.ports.keys().collect::<Vec<_>>(), ["default/api/tcp/http"]);
}

pub fn scope_v6() -> Scope {
    Scope {
        family: Family::V6,
        service_cidr: "fd00:10:96::/112".parse().unwrap(),
        cluster_cidr: Some("fd00:10:244::/56".parse().unwrap()),
        local_dns: vec!["10.96.0.10".parse().unwrap()],
        node_name: "n1".into(),
    }
}

#[test]
fn each_family_takes_its_cluster_ip_slices_and_external_addresses() {
    let mut svc = service("web", "10.96.0.50", json!([{"name": "http", "port": 80}]));
    let spec = svc.spec.as_mut().unwrap();
    spec.cluster_ips = Some(vec!["10.96.0.50".into(), "fd00:10:96::50".into()]);
    spec.external_ips = Some(vec!["192.0.2.5".into(), "2001:db8::5".into()]);
    let sp = json!([{"name": "http", "port": 8080}]);
    let v4_slice = slice(
        "web",
        "web-v4",
        sp.clone(),
        json!([ep("10.244.1.2", None, None, None)]),
    );
    let mut v6_slice = slice(
        "web",
        "web-v6",
        sp,
        json!([
            ep("fd00:10:244:1::2", None, None, None),
            ep("fd00:10:244:2::2", Some(false), None, None)
        ]),
    );
    v6_slice.address_type = "IPv6".into();
    let snap = snapshot(vec![svc.clone()], vec![v4_slice, v6_slice]);

    let four = wanted(&snap, &scope());
    let p = &four.ports["default/web/tcp/http"];
    assert_eq!(p.cluster_ip, v4("10.96.0.50"));
    assert_eq!(p.endpoints, [(v4("10.244.1.2"), 8080)]);
    assert_eq!(p.external_ips, [v4("192.0.2.5")]);

    let six = wanted(&snap, &scope_v6());
    let p = &six.ports["default/web/tcp/http"];
    assert_eq!(p.cluster_ip, v4("fd00:10:96::50"));
    assert_eq!(p.endpoints, [(v4("fd00:10:244:1::2"), 8080)]);
    assert_eq!(p.external_ips, [v4("2001:db8::5")]);

    // A single-stack IPv4 service has nothing in the IPv6 table, and the other way round.
    let mut only4 = svc.clone();
    only4.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.50".into()]);
    assert!(wanted(&snapshot(vec![only4], vec![]), &scope_v6())
        .ports
        .is_empty());
    let mut only6 = svc;
    let spec = only6.spec.as_mut().unwrap();
    spec.cluster_ip = Some("fd00:10:96::50".into());
    spec.cluster_ips = Some(vec!["fd00:10:96::50".into()]);
    assert!(wanted(&snapshot(vec![only6.clone()], vec![]), &scope())
        .ports
        .is_empty());
    assert_eq!(
        wanted(&snapshot(vec![only6], vec![]), &scope_v6())
            .ports
            .len(),
        1
    );
}
