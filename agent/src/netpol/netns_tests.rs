//! The netlink layer against the kernel, in a network namespace the test creates and removes
//! (root needed; skipped only with PODLET_SKIP_PRIVILEGED=1): the kernel takes full and
//! incremental syncs and the pending table, and `nft` reads back the rules meant.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

use super::rules::{self, Input, Pod, Wanted};
use super::*;
use crate::testns::Netns;

fn pod(ns: &str, name: &str, app: &str, ip: [u8; 4], local: bool) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ports: vec![("http".into(), rules::TCP, 8080)],
        // Dual-stack: fd00::<a>:<b>:<c>:<d> beside a.b.c.d.
        ips: vec![Ipv4Addr::from(ip).into(), v6(ip).into()],
        local,
    }
}

fn v6([a, b, c, d]: [u8; 4]) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, a.into(), b.into(), c.into(), d.into())
}

const BOTH: [Family; 2] = [Family::V4, Family::V6];

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .unwrap(),
    )
}

fn wanted(pods: &[Pod], policies: &[Arc<NetworkPolicy>]) -> Wanted {
    let namespaces: BTreeMap<String, rules::Labels> = [
        (
            "a".to_string(),
            [("team".to_string(), "x".to_string())].into(),
        ),
        ("b".to_string(), BTreeMap::new()),
    ]
    .into();
    rules::wanted(&Input {
        pods,
        namespaces: &namespaces,
        policies,
    })
}

#[test]
fn full_incremental_and_pending_syncs_and_cleanup() {
    let Some(ns) = Netns::new("netpol") else {
        return;
    };
    let dns = [IpAddr::from([10, 96, 0, 10])];
    let mut nl = Session::default();
    let policies = vec![
        policy(
            "a",
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}},
                                  {"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}},
                                  {"ipBlock": {"cidr": "2001:db8::/32"}}],
                         "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}, {"protocol": "UDP"}]}],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}, {"to": [{"podSelector": {}}]}]}),
        ),
        policy("b", "deny", json!({"podSelector": {}})),
    ];
    let pods = vec![
        pod("a", "web-1", "web", [10, 244, 1, 2], true),
        pod("a", "client-1", "client", [10, 244, 2, 3], false),
        pod("b", "other", "web", [10, 244, 1, 4], true),
    ];
    let w = wanted(&pods, &policies);
    ns.run(|| sync(&mut nl, &BOTH, None, &w, &dns)).unwrap();
    // Twice: a full sync replaces the table whether or not it is there.
    ns.run(|| sync(&mut nl, &BOTH, None, &w, &dns)).unwrap();
    let l = ns.nft_list(table::TABLE);
    for want in [
        "ct state established,related accept",
        "ip saddr @pending drop",
        "ip daddr @ingress-isolated jump ingress",
        "ip saddr @egress-isolated jump egress",
        "ip daddr 10.96.0.10 udp dport 53 accept",
        "ip daddr @in-targets:a/web jump in:a/web",
        "ip daddr . meta l4proto . th dport @in-port:a/web:0:0 jump in:a/web:0",
        "tcp dport 9000-9100 jump in:a/web:0",
        "meta l4proto udp jump in:a/web:0",
        "ip saddr @in-peers:a/web:0 accept",
        "jump in:a/web:0:b2",
        "ip saddr 10.9.0.0/16 return",
        "ip saddr 10.0.0.0/8 accept",
        "udp dport 53 jump eg:a/web:0",
        "ip daddr @eg-peers:a/web:1 accept",
        "10.244.1.2 . tcp . 8080",
        "10.244.1.4",
        "drop",
    ] {
        assert!(l.contains(want), "{want:?} not in\n{l}");
    }
    assert!(!l.contains("fd00::") && !l.contains("2001:db8"), "{l}");
    // The same layout in ip6, with the IPv6 addresses and block, and neighbour discovery.
    let l6 = ns.nft_list_family("ip6", table::TABLE);
    for want in [
        "icmpv6 type 133-136 accept",
        "ip6 daddr @ingress-isolated jump ingress",
        "ip6 daddr . meta l4proto . th dport @in-port:a/web:0:0 jump in:a/web:0",
        "ip6 saddr 2001:db8::/32 accept",
        "fd00::a:f4:1:2 . tcp . 8080",
        "fd00::a:f4:1:4",
    ] {
        assert!(l6.contains(want), "{want:?} not in\n{l6}");
    }
    assert!(
        !l6.contains("10.244.") && !l6.contains("10.0.0.0/8"),
        "{l6}"
    );

    // Pods come and go: set elements only (the same layout).
    let mut pods2 = pods.clone();
    pods2.push(pod("a", "client-2", "client", [10, 244, 2, 9], false));
    pods2.push(pod("a", "web-2", "web", [10, 244, 1, 7], true));
    pods2.remove(2);
    let w2 = wanted(&pods2, &policies);
    assert!(rules::diff(&w, &w2).is_some_and(|d| !d.is_empty()));
    ns.run(|| sync(&mut nl, &BOTH, Some(&w), &w2, &dns))
        .unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(
        l.contains("10.244.2.9") && l.contains("10.244.1.7 . tcp . 8080"),
        "{l}"
    );
    assert!(
        !l.contains("10.244.1.4"),
        "a gone pod's address stays:\n{l}"
    );
    let l6 = ns.nft_list_family("ip6", table::TABLE);
    assert!(
        l6.contains("fd00::a:f4:2:9") && !l6.contains("fd00::a:f4:1:4"),
        "{l6}"
    );

    // A policy change: a new layout, in one transaction.
    let w3 = wanted(&pods2, &policies[1..]);
    ns.run(|| sync(&mut nl, &BOTH, Some(&w2), &w3, &dns))
        .unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(
        !l.contains("in:a/web") && l.contains("in-targets:b/deny"),
        "{l}"
    );

    // Before a first sync the table is kept and new pods go into `pending`.
    let fresh: BTreeSet<IpAddr> =
        [IpAddr::from([10, 244, 1, 30]), v6([10, 244, 1, 30]).into()].into();
    ns.run(|| sync_pending(&mut nl, &BOTH, None, &fresh, &dns))
        .unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(
        l.contains("10.244.1.30") && l.contains("in-targets:b/deny"),
        "{l}"
    );
    ns.run(cleanup).unwrap();
    ns.run(|| sync_pending(&mut nl, &BOTH, None, &fresh, &dns))
        .unwrap();
    assert!(ns.nft_list(table::TABLE).contains("10.244.1.30"));
    assert!(ns
        .nft_list_family("ip6", table::TABLE)
        .contains("fd00::a:f4:1:1e"));

    let removed = ns.run(cleanup).unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(ns.run(cleanup).unwrap().is_empty());
}
