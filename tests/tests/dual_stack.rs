//! End-to-end: two-node dual-stack clusters (see `Cluster::start_dual_stack`). Pods get an IPv4
//! and an IPv6 address from their node's podCIDRs, reach pods on the other node in both
//! families with their own source address, and leave the cluster masqueraded. IPv4 peers on
//! the node's subnet go host-gw; IPv6 ranges always go through the VXLAN device (the underlay
//! is IPv4, and Linux has no IPv6 route via an IPv4 gateway).

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnetwork::IpNetwork;
use podlet_e2e::cluster::{ask_peer, echo_server, peer_is, Cluster};
use serde_json::Value;

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let net: IpNetwork = cidr.parse().unwrap();
    net.contains(ip.parse::<IpAddr>().unwrap())
}

/// `status.podIPs`, in order.
fn pod_ips(p: &Value) -> Vec<String> {
    p["status"]["podIPs"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|i| i["ip"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn routes(c: &Cluster, i: usize, family: &str) -> String {
    c.sh(i, &format!("ip -o {family} route show proto 158"))
        .stdout
}

/// Both nodes' ranges (IPv4 first, as --cluster-cidr lists it) and their default networks.
fn cidrs(c: &Cluster) -> [Vec<String>; 2] {
    let all = [c.pod_cidrs(1), c.pod_cidrs(2)];
    for (i, l) in all.iter().enumerate() {
        assert_eq!(l.len(), 2, "n{}: {l:?}", i + 1);
        assert!(
            l[0].starts_with("10.244.") && l[1].starts_with("fd00:10:244:"),
            "{l:?}"
        );
        let net = c.wait_network(i + 1, &l[0]);
        let ipam = &net["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][1][0]["subnet"], l[1].as_str(), "{net}");
        assert_eq!(
            ipam["routes"],
            serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
    }
    let [a, b] = all;
    assert_ne!(a, b);
    [a, b]
}

/// Pods on both nodes: addresses from their node's ranges in order; pod -> pod across nodes in
/// both families keeps the client's address; pod -> outside is masqueraded in both.
fn check_traffic(c: &Cluster, cidrs: &[Vec<String>; 2]) {
    let server = c.run_pod(2, "server", false, &echo_server(8080));
    let client = c.run_pod(1, "client", false, "sleep 100000");
    let (sips, cips) = (pod_ips(&server), pod_ips(&client));
    for (ips, cidrs, what) in [(&sips, &cidrs[1], "server"), (&cips, &cidrs[0], "client")] {
        assert_eq!(ips.len(), 2, "{what}: {ips:?}");
        assert!(in_cidr(&ips[0], &cidrs[0]), "{what}: {ips:?} in {cidrs:?}");
        assert!(in_cidr(&ips[1], &cidrs[1]), "{what}: {ips:?} in {cidrs:?}");
    }
    assert_eq!(client["status"]["podIP"], cips[0].as_str(), "{client}");
    // The pod's own view agrees: both addresses on its eth0.
    let addrs = c.exec(1, "client", "ip addr show dev eth0").stdout;
    assert!(
        cips.iter().all(|ip| addrs.contains(&format!("{ip}/"))),
        "{addrs}"
    );
    for (family, sip, cip) in [("IPv4", &sips[0], &cips[0]), ("IPv6", &sips[1], &cips[1])] {
        let out = c.wait(&format!("{family} pod -> pod across nodes"), || {
            let o = c.exec(1, "client", &ask_peer(sip, 8080));
            o.stdout.contains("peer=").then_some(o)
        });
        assert!(
            peer_is(&out, cip),
            "{family} pod -> pod keeps {cip}: {out:?}"
        );
    }
    let _outside = c.serve_outside(8082);
    for (family, dst, node) in [
        ("IPv4", format!("10.200.{}.1", c.subnets[0]), c.ip(1)),
        ("IPv6", c.switch_ip6(1), c.ip6(1)),
    ] {
        let out = c.wait(&format!("the outside server over {family}"), || {
            let o = c.exec(1, "client", &ask_peer(&dst, 8082));
            o.stdout.contains("peer=").then_some(o)
        });
        assert!(
            peer_is(&out, &node),
            "{family} pod -> outside is masqueraded to {node}: {out:?}"
        );
    }
}

/// Deleting the pods releases both of their addresses.
fn check_release(c: &Cluster) {
    let client = c.get_json(&["pod", "client"]).unwrap();
    let ips = pod_ips(&client);
    let out = c.kubectl(&["delete", "pod", "client", "--wait=true"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dir = c.node(1).path("cni/cache/networks/podlet");
    c.wait("n1's IPAM to release the client's addresses", || {
        let held: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        ips.iter().all(|ip| !held.contains(ip)).then_some(())
    });
}

#[test]
fn dual_stack_pods_on_one_subnet_use_host_gw_for_ipv4_and_vxlan_for_ipv6() {
    let Some(c) = Cluster::start_dual_stack(&[1, 1], &[]) else {
        return;
    };
    let [c1, c2] = cidrs(&c);
    c.wait("n1's routes to n2's pods in both families", || {
        let (r4, r6) = (routes(&c, 1, "-4"), routes(&c, 1, "-6"));
        (r4.contains(&format!("{} via {} dev eth0", c2[0], c.ip(2)))
            && r6.contains(&format!("{} via {} dev podlet.1", c2[1], vtep(&c2[1])))
            && r6.contains("onlink"))
        .then_some(())
    });
    c.wait("n2's routes to n1's pods in both families", || {
        let (r4, r6) = (routes(&c, 2, "-4"), routes(&c, 2, "-6"));
        (r4.contains(&format!("{} via {} dev eth0", c1[0], c.ip(1)))
            && r6.contains(&format!("{} via {} dev podlet.1", c1[1], vtep(&c1[1]))))
        .then_some(())
    });
    // The VXLAN device carries IPv6 only here: its neighbour is n2's IPv6 VTEP address.
    let neigh = c.sh(1, "ip neigh show dev podlet.1 nud permanent").stdout;
    assert!(neigh.contains(&vtep(&c2[1])), "{neigh}");
    assert!(!neigh.contains(&vtep(&c2[0])), "{neigh}");
    let masq = c.sh(1, "nft list table ip6 podlet-masq");
    assert_eq!(masq.code, 0, "{masq:?}");
    assert!(masq.stdout.contains(&c1[1]), "{}", masq.stdout);
    check_traffic(&c, &[c1, c2]);
    check_release(&c);
}

/// The VTEP address of a range: its first address.
fn vtep(cidr: &str) -> String {
    cidr.parse::<IpNetwork>().unwrap().network().to_string()
}

#[test]
fn dual_stack_pods_on_two_subnets_use_vxlan_for_both_families_and_cleanup_removes_both() {
    let Some(mut c) = Cluster::start_dual_stack(&[1, 2], &[]) else {
        return;
    };
    let [c1, c2] = cidrs(&c);
    c.wait(
        "n1's VXLAN routes and neighbours for n2 in both families",
        || {
            let (r4, r6) = (routes(&c, 1, "-4"), routes(&c, 1, "-6"));
            let neigh = c.sh(1, "ip neigh show dev podlet.1 nud permanent").stdout;
            (r4.contains(&format!("{} via {} dev podlet.1", c2[0], vtep(&c2[0])))
                && r6.contains(&format!("{} via {} dev podlet.1", c2[1], vtep(&c2[1])))
                && neigh.contains(&vtep(&c2[0]))
                && neigh.contains(&vtep(&c2[1])))
            .then_some(())
        },
    );
    // Both VTEP addresses on the device, and no link-local address the kernel made itself.
    let addrs = c.sh(1, "ip -o addr show dev podlet.1").stdout;
    assert!(addrs.contains(&format!("{}/32", vtep(&c1[0]))), "{addrs}");
    assert!(addrs.contains(&format!("{}/128", vtep(&c1[1]))), "{addrs}");
    assert!(!addrs.contains("fe80:"), "{addrs}");
    check_traffic(&c, &[c1.clone(), c2]);
    check_release(&c);

    // A restarted agent finds both families in place and changes nothing on n2.
    let events = c.node(2).path("monitor.log");
    let mut monitor = Command::new("nsenter")
        .args(["-t", &c.node(2).holder_pid().to_string(), "-n"])
        .args(["ip", "-o", "monitor", "route", "neigh", "link", "address"])
        .stdout(std::fs::File::create(&events).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let masq_lines = |c: &Cluster| {
        c.node(2)
            .agent_log()
            .matches("pod masquerade rule set")
            .count()
    };
    let runs = masq_lines(&c);
    c.node_mut(2).kill_agent();
    c.node_mut(2).start_agent();
    c.wait("n2's agent to reconcile after its restart", || {
        (masq_lines(&c) > runs).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let seen = std::fs::read_to_string(&events).unwrap();
    let flaps: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains("podlet.1") || l.contains(&c1[0]) || l.contains(&c1[1]))
        .collect();
    assert!(flaps.is_empty(), "changed by the restart: {flaps:?}");

    // `podlet cleanup` on n2, its agent stopped: routes of both families and both masquerade
    // tables go.
    c.node_mut(2).kill_agent();
    assert!(routes(&c, 2, "-6").contains(&c1[1]));
    let out = c.node(2).podlet(&["cleanup"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&c1[1]), "{out:?}");
    assert_eq!(routes(&c, 2, "-4"), "");
    assert_eq!(routes(&c, 2, "-6"), "");
    let tables = c.sh(2, "nft list tables").stdout;
    assert!(!tables.contains("podlet-masq"), "{tables}");
}
