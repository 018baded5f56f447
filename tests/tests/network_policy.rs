//! End-to-end: NetworkPolicies enforced by the agents of a two-node cluster (table
//! `ip podlet-netpol`), between pods on one node (bridged) and on two (routed): default deny
//! of ingress, an allow by pod selector on a named port, by namespace selector, egress limited
//! to one port, an ipBlock with an except, access back when a policy goes, the node itself
//! always let in, a new pod's rules in force before its first instruction, and `podlet cleanup`.

use podlet_e2e::cluster::Cluster;
use serde_json::{json, Value};

const NS: &str = "np-a";
const OTHER_NS: &str = "np-b";

/// A busybox pod `ns/name` on node `i` with `labels`, serving HTTP on 8080 (container port
/// `http`) and 9090 unless `script` says otherwise; returns its address once Running.
fn pod(c: &Cluster, i: usize, ns: &str, name: &str, labels: Value, script: Option<&str>) -> String {
    let serve =
        "mkdir -p /tmp/www && httpd -p 9090 -h /tmp/www && exec httpd -f -p 8080 -h /tmp/www";
    let p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": format!("n{i}"),
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox:1.36",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "command": ["sh", "-c", script.unwrap_or(serve)]}],
        },
    });
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &p.to_string());
    assert_eq!(out.code, 0, "creating pod {ns}/{name}: {}", out.stderr);
    let p = c.wait(&format!("pod {ns}/{name} Running"), || {
        c.get_json(&["pod", "-n", ns, name])
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
    });
    p["status"]["podIP"].as_str().unwrap().to_string()
}

fn apply(c: &Cluster, ns: &str, name: &str, spec: Value) {
    let p = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &p.to_string());
    assert_eq!(out.code, 0, "applying policy {name}: {out:?}");
}

fn delete(c: &Cluster, ns: &str, name: &str) {
    let out = c.kubectl(&["delete", "netpol", "-n", ns, name]);
    assert_eq!(out.code, 0, "deleting policy {name}: {out:?}");
}

/// Whether pod `ns/name` on node `i` gets an HTTP answer from `ip:port` (2 s at most).
fn reaches(c: &Cluster, i: usize, ns: &str, name: &str, ip: &str, port: u16) -> bool {
    let cmd = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}");
    let out = c
        .node(i)
        .podlet(&["exec", "-n", ns, name, "--", "sh", "-c", &cmd]);
    out.stdout.contains("HTTP/1.")
}

/// Whether node `i` itself gets an answer from `ip:port`.
fn node_reaches(c: &Cluster, i: usize, ip: &str, port: u16) -> bool {
    let cmd = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {ip} {port}");
    c.sh(i, &cmd).stdout.contains("HTTP/1.")
}

/// Waits until `from` (node, pod) reaching `to:port` is `want`.
fn until(c: &Cluster, from: (usize, &str, &str), to: &str, port: u16, want: bool) {
    let (i, ns, name) = from;
    c.wait(
        &format!(
            "{ns}/{name} on n{i} -> {to}:{port} {}",
            if want { "allowed" } else { "blocked" }
        ),
        || (reaches(c, i, ns, name, to, port) == want).then_some(()),
    );
}

