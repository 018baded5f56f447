use super::*;
use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption, PodSpec};

const HOST: &str =
    "# a comment\nnameserver 192.0.2.53\nsearch old.example\nnameserver 192.0.2.54\n\
                    search corp.example. lab.example\noptions edns0 ndots:2\n";

fn node() -> NodeDns {
    NodeDns {
        cluster_dns: vec!["10.96.0.10".parse().unwrap()],
        cluster_domain: "cluster.local".into(),
        host: Some(ResolvConf::parse(HOST).0),
        node_ips: vec!["10.0.0.1".parse().unwrap()],
    }
}

fn pod(policy: Option<&str>, host_network: bool, cfg: Option<PodDNSConfig>) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some("web".into());
    p.metadata.namespace = Some("shop".into());
    p.metadata.uid = Some("u1".into());
    p.spec = Some(PodSpec {
        dns_policy: policy.map(String::from),
        host_network: Some(host_network),
        dns_config: cfg,
        ..Default::default()
    });
    p
}

#[test]
fn parses_as_the_kubelet() {
    let (r, problems) = ResolvConf::parse(HOST);
    assert!(problems.is_empty());
    assert_eq!(r.servers, ["192.0.2.53", "192.0.2.54"]);
    assert_eq!(r.searches, ["corp.example", "lab.example"]);
    assert_eq!(r.options, ["edns0", "ndots:2"]);
    let (_, problems) = ResolvConf::parse("nameserver\n");
    assert_eq!(problems, ["nameserver list is empty"]);
}

#[test]
fn cluster_first_uses_the_cluster_dns_and_search_path() {
    let (c, w) = pod_dns(&node(), &pod(None, false, None));
    assert!(w.is_empty());
    assert_eq!(c.servers, ["10.96.0.10"]);
    let want = [
        "shop.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ];
    assert_eq!(c.searches[..3], want);
    assert_eq!(c.searches[3..], ["corp.example", "lab.example"]);
    assert_eq!(c.options, ["ndots:5"]);
    assert_eq!(
        c.render(),
        "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\n\
         nameserver 10.96.0.10\noptions ndots:5\n"
    );
}

#[test]
fn host_network_falls_back_to_the_node_unless_cluster_first_with_host_net() {
    let host = pod_dns(&node(), &pod(Some("ClusterFirst"), true, None)).0;
    assert_eq!(host, ResolvConf::parse(HOST).0);
    assert_eq!(pod_dns(&node(), &pod(Some("Default"), false, None)).0, host);
    let c = pod_dns(&node(), &pod(Some("ClusterFirstWithHostNet"), true, None)).0;
    assert_eq!(c.servers, ["10.96.0.10"]);
}

#[test]
fn no_cluster_dns_falls_back_with_the_kubelets_warnings() {
    let mut n = node();
    n.cluster_dns.clear();
    let (c, w) = pod_dns(&n, &pod(None, false, None));
    assert_eq!(c, ResolvConf::parse(HOST).0);
    assert_eq!(w.len(), 2);
    assert_eq!(
        (w[0].subject, w[0].reason),
        (Subject::Node, "MissingClusterDNS")
    );
    assert_eq!(
        w[1].message,
        "pod: \"web_shop(u1)\". kubelet does not have ClusterDNS IP configured and cannot create \
         Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy."
    );
}

#[test]
fn no_resolv_conf_means_the_local_resolver() {
    let mut n = node();
    n.host = None;
    n.node_ips = vec!["fd00::1".parse().unwrap()];
    let c = pod_dns(&n, &pod(Some("Default"), false, None)).0;
    assert_eq!(
        (c.servers, c.searches),
        (vec!["::1".to_string()], vec![".".to_string()])
    );
}

#[test]
fn none_takes_only_the_pods_dns_config_and_options_merge_in_place() {
    let cfg = PodDNSConfig {
        nameservers: Some(vec!["192.0.2.1".into()]),
        searches: Some(vec!["a.example".into()]),
        options: Some(vec![
            PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("1".into()),
            },
            PodDNSConfigOption {
                name: Some("single-request".into()),
                value: None,
            },
        ]),
    };
    let c = pod_dns(&node(), &pod(Some("None"), false, Some(cfg.clone()))).0;
    assert_eq!(c.servers, ["192.0.2.1"]);
    assert_eq!(c.searches, ["a.example"]);
    assert_eq!(c.options, ["ndots:1", "single-request"]);
    let c = pod_dns(&node(), &pod(None, false, Some(cfg))).0;
    assert_eq!(c.servers, ["10.96.0.10", "192.0.2.1"]);
    assert_eq!(c.options, ["ndots:1", "single-request"]);
    assert_eq!(c.searches.last().unwrap(), "a.example");
}

