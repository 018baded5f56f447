//! `plan`'s computations for both IP families.

use super::*;
use crate::overlay::link;

fn under() -> link::Underlay {
    link::Underlay {
        index: 2,
        name: "eth0".into(),
        mtu: 1500,
        ip: "10.100.1.11".parse().unwrap(),
        nets: vec!["10.100.1.0/24".parse().unwrap()],
    }
}

fn peer(name: &str, ip: &str, cidr: &str, mac: Option<u8>) -> Peer {
    Peer {
        name: name.into(),
        cidrs: vec![cidr.parse().unwrap()],
        ip: ip.parse().unwrap(),
        vtep: mac.map(|m| (ip.parse().unwrap(), [2, 0, 0, 0, 0, m])),
    }
}

#[test]
fn auto_uses_host_gw_on_link_and_vxlan_beyond() {
    let own = ["10.244.1.0/24".parse().unwrap()];
    let peers = [
        peer("near", "10.100.1.12", "10.244.2.0/24", Some(2)),
        peer("far", "10.100.2.13", "10.244.3.0/24", Some(3)),
        peer("nomac", "10.100.2.14", "10.244.4.0/24", None),
        peer("same", "10.100.1.15", "10.244.1.0/24", Some(5)),
    ];
    let p = plan(Backend::Auto, &under(), Some(9), &own, &peers);
    assert_eq!(
        p.routes,
        vec![
            Route {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: "10.100.1.12".parse().unwrap(),
                oif: 2,
                onlink: false
            },
            Route {
                dst: "10.244.3.0/24".parse().unwrap(),
                via: "10.244.3.0".parse().unwrap(),
                oif: 9,
                onlink: true
            },
        ]
    );
    assert_eq!(
        p.fdb,
        BTreeMap::from([([2, 0, 0, 0, 0, 3], "10.100.2.13".parse().unwrap())])
    );
    assert_eq!(
        p.neigh,
        BTreeMap::from([("10.244.3.0".parse().unwrap(), [2, 0, 0, 0, 0, 3])])
    );
    assert!(p.skipped["nomac"].contains(VTEP_MAC), "{:?}", p.skipped);
    assert!(p.skipped["same"].contains("overlaps"), "{:?}", p.skipped);
    // host-gw alone cannot reach the far peer; vxlan alone carries the near one too.
    let p = plan(Backend::HostGw, &under(), None, &own, &peers);
    assert_eq!(p.routes.len(), 1);
    assert!(p.skipped["far"].contains("not on a subnet"));
    let p = plan(Backend::Vxlan, &under(), Some(9), &own, &peers);
    assert!(p.routes.iter().all(|r| r.oif == 9 && r.onlink));
    assert_eq!(p.routes.len(), 2);
    assert!(plan(Backend::None, &under(), None, &own, &peers)
        .routes
        .is_empty());
}

fn dual_peer(name: &str, ip: &str, v4: &str, v6: &str, mac: Option<u8>) -> Peer {
    Peer {
        cidrs: vec![v4.parse().unwrap(), v6.parse().unwrap()],
        ..peer(name, ip, v4, mac)
    }
}

