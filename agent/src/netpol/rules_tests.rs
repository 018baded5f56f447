//! The wanted state from pods, namespaces and policies: who is isolated, which addresses are
//! peers, how ports match, and which changes are only set elements.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `ns/name app=<app> <ip> [local]`, with container ports http/TCP 8080 and dns/UDP 53.
fn pod(ns: &str, name: &str, labels: &[(&str, &str)], addr: &str, local: bool) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: vec![("http".into(), TCP, 8080), ("dns".into(), UDP, 53)],
        ips: if addr.is_empty() {
            vec![]
        } else {
            vec![ip(addr)]
        },
        local,
    }
}

fn cluster() -> Vec<Pod> {
    vec![
        pod("a", "web", &[("app", "web")], "10.244.1.2", true),
        pod("a", "client", &[("app", "client")], "10.244.1.3", true),
        pod(
            "a",
            "remote-client",
            &[("app", "client")],
            "10.244.2.3",
            false,
        ),
        pod("a", "remote-web", &[("app", "web")], "10.244.2.2", false),
        pod("b", "client", &[("app", "client")], "10.244.2.4", false),
        pod("b", "db", &[("app", "db")], "10.244.1.5", true),
        pod("c", "client", &[("app", "client")], "10.244.2.6", false),
        pod("a", "no-ip", &[("app", "web")], "", true),
    ]
}

fn namespaces() -> BTreeMap<String, Labels> {
    let l = |kv: &[(&str, &str)]| -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    [
        ("a".into(), l(&[("kubernetes.io/metadata.name", "a")])),
        (
            "b".into(),
            l(&[("kubernetes.io/metadata.name", "b"), ("team", "x")]),
        ),
        ("c".into(), l(&[("kubernetes.io/metadata.name", "c")])),
    ]
    .into()
}

fn policy(ns: &str, name: &str, spec: Value) -> Arc<NetworkPolicy> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .unwrap(),
    )
}

fn want(policies: &[Arc<NetworkPolicy>]) -> Wanted {
    let pods = cluster();
    let ns = namespaces();
    wanted(&Input {
        pods: &pods,
        namespaces: &ns,
        policies,
    })
}

fn addrs(w: &Wanted, set: &str) -> BTreeSet<String> {
    w.set(set)
        .map(|e| match e {
            Elem::Addr(a) => a.to_string(),
            Elem::AddrPort(a, p, n) => format!("{a}.{p}.{n}"),
        })
        .collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn who_is_isolated() {
    struct Case {
        what: &'static str,
        spec: Value,
        ingress: &'static [&'static str],
        egress: &'static [&'static str],
    }
    let cases = [
        Case {
            what: "default deny ingress: every local pod of the namespace, not remote ones",
            spec: json!({"podSelector": {}}),
            ingress: &["10.244.1.2", "10.244.1.3"],
            egress: &[],
        },
        Case {
            what: "a missing podSelector is every pod",
            spec: json!({"policyTypes": ["Ingress"]}),
            ingress: &["10.244.1.2", "10.244.1.3"],
            egress: &[],
        },
        Case {
            what: "a pod selector",
            spec: json!({"podSelector": {"matchLabels": {"app": "web"}}}),
            ingress: &["10.244.1.2"],
            egress: &[],
        },
        Case {
            what: "egress rules and no policyTypes: both types",
            spec: json!({"podSelector": {}, "egress": [{}]}),
            ingress: &["10.244.1.2", "10.244.1.3"],
            egress: &["10.244.1.2", "10.244.1.3"],
        },
        Case {
            what: "an empty egress list and no policyTypes: ingress only",
            spec: json!({"podSelector": {}, "egress": []}),
            ingress: &["10.244.1.2", "10.244.1.3"],
            egress: &[],
        },
        Case {
            what: "policyTypes Egress only: ingress rules ignored",
            spec: json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}),
            ingress: &[],
            egress: &["10.244.1.2", "10.244.1.3"],
        },
        Case {
            what: "an invalid selector selects nothing",
            spec: json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
            ingress: &[],
            egress: &[],
        },
    ];
    for c in cases {
        let w = want(&[policy("a", "p", c.spec)]);
        assert_eq!(addrs(&w, INGRESS_ISOLATED), set_of(c.ingress), "{}", c.what);
        assert_eq!(addrs(&w, EGRESS_ISOLATED), set_of(c.egress), "{}", c.what);
        assert!(addrs(&w, PENDING).is_empty());
    }
    let none = want(&[]);
    assert!(none.policies.is_empty() && addrs(&none, INGRESS_ISOLATED).is_empty());
}

