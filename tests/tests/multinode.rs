//! End-to-end: several nodes on this machine (see `podlet_e2e::cluster`), pods on different
//! nodes talking TCP, with the source address checked by a server that echoes its peer's.

use std::process::{Command, Stdio};
use std::time::Duration;

use podlet_e2e::cluster::{ask_peer, echo_server, peer_is, Cluster};
use serde_json::Value;

fn ip_of(p: &Value) -> String {
    p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let net: ipnet_lite::Net = cidr.parse().unwrap();
    net.contains(ip.parse().unwrap())
}

/// A tiny IPv4 CIDR, to keep the test crate free of a dependency for one check.
mod ipnet_lite {
    pub struct Net(u32, u32);
    impl std::str::FromStr for Net {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let (a, p) = s.split_once('/').ok_or(s.to_string())?;
            let a: std::net::Ipv4Addr = a.parse().map_err(|_| s.to_string())?;
            let p: u32 = p.parse().map_err(|_| s.to_string())?;
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            Ok(Net(u32::from(a) & mask, mask))
        }
    }
    impl Net {
        pub fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
            u32::from(ip) & self.1 == self.0
        }
    }
}

/// Pod -> pod and pod -> node across nodes keep the pod's address; traffic leaving the cluster
/// is masqueraded to the node's.
fn check_traffic(c: &Cluster) {
    let server = c.run_pod(2, "server", false, &echo_server(8080));
    let client = c.run_pod(1, "client", false, "sleep 100000");
    let (sip, cip) = (ip_of(&server), ip_of(&client));
    let out = c.exec(1, "client", &ask_peer(&sip, 8080));
    assert!(peer_is(&out, &cip), "pod -> pod across nodes: {out:?}");
    c.run_pod(2, "hostserver", true, &echo_server(8081));
    let out = c.exec(1, "client", &ask_peer(&c.ip(2), 8081));
    assert!(peer_is(&out, &cip), "pod -> other node: {out:?}");
    // The switch's own address is outside the cluster: masqueraded to node 1's address.
    let server = c.serve_outside(8082);
    let outside = format!("10.200.{}.1", c.subnets[0]);
    let out = c.wait("the outside server", || {
        let o = c.exec(1, "client", &ask_peer(&outside, 8082));
        o.stdout.contains("peer=").then_some(o)
    });
    drop(server);
    assert!(
        peer_is(&out, &c.ip(1)),
        "pod -> outside the cluster is masqueraded: {out:?}"
    );
}

fn routes(c: &Cluster, i: usize) -> String {
    c.sh(i, "ip -o route show proto 158").stdout
}

#[test]
fn two_nodes_on_one_subnet_get_host_gw_routes_and_keep_pod_source_addresses() {
    // No --pod-cidr: the nodes register without a range and wait for one.
    let Some(c) = Cluster::start(&[1, 1], &[], false) else {
        return;
    };
    // Until a node IPAM controller sets its range, n2 says so and writes no network.
    c.wait("n2 waiting for its podCIDR (or an IPAM controller)", || {
        let n2 = c.get_json(&["node", "n2"])?;
        if n2["spec"]["podCIDR"].is_string() {
            return Some(());
        }
        assert!(!c.node(2).path("cni/net.d/10-podlet.conflist").exists());
        c.node(2)
            .agent_log()
            .contains("waiting for the node IPAM controller to set spec.podCIDR")
            .then_some(())
    });
    let (cidr1, cidr2) = (c.assign_pod_cidr(1), c.assign_pod_cidr(2));
    assert_ne!(cidr1, cidr2);
    let net = c.wait_network(1, &cidr1);
    c.wait_network(2, &cidr2);
    assert!(net["plugins"][0].get("ipMasq").is_none(), "{net}");
    assert!(
        net["plugins"][0].get("mtu").is_some(),
        "auto may use VXLAN: {net}"
    );
    // host-gw both ways, on eth0, via the peer's address.
    let r1 = c.wait("n1's route to n2's pods", || {
        let r = routes(&c, 1);
        r.contains(&format!("{cidr2} via {} dev eth0", c.ip(2)))
            .then_some(r)
    });
    assert_eq!(r1.lines().count(), 1, "{r1}");
    c.wait("n2's route to n1's pods", || {
        routes(&c, 2)
            .contains(&format!("{cidr1} via {} dev eth0", c.ip(1)))
            .then_some(())
    });
    check_traffic(&c);
    let client = c.get_json(&["pod", "client"]).unwrap();
    assert!(in_cidr(&ip_of(&client), &cidr1), "{client}");
    let server = c.get_json(&["pod", "server"]).unwrap();
    assert!(in_cidr(&ip_of(&server), &cidr2), "{server}");
}

