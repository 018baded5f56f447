//! End-to-end: the agent as a CNI runtime. Every node runs in a network namespace of its own,
//! so cni0, the veths and the nftables rules all live there.

use std::collections::BTreeSet;
use std::time::Duration;

use podlet_e2e::{alive, TestNode, POD_CIDR};
use serde_json::Value;

fn pod_ip(p: &Value) -> String {
    p["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn in_cidr(ip: &str) -> bool {
    ip.starts_with(POD_CIDR.trim_end_matches("0/24"))
}

/// What the network leaves on a node: veths, IP files, cached results, CNI nftables tables.
fn network_traces(node: &TestNode) -> Vec<String> {
    let mut out = Vec::new();
    let sh = |cmd: &str| {
        let o = std::process::Command::new("nsenter")
            .args(["-t", &node.holder_pid().to_string(), "-n", "sh", "-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    out.extend(
        sh("busybox ip -o link")
            .lines()
            .filter(|l| l.contains("veth"))
            .map(|l| format!("link: {l}")),
    );
    out.extend(
        sh("nft list tables")
            .lines()
            .filter(|l| l.contains("cni-"))
            .map(|l| format!("nft: {l}")),
    );
    if let Ok(rd) = std::fs::read_dir(node.path("cni/cache/networks/podlet")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "lock" && !n.starts_with("last_reserved_ip") {
                out.push(format!("ip file: {n}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(node.path("cni/cache/results")) {
        out.extend(
            rd.flatten()
                .map(|e| format!("cache: {}", e.file_name().to_string_lossy())),
        );
    }
    out
}

fn node_sh(node: &TestNode, cmd: &str) -> String {
    let o = std::process::Command::new("nsenter")
        .args(["-t", &node.holder_pid().to_string(), "-n", "sh", "-c", cmd])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const SERVER: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: srv
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: busybox:1.36
    # -ll keeps one listening socket and forks per connection: a `while nc -l` loop refuses
    # a connection that comes before the next nc listens, as back-to-back ones here do.
    command: ["nc", "-ll", "-p", "8080", "-e", "echo", "from-srv"]
    ports:
    - containerPort: 8080
      hostPort: 18080
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
"#;

const CLIENT: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cli\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sleep\", \"1000\"]\n";

#[test]
fn pods_get_addresses_and_reach_each_other() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest("srv.yaml", SERVER);
    node.write_manifest("cli.yaml", CLIENT);
    node.wait_running("srv");
    let cli = node.wait_running("cli");
    // Running is not listening: the server is used once its readiness probe connects.
    let srv = node.wait_for("srv ready", Duration::from_secs(20), || {
        node.pod("srv")
            .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
    });
    let (a, b) = (pod_ip(&srv), pod_ip(&cli));
    assert!(in_cidr(&a) && in_cidr(&b) && a != b, "{a} {b}");
    assert_eq!(srv["status"]["podIPs"][0]["ip"], a.as_str());
    // Pod to pod by IP.
    let out = node.podlet(&[
        "exec",
        "cli-e2e",
        "--",
        "sh",
        "-c",
        &format!("echo | nc -w 3 {a} 8080"),
    ]);
    assert_eq!(out.stdout.trim(), "from-srv", "{}", out.stderr);
    // The node reaches both pods, and the host port reaches the server.
    for ip in [&a, &b] {
        assert!(
            node_sh(
                &node,
                &format!("busybox ping -c1 -W2 {ip} >/dev/null && echo ok")
            )
            .contains("ok"),
            "node -> {ip}"
        );
    }
    let gw = POD_CIDR.replace("0/24", "1");
    for target in [gw.as_str(), "127.0.0.1"] {
        let got = node_sh(&node, &format!("echo | busybox nc -w 3 {target} 18080"));
        assert_eq!(got.trim(), "from-srv", "hostPort via {target}");
    }
    // /etc/hosts names the pod's own address; loopback is up.
    let hosts = node
        .podlet(&[
            "exec",
            "srv-e2e",
            "--",
            "sh",
            "-c",
            "cat /etc/hosts; ip -o link show lo",
        ])
        .stdout;
    assert!(hosts.contains(&format!("{a}\tsrv-e2e")), "{hosts}");
    assert!(hosts.contains("UP"), "{hosts}");

    assert!(!network_traces(&node).is_empty());
    node.remove_manifest("srv.yaml");
    node.remove_manifest("cli.yaml");
    node.wait_for("pods gone", Duration::from_secs(30), || {
        node.pods().is_empty().then_some(())
    });
    assert_eq!(network_traces(&node), Vec::<String>::new());
}

#[test]
fn agent_killed_while_deleting_a_pod_still_releases_its_ip() {
    let Some(mut node) = TestNode::with_agent() else {
        return;
    };
    // sleep as PID 1 ignores SIGTERM, so deletion waits out the grace period.
    node.write_manifest(
        "slow.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow\nspec:\n  terminationGracePeriodSeconds: 4\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sleep\", \"1000\"]\n",
    );
    let p = node.wait_running("slow");
    assert!(in_cidr(&pod_ip(&p)));
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let pause = node.shim_state(&uid)["pausePid"].as_i64().unwrap();
    node.remove_manifest("slow.yaml");
    std::thread::sleep(Duration::from_millis(1000));
    node.kill_agent();
    assert!(
        !network_traces(&node).is_empty(),
        "the pod was torn down before the agent died"
    );
    node.start_agent();
    node.wait_for("network released", Duration::from_secs(30), || {
        network_traces(&node).is_empty().then_some(())
    });
    node.wait_for("pod gone", Duration::from_secs(10), || {
        (!alive(pause) && node.pods().is_empty()).then_some(())
    });
}

#[test]
fn fifty_pods_created_and_deleted_leak_nothing() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    for i in 0..50 {
        node.write_manifest(
            &format!("p{i}.yaml"),
            &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sleep\", \"1000\"]\n    ports:\n    - containerPort: 80\n      hostPort: {}\n", 20000 + i),
        );
    }
    let ips = node.wait_for("50 pods running", Duration::from_secs(180), || {
        let pods = node.pods();
        let running: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                p["status"]["containerStatuses"][0]["state"]["running"].is_object()
                    && !pod_ip(p).is_empty()
            })
            .collect();
        (running.len() == 50).then(|| running.iter().map(|p| pod_ip(p)).collect::<BTreeSet<_>>())
    });
    assert_eq!(ips.len(), 50, "duplicate pod IPs");
    for i in 0..50 {
        node.remove_manifest(&format!("p{i}.yaml"));
    }
    node.wait_for("pods gone", Duration::from_secs(180), || {
        node.pods().is_empty().then_some(())
    });
    node.wait_for("no network traces", Duration::from_secs(10), || {
        network_traces(&node).is_empty().then_some(())
    });
    assert_eq!(node.mounts_below(&node.path("root")), Vec::<String>::new());
    assert_eq!(
        node.cgroups_matching("pod"),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(node.processes_of_node(), Vec::<u32>::new());
}

#[test]
fn plugin_failure_is_reported_and_retried() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    // A /30 holds one pod address (.1 is the gateway): the second pod's ADD fails.
    std::fs::create_dir_all(node.path("cni/net.d")).unwrap();
    std::fs::write(
        node.path("cni/net.d/05-tiny.conflist"),
        serde_json::json!({"cniVersion": "1.1.0", "name": "tiny", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/30"}]],
                      "dataDir": node.path("cni/cache/networks")}}]})
        .to_string(),
    )
    .unwrap();
    node.start_agent();
    node.write_manifest("a.yaml", &CLIENT.replace("name: cli", "name: a"));
    let a = node.wait_running("a");
    assert_eq!(pod_ip(&a), "10.250.0.2");
    node.write_manifest("b.yaml", &CLIENT.replace("name: cli", "name: b"));
    let b = node.wait_for("b to fail", Duration::from_secs(20), || {
        node.pod("b")
            .filter(|p| p["status"]["reason"] == "FailedCreatePodSandBox")
    });
    let msg = b["status"]["message"].as_str().unwrap();
    assert!(msg.contains("no IP addresses available"), "{msg}");
    assert_eq!(b["status"]["phase"], "Pending");
    let links = node_sh(&node, "busybox ip -o link");
    assert_eq!(
        links.matches("master cni0").count(),
        1,
        "the failed ADD left a veth: {links}"
    );
    // Once a's address is free, b gets it on a later try.
    node.remove_manifest("a.yaml");
    let b = node.wait_for("b to run", Duration::from_secs(60), || {
        node.pod("b")
            .filter(|p| p["status"]["phase"] == "Running" && !pod_ip(p).is_empty())
    });
    assert_eq!(pod_ip(&b), "10.250.0.2");
}
