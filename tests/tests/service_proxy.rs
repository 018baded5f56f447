//! End-to-end: the agent's Service proxy (nftables, kube-proxy's layout) on two nodes: a
//! ClusterIP spreads over backends on both nodes, keeps the client pod's address, answers the
//! node itself, answers on every node's address at an allocated node port (and stops when the
//! service goes back to ClusterIP) and as a LoadBalancer on the nodes' addresses, rejects at once without endpoints, resolves named targetPorts, follows a
//! deleted backend, and its table goes with `podlet cleanup`; a pod's endpoint comes and goes
//! with its readiness.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use podlet_e2e::cluster::{ask_peer, echo_server_named, sh_in, Cluster};
use serde_json::json;

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(key))
}

/// The pod that answered, and the address it saw.
fn ask(c: &Cluster, via_node: bool, ip: &str, port: u16) -> Option<(String, String)> {
    let out = if via_node {
        // The host has no nc of its own: busybox's (busybox-static).
        c.sh(1, &ask_peer(ip, port).replace("| nc ", "| busybox nc "))
    } else {
        c.exec(1, "client", &ask_peer(ip, port))
    };
    let host = field(&out.stdout, "host=")?.to_string();
    let peer = field(&out.stdout, "peer=")?
        .trim_start_matches("[::ffff:")
        .trim_end_matches(']')
        .to_string();
    Some((host, peer))
}

#[test]
fn cluster_ip_services() {
    let Some(mut c) = Cluster::start(&[1, 2], &[], true) else {
        return;
    };
    let labels = json!({"app": "web"});
    c.run_backend(
        1,
        "web-1",
        labels.clone(),
        "http-alt",
        8080,
        &echo_server_named(8080),
    );
    c.run_backend(
        2,
        "web-2",
        labels,
        "http-alt",
        8080,
        &echo_server_named(8080),
    );
    let client = c.run_pod(1, "client", false, "sleep 100000");
    let cip = client["status"]["podIP"].as_str().unwrap().to_string();
    let web = c.create_service(
        "web",
        "web",
        json!([{"name": "http", "port": 80, "targetPort": 8080}]),
    );
    let named = c.create_service(
        "named",
        "web",
        json!([{"name": "h", "port": 81, "targetPort": "http-alt"}]),
    );
    let empty = c.create_service("empty", "nothing", json!([{"port": 80}]));

    c.wait("the ClusterIP answering", || ask(&c, false, &web, 80));
    let mut hosts = BTreeSet::new();
    for _ in 0..20 {
        let (host, peer) = ask(&c, false, &web, 80).expect("an answer through the ClusterIP");
        assert_eq!(peer, cip, "pod -> ClusterIP -> pod keeps the pod's address");
        hosts.insert(host);
    }
    assert_eq!(hosts.into_iter().collect::<Vec<_>>(), ["web-1", "web-2"]);

    // From the node itself (masqueraded: the node's own address or the bridge's).
    let (host, peer) = c.wait("the ClusterIP from the node", || ask(&c, true, &web, 80));
    assert!(host.starts_with("web-"), "{host}");
    assert_ne!(peer, cip);

    let (host, _) = c.wait("the named targetPort", || ask(&c, false, &named, 81));
    assert!(host.starts_with("web-"), "{host}");

    // NodePort: the apiserver allocates the port; every node's address answers on it, from
    // outside the nodes (the lab switch), whichever node the backend is on.
    let np = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webnp"},
                    "spec": {"type": "NodePort", "selector": {"app": "web"},
                             "ports": [{"port": 80, "targetPort": 8080}]}});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &np.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    let svc = c.get_json(&["service", "webnp"]).unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{svc}");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
    let row = c.kubectl(&["get", "svc", "webnp", "--no-headers"]);
    assert!(
        row.stdout.contains(&format!("80:{node_port}/TCP")),
        "{row:?}"
    );
    let outside = |node: usize| {
        let cmd = ask_peer(&c.ip(node), node_port as u16).replace("| nc ", "| busybox nc ");
        let out = sh_in(c.switch.pid(), &cmd);
        field(&out.stdout, "host=").map(str::to_string)
    };
    for node in [1, 2] {
        let mut hosts = BTreeSet::new();
        let t = Instant::now();
        while hosts.len() < 2 && t.elapsed() < Duration::from_secs(30) {
            if let Some(h) = outside(node) {
                hosts.insert(h);
            }
        }
        assert_eq!(
            hosts.into_iter().collect::<Vec<_>>(),
            ["web-1", "web-2"],
            "node port {node_port} on n{node}"
        );
    }
    // Back to ClusterIP: the node port is given back and closed on the nodes.
    let out = c.kubectl(&[
        "patch",
        "svc",
        "webnp",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let svc = c.get_json(&["service", "webnp"]).unwrap();
    assert!(svc["spec"]["ports"][0]["nodePort"].is_null(), "{svc}");
    c.wait("the node port closed", || {
        outside(1).is_none().then_some(())
    });

    // LoadBalancer: the cluster is its own (k3s' ServiceLB): the ingress is the Ready nodes'
    // addresses, and every node serves the service port on its own.
    let lb = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "weblb"},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                             "ports": [{"port": 8081, "targetPort": 8080}]}});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &lb.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    let ips = format!("{},{}", c.ip(1), c.ip(2));
    c.wait("the load balancer's ingress", || {
        let row = c.kubectl(&["get", "svc", "weblb", "--no-headers"]).stdout;
        row.contains(&ips).then_some(())
    });
    let lb_host = |node: usize| {
        let cmd = ask_peer(&c.ip(node), 8081).replace("| nc ", "| busybox nc ");
        field(&sh_in(c.switch.pid(), &cmd).stdout, "host=").map(str::to_string)
    };
    for node in [1, 2] {
        let h = c.wait(&format!("weblb on n{node}'s address"), || lb_host(node));
        assert!(h.starts_with("web-"), "{h}");
    }

    // No endpoints: refused at once, from a pod and from the node.
    let t = Instant::now();
    let out = c.exec(1, "client", &format!("nc -w 5 {empty} 80 </dev/null"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "not rejected at once: {out:?}"
    );
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("refused"),
        "{out:?}"
    );
    let out = c.sh(1, &format!("busybox nc -w 5 {empty} 80 </dev/null"));
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("refused"),
        "{out:?}"
    );

    // A deleted backend leaves the rotation at once.
    let del = c.kubectl(&["delete", "pod", "web-2", "--wait=false"]);
    assert_eq!(del.code, 0, "{}", del.stderr);
    let t = Instant::now();
    c.wait("web-2 out of the rotation", || {
        (0..10)
            .all(|_| ask(&c, false, &web, 80).is_some_and(|(h, _)| h == "web-1"))
            .then_some(())
    });
    eprintln!("web-2 out of rotation after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    let list = c.sh(1, "nft list table ip podlet-proxy");
    assert!(list.stdout.contains("service-ips"), "{list:?}");
    c.node_mut(1).kill_agent();
    let cleanup = c.node(1).podlet(&["cleanup"]);
    assert!(cleanup.stdout.contains("podlet-proxy"), "{cleanup:?}");
    let list = c.sh(1, "nft list table ip podlet-proxy");
    assert_ne!(list.code, 0, "table still there: {list:?}");
}