#[test]
fn peers_by_selector() {
    struct Case {
        what: &'static str,
        from: Value,
        peers: &'static [&'static str],
    }
    let cases = [
        Case {
            what: "podSelector: that namespace only, any node",
            from: json!([{"podSelector": {"matchLabels": {"app": "client"}}}]),
            peers: &["10.244.1.3", "10.244.2.3"],
        },
        Case {
            what: "namespaceSelector: every pod of the namespaces",
            from: json!([{"namespaceSelector": {"matchLabels": {"team": "x"}}}]),
            peers: &["10.244.2.4", "10.244.1.5"],
        },
        Case {
            what: "both: pods matching in namespaces matching",
            from: json!([{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["b", "c"]}]},
                          "podSelector": {"matchLabels": {"app": "client"}}}]),
            peers: &["10.244.2.4", "10.244.2.6"],
        },
        Case {
            what: "an empty namespaceSelector: every namespace",
            from: json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}]),
            peers: &["10.244.1.5"],
        },
        Case {
            what: "two peers: their union",
            from: json!([{"podSelector": {"matchLabels": {"app": "web"}}},
                         {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "c"}}}]),
            peers: &["10.244.1.2", "10.244.2.2", "10.244.2.6"],
        },
    ];
    for c in cases {
        let w = want(&[policy(
            "a",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": c.from}]}),
        )]);
        let r = &w.policies[0].rules[0];
        assert!(!r.all_peers, "{}", c.what);
        assert_eq!(r.ports, [PortMatch::All], "{}", c.what);
        let set = r.peers.as_deref().expect("a peer set");
        assert_eq!(set, "in-peers:a/p:0");
        assert_eq!(addrs(&w, set), set_of(c.peers), "{}", c.what);
    }
}

#[test]
fn ip_blocks_and_empty_rules() {
    let w = want(&[policy(
        "a",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8", "except": ["10.1.0.0/16", "fd00::/64"]}},
                                  {"ipBlock": {"cidr": "fd00::/8"}}]},
                        {}],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": []}]}),
    )]);
    let ing = &w.policies[0];
    assert_eq!(ing.dir, Dir::Ingress);
    assert_eq!(ing.targets, "in-targets:a/p");
    let r = &ing.rules[0];
    assert!(r.peers.is_none() && !r.all_peers);
    // Each block keeps the excepts of its own family (the other's cannot be inside it); an
    // IPv6 block is written into the ip6 table only.
    assert_eq!(
        r.blocks,
        [
            Block {
                chain: "in:a/p:0:b0".into(),
                cidr: (ip("10.0.0.0"), 8),
                except: vec![(ip("10.1.0.0"), 16)],
            },
            Block {
                chain: "in:a/p:0:b1".into(),
                cidr: (ip("fd00::"), 8),
                except: vec![],
            }
        ]
    );
    // No `from`: every peer; no ports: every port.
    let all = &ing.rules[1];
    assert!(all.all_peers && all.peers.is_none() && all.ports == [PortMatch::All]);
    let eg = &w.policies[1];
    assert_eq!(eg.dir, Dir::Egress);
    assert_eq!(eg.rules[0].blocks[0].cidr, (ip("0.0.0.0"), 0));
    assert_eq!(eg.rules[0].ports, [PortMatch::All]);

    // Ingress with no rules at all: isolated, nothing allowed.
    let deny = want(&[policy("a", "deny", json!({"podSelector": {}}))]);
    assert!(deny.policies[0].rules.is_empty());
}

