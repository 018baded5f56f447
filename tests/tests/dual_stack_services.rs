//! End-to-end: Services, cluster DNS and NetworkPolicy on a two-node dual-stack cluster
//! (`Cluster::start_dual_stack`). A `RequireDualStack` ClusterIP service gets an address of
//! each family; a pod reaches the backends on both nodes through either, keeping its own
//! address of that family; the IPv6 ClusterIP is served by `ip6 podlet-proxy`; the cluster
//! DNS answers A and AAAA; a NetworkPolicy isolates the backends over IPv6 as over IPv4.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use podlet_e2e::cluster::{ask_peer, echo_server_named, Cluster};
use serde_json::{json, Value};

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(key))
}

/// The pod that answered and the address it saw, asked from the pod `client` on node 1.
fn ask(c: &Cluster, ip: &str, port: u16) -> Option<(String, String)> {
    let out = c.exec(1, "client", &ask_peer(ip, port));
    let host = field(&out.stdout, "host=")?.to_string();
    let peer = field(&out.stdout, "peer=")?
        .trim_start_matches("[::ffff:")
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    Some((host, peer))
}

fn pod_ips(p: &Value) -> Vec<String> {
    p["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(String::from))
        .collect()
}

fn apply(c: &Cluster, obj: Value) {
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &obj.to_string());
    assert_eq!(out.code, 0, "{out:?}");
}

/// Waits until `ip:port` answers (`true`) or stops answering (`false`) from the client.
fn until(c: &Cluster, ip: &str, port: u16, answers: bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if ask(c, ip, port).is_some() == answers {
            return;
        }
    }
    panic!(
        "{ip}:{port} still {}",
        if answers { "silent" } else { "answering" }
    );
}

#[test]
fn dual_stack_services_dns_and_policies() {
    let Some(c) = Cluster::start_dual_stack(&[1, 2], &[]) else {
        return;
    };
    for (node, name) in [(1, "web-1"), (2, "web-2")] {
        c.run_backend(
            node,
            name,
            json!({"app": "web"}),
            "http",
            8080,
            &echo_server_named(8080),
        );
    }
    let client = c.run_pod(1, "client", false, "sleep 100000");
    let client_ips = pod_ips(&client);
    assert_eq!(client_ips.len(), 2, "{client}");

    apply(
        &c,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"ipFamilyPolicy": "RequireDualStack", "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    );
    let svc = c.get_json(&["service", "web"]).unwrap();
    assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]), "{svc}");
    let ips: Vec<String> = svc["spec"]["clusterIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 2, "{svc}");
    let within = |ip: &str, range: &str| {
        let net: ipnetwork::IpNetwork = range.parse().unwrap();
        net.contains(ip.parse().unwrap())
    };
    assert!(
        within(&ips[0], "10.96.0.0/12") && within(&ips[1], "fd00:10:96::/112"),
        "{ips:?}"
    );

    // Each family's ClusterIP spreads over both nodes' backends and keeps the client's address
    // of that family.
    for (ip, own) in ips.iter().zip(&client_ips) {
        c.wait(&format!("the ClusterIP {ip} answering"), || ask(&c, ip, 80));
        let mut hosts = BTreeSet::new();
        for _ in 0..20 {
            let (host, peer) = ask(&c, ip, 80).expect("an answer through the ClusterIP");
            assert_eq!(&peer, own, "pod -> {ip} -> pod keeps the pod's address");
            hosts.insert(host);
        }
        assert_eq!(
            hosts.into_iter().collect::<Vec<_>>(),
            ["web-1", "web-2"],
            "{ip}"
        );
    }
    let six = c.sh(1, "nft list table ip6 podlet-proxy").stdout;
    assert!(
        six.contains(&format!("{} . tcp . 80 : goto service-", ips[1])),
        "{six}"
    );
    let four = c.sh(1, "nft list table ip podlet-proxy").stdout;
    assert!(!four.contains("fd00:"), "{four}");

    // The cluster DNS: A and AAAA of the service.
    let ns = |args: &str| {
        let o = c.exec(1, "client", &format!("nslookup {args} 2>&1"));
        format!("{}{}", o.stdout, o.stderr)
    };
    let a = ns("-type=a web.default.svc.cluster.local");
    assert!(a.contains(&format!("Address: {}", ips[0])), "{a}");
    let aaaa = ns("-type=aaaa web.default.svc.cluster.local");
    assert!(aaaa.contains(&format!("Address: {}", ips[1])), "{aaaa}");

    // A policy that admits only app=allowed: the client loses both families; labelled
    // allowed, it gets both back.
    apply(
        &c,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "web-allowed-only"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "allowed"}}}]}]}}),
    );
    for ip in &ips {
        until(&c, ip, 80, false);
    }
    let out = c.kubectl(&["label", "pod", "client", "app=allowed"]);
    assert_eq!(out.code, 0, "{out:?}");
    for ip in &ips {
        until(&c, ip, 80, true);
    }
    let l6 = c.sh(1, "nft list table ip6 podlet-netpol").stdout;
    assert!(l6.contains(&client_ips[1]), "{l6}");
}