/// ClientIP affinity sticks; `externalTrafficPolicy: Local` answers only where a backend is,
/// with the client's own address, and its `healthCheckNodePort` says so (200 / 503);
/// `internalTrafficPolicy: Local` keeps ClusterIP traffic on the client's node.
#[test]
fn affinity_and_local_traffic_policies() {
    let Some(c) = Cluster::start(&[1, 2], &[], true) else {
        return;
    };
    c.run_backend(
        1,
        "web-1",
        json!({"app": "web"}),
        "http",
        8080,
        &echo_server_named(8080),
    );
    c.run_backend(
        2,
        "web-2",
        json!({"app": "web"}),
        "http",
        8080,
        &echo_server_named(8080),
    );
    c.run_backend(
        1,
        "solo",
        json!({"app": "solo"}),
        "http",
        8080,
        &echo_server_named(8080),
    );
    c.run_pod(1, "client", false, "sleep 100000");
    c.run_pod(2, "client2", false, "sleep 100000");

    // Affinity: every connection of one client goes to the endpoint its first one got.
    let sticky = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sticky"},
                        "spec": {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                                 "ports": [{"port": 80, "targetPort": 8080}]}});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &sticky.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    let svc = c.get_json(&["service", "sticky"]).unwrap();
    assert_eq!(
        svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 10800,
        "upstream's default timeout: {svc}"
    );
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let first = c.wait("the sticky service", || ask(&c, false, &ip, 80)).0;
    for _ in 0..15 {
        let (host, _) = ask(&c, false, &ip, 80).expect("an answer");
        assert_eq!(host, first, "ClientIP affinity broken");
    }
    // A bad timeout is refused with upstream's message.
    let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"},
                     "spec": {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                              "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
                              "ports": [{"port": 80}]}});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &bad.to_string());
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"),
        "{out:?}"
    );

    // externalTrafficPolicy Local: the backend is on n1 only.
    let lb = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "local"},
                    "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                             "selector": {"app": "solo"},
                             "ports": [{"port": 8082, "targetPort": 8080}]}});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &lb.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    let svc = c.get_json(&["service", "local"]).unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    let hc = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("a health check port") as u16;
    let from_outside = |node: usize, port: u16| {
        let cmd = ask_peer(&c.ip(node), port).replace("| nc -w 5 ", "| busybox nc -w 2 ");
        let out = sh_in(c.switch.pid(), &cmd);
        Some((
            field(&out.stdout, "host=")?.to_string(),
            field(&out.stdout, "peer=")?
                .trim_start_matches("[::ffff:")
                .trim_end_matches(']')
                .to_string(),
        ))
    };
    let (host, peer) = c.wait("the node port on n1", || from_outside(1, node_port));
    assert_eq!(host, "solo");
    let switch_ip = c
        .ip(1)
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.1"))
        .unwrap();
    assert_eq!(
        peer, switch_ip,
        "externalTrafficPolicy Local keeps the client's address"
    );
    assert_eq!(
        from_outside(2, node_port),
        None,
        "n2 has no local endpoint: dropped"
    );
    let health = |node: usize| {
        let cmd = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {} {hc}",
            c.ip(node)
        );
        sh_in(c.switch.pid(), &cmd).stdout
    };
    let h1 = c.wait("n1's health check", || {
        Some(health(1)).filter(|h| h.contains("200"))
    });
    assert!(
        h1.contains("\"localEndpoints\": 1") && h1.contains("\"name\": \"local\""),
        "{h1}"
    );
    let h2 = c.wait("n2's health check", || {
        Some(health(2)).filter(|h| h.contains(" 503 "))
    });
    assert!(h2.contains("\"localEndpoints\": 0"), "{h2}");
    // From a pod, through the load balancer address of n2: short-circuited to any endpoint.
    let out = c.exec(2, "client2", &ask_peer(&c.ip(2), 8082));
    assert!(out.stdout.contains("host=solo"), "{out:?}");

    // internalTrafficPolicy Local: the ClusterIP reaches only the client's node's endpoints.
    let itp = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "itp"},
                     "spec": {"internalTrafficPolicy": "Local", "selector": {"app": "solo"},
                              "ports": [{"port": 80, "targetPort": 8080}]}});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &itp.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    let itp_ip = c.get_json(&["service", "itp"]).unwrap()["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let (host, _) = c.wait("itp from n1", || ask(&c, false, &itp_ip, 80));
    assert_eq!(host, "solo");
    let out = c.exec(2, "client2", &ask_peer(&itp_ip, 80).replace("-w 5", "-w 2"));
    assert!(
        !out.stdout.contains("host="),
        "n2 has no local endpoint: {out:?}"
    );
}