#[test]
fn ports_numbered_ranged_and_named() {
    let ports = json!([{"port": 80, "protocol": "TCP"}, {"port": 8000, "endPort": 8100},
                       {"protocol": "UDP"}, {"port": "http"}, {"port": "dns", "protocol": "UDP"},
                       {"port": "dns"}, {"port": 1, "protocol": "ICMP"}]);
    let w = want(&[policy(
        "a",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": ports}], "egress": [{"ports": [{"port": "http"}]}]}),
    )]);
    let r = &w.policies[0].rules[0];
    assert_eq!(
        r.ports,
        [
            PortMatch::Port(TCP, 80),
            PortMatch::Range(TCP, 8000, 8100),
            PortMatch::Proto(UDP),
            PortMatch::Named("in-port:a/p:0:3".into()),
            PortMatch::Named("in-port:a/p:0:4".into()),
            PortMatch::Named("in-port:a/p:0:5".into()),
        ],
        "an unknown protocol matches nothing"
    );
    // Ingress: the name on the policy's own (local) pods, by protocol.
    assert_eq!(addrs(&w, "in-port:a/p:0:3"), set_of(&["10.244.1.2.6.8080"]));
    assert_eq!(addrs(&w, "in-port:a/p:0:4"), set_of(&["10.244.1.2.17.53"]));
    assert!(
        addrs(&w, "in-port:a/p:0:5").is_empty(),
        "dns is UDP, the entry TCP"
    );
    // Egress: the name on any destination pod.
    assert_eq!(addrs(&w, "eg-port:a/p:0:0").len(), 7);
    assert!(addrs(&w, "eg-port:a/p:0:0").contains("10.244.2.6.6.8080"));
}

#[test]
fn policies_add_up() {
    let w = want(&[
        policy(
            "a",
            "web-from-clients",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
        ),
        policy(
            "a",
            "all-from-b",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}]}),
        ),
    ]);
    // Each policy jumps to its own chain for its own pods; one of them accepting is enough.
    assert_eq!(w.policies.len(), 2);
    assert_eq!(
        addrs(&w, "in-targets:a/web-from-clients"),
        set_of(&["10.244.1.2"])
    );
    assert_eq!(
        addrs(&w, "in-targets:a/all-from-b"),
        set_of(&["10.244.1.2", "10.244.1.3"])
    );
    assert_eq!(
        addrs(&w, INGRESS_ISOLATED),
        set_of(&["10.244.1.2", "10.244.1.3"])
    );
}

#[test]
fn pod_churn_is_elements_and_policy_changes_are_layouts() {
    let p = [policy(
        "a",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": "http"}]}]}),
    )];
    let ns = namespaces();
    let mut pods = cluster();
    let before = wanted(&Input {
        pods: &pods,
        namespaces: &ns,
        policies: &p,
    });
    pods.push(pod("a", "web-2", &[("app", "web")], "10.244.1.9", true));
    pods.retain(|q| q.name != "remote-client");
    let after = wanted(&Input {
        pods: &pods,
        namespaces: &ns,
        policies: &p,
    });
    let d = diff(&before, &after).expect("the same layout");
    assert_eq!(
        d["in-peers:a/p:0"],
        (vec![Elem::Addr(ip("10.244.2.3"))], vec![])
    );
    assert_eq!(
        d["in-port:a/p:0:0"],
        (vec![], vec![Elem::AddrPort(ip("10.244.1.9"), TCP, 8080)])
    );
    assert!(d.contains_key(INGRESS_ISOLATED) && d.contains_key("in-targets:a/p"));
    assert!(diff(&after, &after).unwrap().is_empty());

    let changed = [policy(
        "a",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 81}]}]}),
    )];
    let after2 = wanted(&Input {
        pods: &pods,
        namespaces: &ns,
        policies: &changed,
    });
    assert!(diff(&after, &after2).is_none());
}

#[test]
fn long_names_are_shortened() {
    let name = "n".repeat(253);
    let w = want(&[policy("a", &name, json!({"podSelector": {}}))]);
    let t = &w.policies[0].targets;
    assert!(
        t.len() < 220 && t.starts_with("in-targets:a/nnn") && t.contains('~'),
        "{t}"
    );
}
