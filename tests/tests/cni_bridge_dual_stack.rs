//! Privileged test of podlet's bridge plugin with a dual-stack IPAM result (podlet's default
//! network on a dual-stack node), in network namespaces the test creates.

use podlet_e2e::cni::{our_plugins, CniHost};
use podlet_e2e::privileged;
use serde_json::json;

#[test]
fn a_dual_stack_add_gives_both_families_usable_at_once_and_del_leaves_nothing() {
    if !privileged() {
        return;
    }
    let mut h = CniHost::new();
    let bin = our_plugins();
    let netns = h.container();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "dual", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "hairpinMode": true,
        "ipam": {"type": "host-local",
                 "ranges": [[{"subnet": "10.89.0.0/24"}], [{"subnet": "fd00:89::/64"}]],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                 "dataDir": h.data_dir()},
    });
    let links_before = h.links();
    let add = h.plugin(
        &bin.join("bridge"),
        "ADD",
        "c1",
        &netns,
        "eth0",
        &bin,
        &conf,
    );
    assert_eq!(add.code, 0, "{}", add.stdout);
    let ips = &add.json["ips"];
    assert_eq!(ips[0]["address"], "10.89.0.2/24", "{}", add.stdout);
    assert_eq!(ips[0]["gateway"], "10.89.0.1");
    assert_eq!(ips[1]["address"], "fd00:89::2/64", "{}", add.stdout);
    assert_eq!(ips[1]["gateway"], "fd00:89::1");

    // Both gateways on the bridge, the IPv6 one not tentative (no DAD): reachable by the
    // first ping right after ADD, as the IPv4 one is.
    let br = h.sh_out("ip -o addr show dev cni0");
    assert!(br.contains("inet 10.89.0.1/24"), "{br}");
    assert!(br.contains("inet6 fd00:89::1/64"), "{br}");
    let gw6 = br.lines().find(|l| l.contains("fd00:89::1/64")).unwrap();
    assert!(!gw6.contains("tentative"), "{br}");
    for gw in ["10.89.0.1", "fd00:89::1"] {
        let out = h.in_container(&netns, &format!("busybox ping -c 1 -W 1 {gw} && echo pong"));
        assert!(out.contains("pong"), "first ping to {gw}: {out}");
    }
    let r6 = h.in_container(&netns, "ip -6 route show default");
    assert!(r6.contains("default via fd00:89::1 dev eth0"), "{r6}");
    let r4 = h.in_container(&netns, "ip -4 route show default");
    assert!(r4.contains("default via 10.89.0.1 dev eth0"), "{r4}");
    let fwd = h.sh_out("cat /proc/sys/net/ipv6/conf/all/forwarding /proc/sys/net/ipv4/ip_forward");
    assert_eq!(fwd.split_whitespace().collect::<Vec<_>>(), ["1", "1"]);
    assert_eq!(
        h.allocations("dual"),
        vec!["10.89.0.2".to_string(), "fd00:89::2".to_string()]
    );

    // DEL: both reservations and the veth go (the bridge stays, as the reference plugin's).
    let del = h.plugin(
        &bin.join("bridge"),
        "DEL",
        "c1",
        &netns,
        "eth0",
        &bin,
        &conf,
    );
    assert_eq!(del.code, 0, "{}", del.stdout);
    assert_eq!(h.allocations("dual"), Vec::<String>::new());
    let veths = |l: &str| {
        l.lines()
            .filter(|l| l.contains("veth"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(veths(&h.links()), veths(&links_before));
    assert_eq!(h.in_container(&netns, "ip -o link show eth0"), "");
}