#[test]
fn ipv6_pod_cidrs_go_through_vxlan_with_a_neighbour_in_their_family_even_beside_host_gw() {
    let own = [
        "10.244.1.0/24".parse().unwrap(),
        "fd00:10:244:1::/64".parse().unwrap(),
    ];
    let peers = [
        dual_peer(
            "near",
            "10.100.1.12",
            "10.244.2.0/24",
            "fd00:10:244:2::/64",
            Some(2),
        ),
        dual_peer(
            "far",
            "10.100.2.13",
            "10.244.3.0/24",
            "fd00:10:244:3::/64",
            Some(3),
        ),
        dual_peer(
            "nomac",
            "10.100.1.14",
            "10.244.4.0/24",
            "fd00:10:244:4::/64",
            None,
        ),
        // Only its IPv6 range collides: the whole peer is left out.
        dual_peer(
            "same6",
            "10.100.1.15",
            "10.244.5.0/24",
            "fd00:10:244:1::/64",
            Some(5),
        ),
    ];
    let route = |dst: &str, via: &str, oif: u32, onlink: bool| Route {
        dst: dst.parse().unwrap(),
        via: via.parse().unwrap(),
        oif,
        onlink,
    };
    let mac = |m: u8| [2, 0, 0, 0, 0, m];
    let p = plan(Backend::Auto, &under(), Some(9), &own, &peers);
    let mut want = vec![
        route("10.244.2.0/24", "10.100.1.12", 2, false),
        route("fd00:10:244:2::/64", "fd00:10:244:2::", 9, true),
        route("10.244.3.0/24", "10.244.3.0", 9, true),
        route("fd00:10:244:3::/64", "fd00:10:244:3::", 9, true),
        // The near peer without a VTEP still gets its IPv4 range by host-gw.
        route("10.244.4.0/24", "10.100.1.14", 2, false),
    ];
    want.sort();
    assert_eq!(p.routes, want);
    assert_eq!(
        p.fdb,
        BTreeMap::from([
            (mac(2), "10.100.1.12".parse().unwrap()),
            (mac(3), "10.100.2.13".parse().unwrap()),
        ])
    );
    assert_eq!(
        p.neigh,
        BTreeMap::from([
            ("fd00:10:244:2::".parse().unwrap(), mac(2)),
            ("10.244.3.0".parse().unwrap(), mac(3)),
            ("fd00:10:244:3::".parse().unwrap(), mac(3)),
        ])
    );
    assert_eq!(p.skipped.len(), 2, "{:?}", p.skipped);
    assert!(p.skipped["nomac"].contains(VTEP_MAC), "{:?}", p.skipped);
    assert!(
        p.skipped["same6"].contains("fd00:10:244:1::/64 overlaps"),
        "{:?}",
        p.skipped
    );

    // host-gw alone: IPv4 routes only, and it says why the IPv6 range has none.
    let p = plan(Backend::HostGw, &under(), None, &own, &peers[..1]);
    assert_eq!(p.routes, [route("10.244.2.0/24", "10.100.1.12", 2, false)]);
    assert!(p.neigh.is_empty() && p.fdb.is_empty());
    assert!(
        p.skipped["near"].contains("an IPv6 route cannot go via the IPv4 node IP 10.100.1.12"),
        "{:?}",
        p.skipped
    );
    // Auto without a VXLAN device: the same, saying so.
    let p = plan(Backend::Auto, &under(), None, &own, &peers[..1]);
    assert_eq!(p.routes.len(), 1);
    assert!(p.skipped["near"].contains("no podlet.1"), "{:?}", p.skipped);
}

#[test]
fn every_family_of_the_cluster_and_its_nodes_is_kept_from_masquerade() {
    let node = |name: &str, ip: &str, cidrs: &[&str]| {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .unwrap();
        (name.to_string(), n)
    };
    let nodes = BTreeMap::from([
        node(
            "n1",
            "10.100.1.11",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
        ),
        // A --pod-cidr outside the cluster CIDRs.
        node("n2", "10.100.1.12", &["10.99.0.0/24", "fd00:99::/64"]),
    ]);
    let cluster = DualStackCidrs::parse("cluster-cidr", "10.244.0.0/16,fd00:10:244::/56").unwrap();
    let keep: Vec<String> = unmasqueraded(&cluster, &nodes)
        .iter()
        .map(ToString::to_string)
        .collect();
    for want in [
        "10.244.0.0/16",
        "fd00:10:244::/56",
        "10.244.1.0/24",
        "fd00:10:244:1::/64",
        "10.99.0.0/24",
        "fd00:99::/64",
        "10.100.1.11/32",
        "10.100.1.12/32",
    ] {
        assert!(keep.contains(&want.to_string()), "{want}: {keep:?}");
    }
    assert_eq!(keep.len(), 8, "{keep:?}");
}
