//! The netlink layer against the kernel, in a throwaway network namespace (root needed; skipped
//! only with PODLET_SKIP_PRIVILEGED=1).

use std::net::Ipv4Addr;
use std::time::Instant;

use super::rules::{self, ServicePort, Wanted};
use super::*;
use crate::testns::Netns;

fn port(ip: [u8; 4], eps: &[([u8; 4], u16)]) -> ServicePort {
    ServicePort {
        cluster_ip: Ipv4Addr::from(ip).into(),
        proto: 6,
        port: 80,
        endpoints: eps
            .iter()
            .map(|(i, p)| (Ipv4Addr::from(*i).into(), *p))
            .collect(),
        local_endpoints: Vec::new(),
        internal_local: false,
        external_local: false,
        affinity: None,
        node_port: None,
        external_ips: Vec::new(),
    }
}

fn many(n: u32) -> Wanted {
    let mut w = Wanted::default();
    for i in 0..n {
        let [_, _, a, b] = i.to_be_bytes();
        w.ports.insert(
            format!("ns{}/svc{i}/tcp/http", i % 10),
            port(
                [10, 97, a, b],
                &[([10, 250, a, b], 8080), ([10, 251, a, b], 8080)],
            ),
        );
    }
    w
}

#[test]
fn full_and_incremental_syncs_and_cleanup() {
    let Some(ns) = Netns::new("proxy") else {
        return;
    };
    let scope = rules::tests::scope();
    let mut nl = ns.run(Session::new).unwrap();
    let mut w = Wanted::default();
    w.ports.insert(
        "default/web/tcp/http".into(),
        port(
            [10, 96, 0, 50],
            &[([10, 244, 1, 2], 8080), ([10, 244, 2, 2], 8080)],
        ),
    );
    w.ports
        .insert("default/empty/tcp/".into(), port([10, 96, 0, 51], &[]));
    // NodePort services: the same, on the node's addresses at their node ports.
    w.ports.get_mut("default/web/tcp/http").unwrap().node_port = Some(30080);
    w.ports.get_mut("default/empty/tcp/").unwrap().node_port = Some(30081);
    ns.run(|| sync(&mut nl, None, &w, &scope)).unwrap();
    // Twice: a full sync replaces the table whether or not it is there.
    ns.run(|| sync(&mut nl, None, &w, &scope)).unwrap();
    let l = ns.nft_list(table::TABLE);
    for want in [
        "10.96.0.50 . tcp . 80 : goto service-",
        "10.96.0.51 . tcp . 80 : goto reject-chain",
        "numgen random mod 2 vmap @endpoints-",
        "dnat to 10.244.2.2:8080",
        "ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "ip daddr 10.96.0.10 return",
        "ip daddr 10.96.0.0/12 drop",
        "masquerade fully-random",
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
        "tcp . 30080 : goto external-",
        "tcp . 30081 : goto reject-chain",
    ] {
        assert!(l.contains(want), "{want:?} not in\n{l}");
    }

    // Endpoints change, one port goes, one comes, the empty one gets an endpoint.
    let mut w2 = w.clone();
    w2.ports.insert(
        "default/web/tcp/http".into(),
        port(
            [10, 96, 0, 50],
            &[
                ([10, 244, 2, 2], 8080),
                ([10, 244, 3, 2], 8080),
                ([10, 244, 4, 2], 80),
            ],
        ),
    );
    w2.ports.insert(
        "default/empty/tcp/".into(),
        port([10, 96, 0, 51], &[([10, 244, 1, 9], 80)]),
    );
    w2.ports.insert(
        "default/new/tcp/".into(),
        port([10, 96, 0, 52], &[([10, 244, 1, 7], 80)]),
    );
    ns.run(|| sync(&mut nl, Some(&w), &w2, &scope)).unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(l.contains("numgen random mod 3 vmap"), "{l}");
    // web lost its node port (the port removed and added again, its external chain gone).
    assert!(!l.contains("30080") && !l.contains("external-"), "{l}");
    assert!(!l.contains("10.244.1.2"), "gone endpoint still there:\n{l}");
    assert!(l.contains("10.96.0.51 . tcp . 80 : goto service-"), "{l}");
    assert!(
        !l.contains("reject-chain }") && l.contains("10.96.0.52"),
        "{l}"
    );
    let mut w3 = w2.clone();
    w3.ports.remove("default/new/tcp/");
    w3.ports
        .insert("default/empty/tcp/".into(), port([10, 96, 0, 51], &[]));
    ns.run(|| sync(&mut nl, Some(&w2), &w3, &scope)).unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(
        !l.contains("10.96.0.52") && !l.contains("10.244.1.7"),
        "{l}"
    );
    assert!(
        l.contains("10.96.0.51 . tcp . 80 : goto reject-chain"),
        "{l}"
    );

    // A big full sync in one batch, then one endpoint change in it.
    let big = many(5000);
    let t = Instant::now();
    ns.run(|| sync(&mut nl, None, &big, &scope)).unwrap();
    let full = t.elapsed();
    let mut big2 = big.clone();
    big2.ports.insert(
        "ns3/svc3/tcp/http".into(),
        port([10, 97, 0, 3], &[([10, 250, 0, 3], 8080)]),
    );
    let t = Instant::now();
    ns.run(|| sync(&mut nl, Some(&big), &big2, &scope)).unwrap();
    eprintln!(
        "5000 service ports: full sync {full:?}, one endpoint change {:?}",
        t.elapsed()
    );
    assert!(ns
        .nft_list(table::TABLE)
        .contains("10.97.19.135 . tcp . 80"));

    let removed = ns.run(cleanup).unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(ns.run(cleanup).unwrap().is_empty());
}