/// `ip:port` from the client pod: the answering pod, or what nc said.
fn try_ask(c: &Cluster, ip: &str, port: u16) -> Result<String, String> {
    let out = c.exec(1, "client", &format!("{} 2>&1", ask_peer(ip, port)));
    field(&out.stdout, "host=")
        .map(str::to_string)
        .ok_or(out.stdout)
}

#[test]
fn endpoints_follow_readiness() {
    let Some(c) = Cluster::start(&[1], &[], true) else {
        return;
    };
    // Ready while /tmp/ready exists (probed every second).
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "busybox:1.36",
                                 "command": ["sh", "-c", echo_server_named(8080)],
                                 "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                                    "periodSeconds": 1, "failureThreshold": 1}}]},
    });
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &pod.to_string());
    assert_eq!(out.code, 0, "{out:?}");
    c.run_pod(1, "client", false, "sleep 100000");
    let web = c.create_service(
        "web",
        "web",
        json!([{"name": "http", "port": 80, "targetPort": 8080}]),
    );
    // Not ready: no endpoint, so the ClusterIP refuses at once (REJECT).
    let refused = try_ask(&c, &web, 80).expect_err("an answer before the pod is ready");
    assert!(refused.contains("refused"), "{refused}");
    // Ready: the proxy follows the EndpointSlice.
    assert_eq!(c.exec(1, "web-1", "touch /tmp/ready").code, 0);
    let host = c.wait("the ready pod behind the ClusterIP", || {
        try_ask(&c, &web, 80).ok()
    });
    assert_eq!(host, "web-1");
    // Not ready again: out of the rules, refused again.
    assert_eq!(c.exec(1, "web-1", "rm /tmp/ready").code, 0);
    let refused = c.wait("the unready pod out of the ClusterIP", || {
        try_ask(&c, &web, 80)
            .err()
            .filter(|e| e.contains("refused"))
    });
    assert!(refused.contains("refused"), "{refused}");
    let slice = c
        .get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"])
        .unwrap();
    assert_eq!(
        slice["items"][0]["endpoints"][0]["conditions"]["ready"], false,
        "{slice}"
    );
}