#[test]
fn limits_cut_with_a_dns_config_forming_warning() {
    let many =
        |n: usize, len: usize| -> Vec<String> { (0..n).map(|i| format!("{i:0>len$}")).collect() };
    let cfg = PodDNSConfig {
        nameservers: Some(many(4, 3)),
        searches: Some([many(1, 300), many(40, 10)].concat()),
        options: None,
    };
    let (c, w) = pod_dns(&node(), &pod(Some("None"), false, Some(cfg)));
    assert_eq!(c.servers.len(), 3);
    // 32 kept, then the 300-character one dropped.
    assert_eq!(c.searches.len(), 31);
    assert!(c.searches.iter().all(|s| s.len() == 10));
    let reasons: Vec<_> = w.iter().map(|w| w.reason).collect();
    assert_eq!(reasons, ["DNSConfigForming", "DNSConfigForming"]);
    assert!(w[0]
        .message
        .ends_with("the applied nameserver line is: 000 001 002"));
    // The 2048-character line: long domains are cut from the end.
    let cfg = PodDNSConfig {
        searches: Some(many(10, 250)),
        ..Default::default()
    };
    let (c, w) = pod_dns(&node(), &pod(Some("None"), false, Some(cfg)));
    assert_eq!(c.searches.len(), 8);
    assert!(c.searches.join(" ").len() <= MAX_SEARCH_CHARS);
    assert!(w[0].message.starts_with("Search Line limits were exceeded"));
}

#[test]
fn hostname_subdomain_and_fqdn_as_the_kubelet() {
    let mut p = pod(None, false, None);
    assert_eq!(
        pod_hostname(&p, "cluster.local").unwrap(),
        ("web".into(), None)
    );
    let spec = p.spec.as_mut().unwrap();
    spec.hostname = Some("db-0".into());
    spec.subdomain = Some("db".into());
    let (h, d) = pod_hostname(&p, "cluster.local").unwrap();
    assert_eq!(
        (h.as_str(), d.as_deref()),
        ("db-0", Some("db.shop.svc.cluster.local"))
    );
    assert_eq!(kernel_hostname(&p, &h, d.as_deref()).unwrap(), "db-0");
    p.spec.as_mut().unwrap().set_hostname_as_fqdn = Some(true);
    assert_eq!(
        kernel_hostname(&p, &h, d.as_deref()).unwrap(),
        "db-0.db.shop.svc.cluster.local"
    );
    let long = "x".repeat(40);
    let err = kernel_hostname(&p, &long, d.as_deref()).unwrap_err();
    assert!(
        err.contains("is too long (64 characters is the max, 66 characters requested)"),
        "{err}"
    );
    p.spec.as_mut().unwrap().hostname = Some("Bad_Name".into());
    assert!(pod_hostname(&p, "cluster.local")
        .unwrap_err()
        .contains("not a valid DNS label"));
    // A long pod name is cut to 63 characters without a trailing '-'.
    let mut q = pod(None, false, None);
    q.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b".repeat(10)));
    assert_eq!(pod_hostname(&q, "cluster.local").unwrap().0, "a".repeat(62));
}