#[test]
fn affinity_and_local_policies_in_the_kernel() {
    let Some(ns) = Netns::new("proxy") else {
        return;
    };
    let scope = rules::tests::scope();
    let mut nl = ns.run(Session::new).unwrap();
    let name = "default/web/tcp/http";
    let mut p = port(
        [10, 96, 0, 50],
        &[([10, 244, 1, 2], 8080), ([10, 244, 2, 2], 8080)],
    );
    p.affinity = Some(60);
    p.node_port = Some(30080);
    p.external_local = true;
    p.internal_local = true;
    p.local_endpoints = vec![(Ipv4Addr::new(10, 244, 1, 2).into(), 8080)];
    let mut w = Wanted::default();
    w.ports.insert(name.into(), p.clone());
    ns.run(|| sync(&mut nl, None, &w, &scope)).unwrap();
    let l = ns.nft_list(table::TABLE);
    for want in [
        "10.96.0.50 . tcp . 80 : goto local-",
        "tcp . 30080 : goto external-",
        "ip saddr 10.244.0.0/16 goto service-",
        "fib saddr type local jump mark-for-masquerade",
        "fib saddr type local goto service-",
        "goto local-",
        "numgen random mod 1 vmap @local-endpoints-",
        "update @affinity-",
        "flags dynamic,timeout",
        "timeout 1m",
    ] {
        assert!(l.contains(want), "{want:?} not in\n{l}");
    }
    let aff = format!(
        "ip saddr @{} goto endpoint-",
        rules::affinity_set(name, p.endpoints[1])
    );
    assert!(l.contains(&aff), "{aff:?} not in\n{l}");

    // A second remote endpoint: chains refilled in place, the new endpoint's set made.
    let mut p2 = p.clone();
    p2.endpoints
        .push((Ipv4Addr::new(10, 244, 3, 2).into(), 8080));
    let mut w2 = Wanted::default();
    w2.ports.insert(name.into(), p2.clone());
    ns.run(|| sync(&mut nl, Some(&w), &w2, &scope)).unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(l.contains("numgen random mod 3 vmap @endpoints-"), "{l}");
    assert!(
        l.contains(&format!(
            "set {}",
            rules::affinity_set(name, p2.endpoints[2])
        )),
        "{l}"
    );

    // The local endpoint goes: no local chain; the ClusterIP (internal Local) and what is
    // not short-circuited of the node port dropped here.
    let mut p3 = p2.clone();
    p3.endpoints.remove(0);
    p3.local_endpoints.clear();
    let mut w3 = Wanted::default();
    w3.ports.insert(name.into(), p3);
    ns.run(|| sync(&mut nl, Some(&w2), &w3, &scope)).unwrap();
    let l = ns.nft_list(table::TABLE);
    // The external chain stays: it short-circuits pods and the node to the cluster's
    // endpoints; the rest falls through to the drop of the no-endpoint maps.
    assert!(!l.contains("local-"), "{l}");
    assert!(l.contains("tcp . 30080 : goto external-"), "{l}");
    assert!(l.contains("10.96.0.50 . tcp . 80 : drop"), "{l}");
    assert!(l.contains("tcp . 30080 : drop"), "{l}");
    assert!(
        !l.contains(&rules::affinity_set(name, p.endpoints[0])),
        "{l}"
    );

    // And back, then everything goes.
    ns.run(|| sync(&mut nl, Some(&w3), &w, &scope)).unwrap();
    assert!(ns.nft_list(table::TABLE).contains("goto local-"));
    ns.run(|| sync(&mut nl, Some(&w), &Wanted::default(), &scope))
        .unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(
        !l.contains("set affinity-") && !l.contains("chain endpoint-"),
        "{l}"
    );
}

