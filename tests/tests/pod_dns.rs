//! End-to-end: pods' /etc/resolv.conf as the kubelet forms it, from the node's `--cluster-dns`,
//! `--cluster-domain` and `--resolv-conf`, the pod's `dnsPolicy` and `dnsConfig`; and its host
//! name from `hostname`, `subdomain` and `setHostnameAsFQDN`.

use podlet_e2e::TestNode;

const NODE_RESOLV: &str = "nameserver 192.0.2.53\nsearch corp.example.\noptions edns0\n";

const CLUSTER_FIRST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: cf, namespace: shop}
spec:
  terminationGracePeriodSeconds: 1
  hostname: db-0
  subdomain: db
  setHostnameAsFQDN: true
  dnsConfig:
    nameservers: [192.0.2.9]
    options: [{name: ndots, value: "2"}, {name: rotate}]
  containers:
  - {name: c, image: "busybox:1.36", command: [sleep, "1000"]}
"#;

const DEFAULT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: host}
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: Default
  containers:
  - {name: c, image: "busybox:1.36", command: [sleep, "1000"]}
"#;

fn resolv(node: &TestNode, pod: &str, ns: &str) -> String {
    let out = node.podlet(&["exec", pod, "-n", ns, "--", "cat", "/etc/resolv.conf"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
}

#[test]
fn pods_get_the_kubelets_resolv_conf() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    let file = node.path("node-resolv.conf");
    std::fs::write(&file, NODE_RESOLV).unwrap();
    node.agent_args = vec![
        "--cluster-dns".into(),
        "10.96.0.10".into(),
        "--cluster-domain".into(),
        "cluster.test".into(),
        "--resolv-conf".into(),
        file.display().to_string(),
    ];
    node.start_agent();
    node.write_manifest("cf.yaml", CLUSTER_FIRST);
    node.write_manifest("host.yaml", DEFAULT);
    node.wait_running("cf");
    node.wait_running("host");
    assert_eq!(
        resolv(&node, "cf-e2e", "shop"),
        "search shop.svc.cluster.test svc.cluster.test cluster.test corp.example\n\
         nameserver 10.96.0.10\nnameserver 192.0.2.9\noptions ndots:2 rotate\n"
    );
    let fqdn = "db-0.db.shop.svc.cluster.test";
    let out = node.podlet(&[
        "exec",
        "cf-e2e",
        "-n",
        "shop",
        "--",
        "sh",
        "-c",
        "hostname; cat /etc/hosts",
    ]);
    assert_eq!(out.stdout.lines().next(), Some(fqdn), "{out:?}");
    assert!(out.stdout.contains(&format!("\t{fqdn}\tdb-0\n")), "{out:?}");
    assert_eq!(
        resolv(&node, "host-e2e", "default"),
        "search corp.example\nnameserver 192.0.2.53\noptions edns0\n"
    );
}