fn vxlan_parts(c: &Cluster, i: usize) -> (String, String, String) {
    (
        routes(c, i),
        c.sh(i, "bridge fdb show dev podlet.1").stdout,
        c.sh(i, "ip neigh show dev podlet.1 nud permanent").stdout,
    )
}

fn mac_of(c: &Cluster, i: usize) -> String {
    let out = c.sh(i, "ip -o link show podlet.1");
    out.stdout
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn nodes_on_two_subnets_get_vxlan_which_survives_restarts_goes_with_the_node_and_is_cleaned_up() {
    // --pod-cidr given: registered on the Node as it is.
    let Some(mut c) = Cluster::start(&[1, 2], &[], true) else {
        return;
    };
    let (cidr1, cidr2) = (c.assign_pod_cidr(1), c.assign_pod_cidr(2));
    assert_eq!(
        (cidr1.as_str(), cidr2.as_str()),
        ("10.244.1.0/24", "10.244.2.0/24")
    );
    let net = c.wait_network(2, &cidr2);
    assert_eq!(net["plugins"][0]["mtu"], 1450, "{net}");
    let dev = c.sh(1, "ip -d link show podlet.1").stdout;
    for want in ["vxlan id 1 ", "dstport 8472", "nolearning", "mtu 1450"] {
        assert!(dev.contains(want), "{want}: {dev}");
    }
    assert!(dev.contains(&format!("local {}", c.ip(1))), "{dev}");
    let (mac1, mac2) = (mac_of(&c, 1), mac_of(&c, 2));
    let n2 = c.wait("n2's VTEP annotation", || {
        c.get_json(&["node", "n2"])
            .filter(|n| n["metadata"]["annotations"]["podlet.dev/vtep-mac"] == mac2.as_str())
    });
    assert_eq!(
        n2["metadata"]["annotations"]["podlet.dev/public-ip"],
        c.ip(2).as_str()
    );
    let (vtep1, vtep2) = ("10.244.1.0", "10.244.2.0");
    let (r, fdb, neigh) = c.wait("n1's VXLAN entries for n2", || {
        let (r, fdb, neigh) = vxlan_parts(&c, 1);
        (r.contains(&format!("{cidr2} via {vtep2} dev podlet.1"))
            && r.contains("onlink")
            && fdb.contains(&format!("{mac2} dst {}", c.ip(2)))
            && neigh.contains(&format!("{vtep2} lladdr {mac2} PERMANENT")))
        .then_some((r, fdb, neigh))
    });
    assert_eq!(r.lines().count(), 1, "{r}");
    c.wait("n2's VXLAN entries for n1", || {
        let (r, fdb, neigh) = vxlan_parts(&c, 2);
        (r.contains(&format!("{cidr1} via {vtep1} dev podlet.1"))
            && fdb.contains(&format!("{mac1} dst {}", c.ip(1)))
            && neigh.contains(&format!("{vtep1} lladdr {mac1}")))
        .then_some(())
    });
    check_traffic(&c);

    // A restarted agent finds everything in place and changes nothing: no route, FDB,
    // neighbour or link event on n2 while it restarts.
    let before = vxlan_parts(&c, 2);
    // An IPv4 tunnel: no IPv6 link-local address (and route) for the kernel to add later.
    let v6 = c.sh(2, "ip -6 addr show dev podlet.1").stdout;
    assert!(v6.trim().is_empty(), "{v6}");
    let link = |c: &Cluster| {
        c.sh(2, "ip -o link show podlet.1")
            .stdout
            .split(':')
            .next()
            .map(String::from)
    };
    let ifindex = link(&c);
    let events = c.node(2).path("monitor.log");
    let mut monitor = Command::new("nsenter")
        .args(["-t", &c.node(2).holder_pid().to_string(), "-n"])
        .args(["ip", "-o", "monitor", "route", "neigh", "link"])
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
    // One more Node change (a label) and a resync's worth of checks, still nothing.
    let out = c.kubectl(&["label", "node", "n1", "touched=yes"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::thread::sleep(Duration::from_secs(2));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let seen = std::fs::read_to_string(&events).unwrap();
    let flaps: Vec<&str> = seen
        .lines()
        .filter(|l| {
            l.contains(&cidr1) || l.contains(vtep1) || l.contains(&mac1) || l.contains("podlet.1")
        })
        .collect();
    assert!(flaps.is_empty(), "changed by the restart: {flaps:?}");
    assert_eq!(vxlan_parts(&c, 2), before);
    assert_eq!(link(&c), ifindex);
    let out = c.exec(
        1,
        "client",
        &ask_peer(&ip_of(&c.get_json(&["pod", "server"]).unwrap()), 8080),
    );
    assert!(out.stdout.contains("peer="), "after the restart: {out:?}");

    // n2 goes (its agent stopped first, so that it does not register again): n1 forgets it.
    c.node_mut(2).kill_agent();
    let gone = c.kubectl(&["delete", "node", "n2", "--wait=false"]);
    assert_eq!(gone.code, 0, "{}", gone.stderr);
    c.wait("n1 to forget n2", || {
        let (r, fdb, neigh) = vxlan_parts(&c, 1);
        (!r.contains(&cidr2) && !fdb.contains(&mac2) && !neigh.contains(vtep2)).then_some(())
    });
    assert!(!fdb.is_empty() && !neigh.is_empty());

    // `podlet cleanup` on n2, whose agent is stopped: its route to n1, the VXLAN device and
    // the masquerade table go; a second run finds nothing.
    assert!(routes(&c, 2).contains(&cidr1), "{}", routes(&c, 2));
    let out = c.node(2).podlet(&["cleanup"]);
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        format!("removed 1 route(s) to other nodes' pods (protocol 158): {cidr1}"),
        "removed the VXLAN device podlet.1".to_string(),
        "removed the nftables table podlet-masq (pod masquerade, every IP family)".to_string(),
    ] {
        assert!(out.stdout.contains(&want), "{want}: {out:?}");
    }
    assert_eq!(routes(&c, 2), "");
    assert_ne!(c.sh(2, "ip link show podlet.1").code, 0);
    let tables = c.sh(2, "nft list tables").stdout;
    assert!(!tables.contains("podlet-masq"), "{tables}");
    let again = c.node(2).podlet(&["cleanup"]);
    assert_eq!((again.code, again.stdout.trim()), (0, "nothing to remove"));
}

/// The `status` of Node `name`'s Ready condition, once the Node is there.
fn ready_status(c: &Cluster, name: &str) -> Option<String> {
    let n = c.get_json(&["node", name])?;
    n["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// A node whose agent dies goes Unknown once `--node-monitor-grace-period` passes without a
/// heartbeat, gets the `unreachable` taints, and its pods are evicted when their toleration
/// runs out; their Deployment's replacements run on the node that is left. (The all-in-one
/// node runs the node lifecycle controller with the flags given here; the agent renews its
/// Lease every 10 s, so the grace period must be longer.)
#[test]
fn a_dead_node_goes_unknown_and_its_pods_are_replaced_on_another() {
    let flags = [
        "--node-monitor-grace-period",
        "15s",
        "--node-monitor-period",
        "1s",
    ];
    let Some(mut c) = Cluster::start(&[1, 1], &flags, true) else {
        return;
    };
    for i in [1, 2] {
        c.wait(&format!("n{i} Ready"), || {
            (ready_status(&c, &format!("n{i}"))? == "True").then_some(())
        });
    }
    // The pod starts on n2: n1 is cordoned meanwhile.
    assert_eq!(c.kubectl(&["cordon", "n1"]).code, 0);
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                      "effect": "NoExecute", "tolerationSeconds": 0}],
                     "containers": [{"name": "c", "image": "busybox:1.36",
                                     "command": ["sleep", "100000"]}]}}}});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &deployment.to_string());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let running_on = |c: &Cluster, node: &str| {
        c.get_json(&["pods", "-l", "app=web"])?["items"]
            .as_array()?
            .iter()
            .find(|p| {
                p["spec"]["nodeName"] == node
                    && p["status"]["phase"] == "Running"
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
    };
    let first = c.wait("the pod Running on n2", || running_on(&c, "n2"));
    assert_eq!(c.kubectl(&["uncordon", "n1"]).code, 0);

    let killed = std::time::Instant::now();
    c.node_mut(2).kill_agent();
    // Unknown, not False: nobody reported it; the unreachable taints follow.
    let node = c.wait("n2 Unknown and tainted unreachable", || {
        let unknown = ready_status(&c, "n2")? == "Unknown";
        let n = c.get_json(&["node", "n2"])?;
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
        });
        (unknown && tainted).then_some(n)
    });
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{ready}");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let replacement = c.wait("the replacement Running on n1", || running_on(&c, "n1"));
    assert_ne!(replacement, first);
    eprintln!(
        "agent killed -> replacement Running on the other node: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    // The evicted pod is marked for deletion (it stays Terminating: no agent confirms it).
    let old = c.get_json(&["pod", &first]).expect("the evicted pod");
    assert!(!old["metadata"]["deletionTimestamp"].is_null(), "{old}");

    // The agent back: the node is Ready again, untainted, and finishes the evicted pod.
    c.node_mut(2).start_agent();
    c.wait("n2 Ready again, without the unreachable taints", || {
        let ready = ready_status(&c, "n2")? == "True";
        let n = c.get_json(&["node", "n2"])?;
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable")
        });
        (ready && !tainted).then_some(())
    });
    c.wait("the evicted pod gone", || {
        let out = c.kubectl(&["get", "pod", &first]);
        (out.code != 0 && out.stderr.contains("NotFound")).then_some(())
    });
}