#[test]
fn network_policies() {
    let Some(mut c) = Cluster::start(&[1, 2], &[], true) else {
        return;
    };
    for (ns, labels) in [(NS, json!({})), (OTHER_NS, json!({"team": "b"}))] {
        let n = json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ns, "labels": labels}});
        let out = c.kubectl_stdin(&["apply", "-f", "-"], &n.to_string());
        assert_eq!(out.code, 0, "{out:?}");
        c.wait(&format!("{ns}'s default service account"), || {
            c.get_json(&["serviceaccount", "-n", ns, "default"])
        });
    }
    let web1 = pod(&c, 1, NS, "web-1", json!({"app": "web"}), None);
    let web2 = pod(&c, 2, NS, "web-2", json!({"app": "web"}), None);
    let client = pod(&c, 1, NS, "client", json!({"app": "client"}), None);
    pod(&c, 1, NS, "other", json!({"app": "other"}), None);
    pod(&c, 2, NS, "client-2", json!({"app": "client"}), None);
    pod(&c, 2, OTHER_NS, "b-client", json!({"app": "client"}), None);
    let (a_client, a_other, a_client2, b_client) = (
        (1, NS, "client"),
        (1, NS, "other"),
        (2, NS, "client-2"),
        (2, OTHER_NS, "b-client"),
    );
    // No policy: everything reaches everything.
    until(&c, a_client, &web1, 8080, true);
    until(&c, a_client, &web2, 9090, true);

    // Default deny of ingress in the namespace: same node and other node alike.
    apply(&c, NS, "default-deny", json!({"podSelector": {}}));
    until(&c, a_client, &web1, 8080, false);
    assert!(!reaches(&c, 2, NS, "client-2", &web1, 8080), "cross-node");
    assert!(
        !reaches(&c, 2, OTHER_NS, "b-client", &web2, 8080),
        "another namespace"
    );
    assert!(
        node_reaches(&c, 1, &web1, 8080),
        "the node itself is let in"
    );
    let row = c.kubectl(&["get", "netpol", "-n", NS, "default-deny"]);
    assert!(
        row.stdout.contains("POD-SELECTOR") && row.stdout.contains("<none>"),
        "{row:?}"
    );
    let described = c.kubectl(&["describe", "netpol", "-n", NS, "default-deny"]);
    assert!(
        described.stdout.contains("Policy Types: Ingress"),
        "{described:?}"
    );

    // Clients by label, on the named port only.
    apply(
        &c,
        NS,
        "web-from-clients",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                            "ports": [{"port": "http"}]}]}),
    );
    until(&c, a_client, &web1, 8080, true);
    until(&c, a_client2, &web1, 8080, true);
    assert!(!reaches(&c, 1, NS, "client", &web1, 9090), "another port");
    assert!(!reaches(&c, 1, NS, "other", &web1, 8080), "another label");
    assert!(
        !reaches(&c, 2, OTHER_NS, "b-client", &web2, 8080),
        "a pod selector is the policy's own namespace"
    );

    // Another namespace by its labels.
    apply(
        &c,
        NS,
        "web-from-team-b",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
    );
    until(&c, b_client, &web2, 8080, true);
    assert!(
        reaches(&c, 2, OTHER_NS, "b-client", &web1, 9090),
        "all ports"
    );

    // The policies go: access is back.
    for p in ["default-deny", "web-from-clients", "web-from-team-b"] {
        delete(&c, NS, p);
    }
    until(&c, a_other, &web1, 8080, true);
    assert!(reaches(&c, 1, NS, "client", &web1, 9090));

    // Egress of clients limited to port 8080 (and DNS).
    apply(
        &c,
        NS,
        "clients-to-8080",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": 8080}]}]}),
    );
    until(&c, a_client, &web2, 9090, false);
    assert!(
        reaches(&c, 1, NS, "client", &web2, 8080),
        "the allowed port"
    );
    assert!(!reaches(&c, 1, NS, "client", &web1, 9090), "same node");
    assert!(
        !reaches(&c, 2, NS, "client-2", &web1, 9090),
        "the other client"
    );
    assert!(reaches(&c, 1, NS, "other", &web1, 9090), "not selected");
    let dns = c.node(1).podlet(&[
        "exec",
        "-n",
        NS,
        "client",
        "--",
        "nslookup",
        "kubernetes.default.svc.cluster.local",
    ]);
    assert!(dns.stdout.contains("10.96.0.1"), "cluster DNS: {dns:?}");
    delete(&c, NS, "clients-to-8080");
    until(&c, a_client, &web2, 9090, true);

    // An ipBlock less an except: every pod address but the client's.
    apply(
        &c,
        NS,
        "web-from-block",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16",
                                                  "except": [format!("{client}/32")]}}]}]}),
    );
    until(&c, a_client, &web1, 8080, false);
    assert!(reaches(&c, 1, NS, "other", &web1, 8080), "inside the block");
    assert!(
        reaches(&c, 2, NS, "client-2", &web1, 8080),
        "inside the block, other node"
    );
    assert!(
        !reaches(&c, 1, NS, "client", &web2, 8080),
        "the except, other node"
    );
    delete(&c, NS, "web-from-block");
    until(&c, a_client, &web1, 8080, true);

    // A new pod's rules are there before its first instruction: its first connection, made
    // at once, is refused by its egress policy.
    apply(
        &c,
        NS,
        "early-deny",
        json!({"podSelector": {"matchLabels": {"app": "early"}}, "policyTypes": ["Egress"]}),
    );
    let probe = format!(
        "if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {web2} 8080 | grep -q HTTP/1.; then echo LEAKED; else echo BLOCKED; fi; exec sleep 100000"
    );
    pod(&c, 1, NS, "early", json!({"app": "early"}), Some(&probe));
    let logs = c.wait("the early pod's verdict", || {
        let l = c.kubectl(&["logs", "-n", NS, "early"]).stdout;
        (l.contains("BLOCKED") || l.contains("LEAKED")).then_some(l)
    });
    assert!(logs.contains("BLOCKED"), "{logs}");
    let _ = a_client2;

    let list = c.sh(1, "nft list table ip podlet-netpol");
    assert!(
        list.stdout.contains("eg-targets:np-a/early-deny"),
        "{list:?}"
    );
    c.node_mut(1).kill_agent();
    let cleanup = c.node(1).podlet(&["cleanup"]);
    assert!(cleanup.stdout.contains("podlet-netpol"), "{cleanup:?}");
    let list = c.sh(1, "nft list table ip podlet-netpol");
    assert_ne!(list.code, 0, "table still there: {list:?}");
}