#[test]
fn endpoint_maps_grow_past_their_size_and_shrink() {
    let Some(ns) = Netns::new("proxy") else {
        return;
    };
    let scope = rules::tests::scope();
    let mut nl = ns.run(Session::new).unwrap();
    let with = |n: u8| {
        let eps: Vec<([u8; 4], u16)> = (0..n).map(|i| ([10, 244, 1, i + 2], 8080)).collect();
        let mut w = Wanted::default();
        w.ports
            .insert("default/web/tcp/".into(), port([10, 96, 0, 50], &eps));
        w
    };
    let (two, forty, three) = (with(2), with(40), with(3));
    ns.run(|| sync(&mut nl, None, &two, &scope)).unwrap();
    assert!(ns.nft_list(table::TABLE).contains("size 16"));
    // Past the map's size (the kernel refuses more elements than it): the port is remade.
    ns.run(|| sync(&mut nl, Some(&two), &forty, &scope))
        .unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(l.contains("numgen random mod 40 vmap @endpoints-"), "{l}");
    assert!(
        l.contains("size 64") && l.contains("dnat to 10.244.1.41:8080"),
        "{l}"
    );
    ns.run(|| sync(&mut nl, Some(&forty), &three, &scope))
        .unwrap();
    let l = ns.nft_list(table::TABLE);
    assert!(
        l.contains("numgen random mod 3 vmap") && l.contains("size 16"),
        "{l}"
    );
    assert!(!l.contains("10.244.1.41"), "{l}");
    // What nft lists loads back (the maps' typeof).
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name(), "nft", "-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(
                l.replace("table ip podlet-proxy", "table ip podlet-proxy-copy")
                    .as_bytes(),
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_ip6_table_in_the_kernel() {
    let Some(ns) = Netns::new("proxy") else {
        return;
    };
    let scope = rules::tests::scope_v6();
    let mut nl = Session::default();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let name = "default/web/tcp/http";
    let p = ServicePort {
        cluster_ip: ip("fd00:10:96::50"),
        proto: 6,
        port: 80,
        endpoints: vec![
            (ip("fd00:10:244:1::2"), 8080),
            (ip("fd00:10:244:2::2"), 8080),
        ],
        local_endpoints: vec![(ip("fd00:10:244:1::2"), 8080)],
        internal_local: false,
        external_local: true,
        affinity: Some(60),
        node_port: Some(30080),
        external_ips: vec![ip("2001:db8::5")],
    };
    let mut w = Wanted::default();
    w.ports.insert(name.into(), p.clone());
    w.ports.insert(
        "default/empty/udp/dns".into(),
        ServicePort {
            cluster_ip: ip("fd00:10:96::51"),
            proto: 17,
            port: 53,
            endpoints: vec![],
            local_endpoints: vec![],
            internal_local: false,
            external_local: false,
            affinity: None,
            node_port: None,
            external_ips: vec![],
        },
    );
    ns.run(|| sync(&mut nl, None, &w, &scope)).unwrap();
    let l = ns.nft_list_family("ip6", table::TABLE);
    for want in [
        "fd00:10:96::50 . tcp . 80 : goto service-",
        "2001:db8::5 . tcp . 80 : goto external-",
        "fd00:10:96::51 . udp . 53 : goto reject-chain",
        "tcp . 30080 : goto external-",
        "ip6 daddr != ::1 meta l4proto . th dport vmap @service-nodeports",
        "ip6 daddr fd00:10:96::50 ip6 saddr != fd00:10:244::/56 jump mark-for-masquerade",
        "ip6 saddr fd00:10:244::/56 goto service-",
        "ip6 saddr fd00:10:244:2::2 jump mark-for-masquerade",
        "update @affinity-",
        "dnat to [fd00:10:244:2::2]:8080",
        "numgen random mod 2 vmap @endpoints-",
        "ip6 daddr fd00:10:96::/112 drop",
        "masquerade fully-random",
    ] {
        assert!(l.contains(want), "{want:?} not in\n{l}");
    }
    // Nothing of it in the ip table.
    assert!(!ns.nft_list_family("ip", table::TABLE).contains("fd00"));

    // One endpoint goes: refilled in place.
    let mut w2 = w.clone();
    w2.ports.get_mut(name).unwrap().endpoints.pop();
    ns.run(|| sync(&mut nl, Some(&w), &w2, &scope)).unwrap();
    let l = ns.nft_list_family("ip6", table::TABLE);
    assert!(l.contains("numgen random mod 1 vmap @endpoints-"), "{l}");
    assert!(!l.contains("fd00:10:244:2::2"), "{l}");

    // Cleanup removes it with the ip one.
    assert_eq!(ns.run(cleanup).unwrap().len(), 1);
    assert!(ns.nft_list_family("ip6", table::TABLE).is_empty());
}
