//! Many nodes on this machine: a "switch" network namespace with one bridge per subnet (it
//! routes between them, as a router would), and per node a `TestNode` (its own network and
//! mount namespaces, state dirs, cgroup root and agent) cabled to its subnet's bridge by a veth.
//! Node 1 runs the all-in-one control plane on its own address; the others join it with a
//! bootstrap token. `hack/lab.sh` makes the same layout by hand.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{sh_ip, Output, TestNode};

/// The bootstrap token the workers join with.
pub const TOKEN: &str = "abcdef.0123456789abcdef";
const BOOTSTRAP: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-abcdef\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: \"true\"\n";

/// A bare network namespace held by a `sleep`.
pub struct Netns(std::process::Child);

impl Netns {
    pub fn new() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        while std::fs::read_link(format!("/proc/{}/ns/net", child.id())).ok() == Some(own.clone()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ns = Netns(child);
        sh_ip(ns.pid(), &["link", "set", "lo", "up"]);
        ns
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// `ip ARGS` inside it.
    pub fn ip(&self, args: &[&str]) {
        sh_ip(self.pid(), args);
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sh -c CMD` in the network namespace of `pid` (the host's tools: ip, bridge, nft).
pub fn sh_in(pid: u32, cmd: &str) -> Output {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "sh", "-c", cmd])
        .stdin(Stdio::null())
        .output()
        .expect("nsenter");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct Cluster {
    /// Dropped last: the nodes' veths go with their namespaces.
    pub nodes: Vec<TestNode>,
    pub switch: Netns,
    /// Each node's subnet (1, 2, ...): 10.200.<subnet>.0/24, the switch at .1.
    pub subnets: Vec<u8>,
    /// Started by `start_dual_stack`.
    pub dual_stack: bool,
}

/// The dual-stack cluster's flags (IPv4 primary).
pub const DUAL_CLUSTER_CIDR: &str = "10.244.0.0/16,fd00:10:244::/56";
pub const DUAL_SERVICE_RANGE: &str = "10.96.0.0/12,fd00:10:96::/112";

impl Cluster {
    /// Node `i` (1-based) on subnet `subnets[i-1]`, with `extra` agent flags on every node.
    /// With `pod_cidrs`, each node is given 10.244.<i>.0/24 by `--pod-cidr`; without, the
    /// nodes register without one and `assign_pod_cidrs` sets what no IPAM controller did.
    /// None where privileged tests are skipped by hand.
    pub fn start(subnets: &[u8], extra: &[&str], pod_cidrs: bool) -> Option<Cluster> {
        Self::start_with(subnets, extra, pod_cidrs, false)
    }

    /// Like `start` without `--pod-cidr`, for dual-stack pods: every agent (and node 1's
    /// control plane, whose node IPAM gives each Node a range of both) gets `--cluster-cidr
    /// DUAL_CLUSTER_CIDR` and `--service-cluster-ip-range DUAL_SERVICE_RANGE`. The nodes and the
    /// switch also get fd00:200:<subnet>::<10+i>/64 (the switch at ::1, routing), so that
    /// pods' IPv6 traffic can leave the cluster; the nodes' InternalIPs stay IPv4.
    pub fn start_dual_stack(subnets: &[u8], extra: &[&str]) -> Option<Cluster> {
        let mut all = vec![
            "--cluster-cidr",
            DUAL_CLUSTER_CIDR,
            "--service-cluster-ip-range",
            DUAL_SERVICE_RANGE,
        ];
        all.extend_from_slice(extra);
        Self::start_with(subnets, &all, false, true)
    }

    fn start_with(subnets: &[u8], extra: &[&str], pod_cidrs: bool, dual: bool) -> Option<Cluster> {
        if !crate::privileged() {
            return None;
        }
        let switch = Netns::new();
        let mut bridges: Vec<u8> = subnets.to_vec();
        bridges.sort();
        bridges.dedup();
        for s in &bridges {
            let br = format!("br{s}");
            sh_ip(switch.pid(), &["link", "add", &br, "type", "bridge"]);
            sh_ip(
                switch.pid(),
                &["addr", "add", &format!("10.200.{s}.1/24"), "dev", &br],
            );
            if dual {
                // No duplicate address detection: the address is usable at once.
                sh_ip(
                    switch.pid(),
                    &[
                        "addr",
                        "add",
                        &format!("fd00:200:{s}::1/64"),
                        "dev",
                        &br,
                        "nodad",
                    ],
                );
            }
            sh_ip(switch.pid(), &["link", "set", &br, "up"]);
        }
        let mut fwd_cmd = "echo 1 > /proc/sys/net/ipv4/ip_forward".to_string();
        if dual {
            fwd_cmd += " && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding";
        }
        let fwd = sh_in(switch.pid(), &fwd_cmd);
        assert_eq!(fwd.code, 0, "{}", fwd.stderr);
        let mut c = Cluster {
            nodes: Vec::new(),
            switch,
            subnets: subnets.to_vec(),
            dual_stack: dual,
        };
        for i in 1..=subnets.len() {
            let mut node = TestNode::with_busybox();
            node.node_name = format!("n{i}");
            node.cluster = true;
            node.pod_cidr = pod_cidrs.then(|| format!("10.244.{i}.0/24"));
            let s = subnets[i - 1];
            let pid = node.holder_pid().to_string();
            let port = format!("s{i}");
            sh_ip(
                c.switch.pid(),
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &pid,
                ],
            );
            sh_ip(
                c.switch.pid(),
                &["link", "set", &port, "master", &format!("br{s}"), "up"],
            );
            let ip = c.ip(i);
            sh_ip(
                node.holder_pid(),
                &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            sh_ip(node.holder_pid(), &["link", "set", "eth0", "up"]);
            sh_ip(
                node.holder_pid(),
                &["route", "add", "default", "via", &format!("10.200.{s}.1")],
            );
            if dual {
                let ip6 = format!("{}/64", c.ip6(i));
                sh_ip(
                    node.holder_pid(),
                    &["addr", "add", &ip6, "dev", "eth0", "nodad"],
                );
                let gw = format!("fd00:200:{s}::1");
                sh_ip(
                    node.holder_pid(),
                    &["-6", "route", "add", "default", "via", &gw],
                );
            }
            node.agent_args = vec!["--node-ip".into(), ip.clone()];
            node.agent_args.extend(extra.iter().map(|a| a.to_string()));
            if i == 1 {
                // On its own address, not 0.0.0.0: the serving certificate names it.
                node.agent_args.push("--apiserver-listen".into());
                node.agent_args.push(format!("{ip}:6443"));
            } else {
                let ca = c.nodes[0].path("root/control-plane/pki/ca.crt");
                node.agent_args.extend([
                    "--server".into(),
                    format!("https://{}:6443", c.ip(1)),
                    "--token".into(),
                    TOKEN.into(),
                    "--certificate-authority".into(),
                    ca.display().to_string(),
                ]);
            }
            node.start_agent();
            if i == 1 {
                node.wait_for("the bootstrap token", Duration::from_secs(60), || {
                    std::thread::sleep(Duration::from_millis(200));
                    (node
                        .kubectl_stdin(33, &["apply", "-f", "-"], Some(BOOTSTRAP))
                        .code
                        == 0)
                        .then_some(())
                });
            }
            c.nodes.push(node);
        }
        for i in 1..=subnets.len() {
            c.wait(&format!("Node n{i} registered"), || {
                c.get_json(&["node", &format!("n{i}")])
            });
        }
        Some(c)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.200.{}.{}", self.subnets[i - 1], 10 + i)
    }

    /// Node `i`'s IPv6 address in a dual-stack cluster (not an InternalIP).
    pub fn ip6(&self, i: usize) -> String {
        format!("fd00:200:{}::{}", self.subnets[i - 1], 10 + i)
    }

    /// The switch's IPv6 address on node `i`'s subnet: outside the cluster.
    pub fn switch_ip6(&self, i: usize) -> String {
        format!("fd00:200:{}::1", self.subnets[i - 1])
    }

    /// Node `i`'s `spec.podCIDRs` once the node IPAM controller has set them.
    pub fn pod_cidrs(&self, i: usize) -> Vec<String> {
        let name = format!("n{i}");
        self.wait(&format!("spec.podCIDRs of {name}"), || {
            let n = self.get_json(&["node", &name])?;
            let l: Vec<String> = n["spec"]["podCIDRs"]
                .as_array()?
                .iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect();
            (!l.is_empty()).then_some(l)
        })
    }

    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i - 1]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut TestNode {
        &mut self.nodes[i - 1]
    }

    /// kubectl 1.33 as the administrator (from node 1's namespace).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.nodes[0].kubectl(33, args)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.nodes[0].kubectl_stdin(33, args, Some(stdin))
    }

    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        self.nodes[0].get_json(args)
    }

    /// Polls `f` (every 100 ms, 60 s at most).
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs kubectl and fails the test when it does.
    pub fn kubectl_ok(&self, args: &[&str]) {
        let out = self.kubectl(args);
        assert_eq!(out.code, 0, "kubectl {args:?}: {}", out.stderr);
    }

    /// `kubectl apply` of one object; fails the test when it is refused.
    pub fn apply(&self, obj: &Value) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], &obj.to_string());
        let name = &obj["metadata"]["name"];
        assert_eq!(out.code, 0, "applying {name}: {}", out.stderr);
    }

    /// The pods (with their phases, reasons and messages), the events and the end of every
    /// agent's log: what a timed-out wait on the cluster shows.
    pub fn diagnostics(&self) -> String {
        let columns = "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,\
                       PHASE:.status.phase,REASON:.status.reason,MESSAGE:.status.message";
        let pods = self.kubectl(&["get", "pods", "-o", columns]).stdout;
        let columns = "custom-columns=OBJECT:.involvedObject.name,REASON:.reason,\
                       FROM:.source.component,REPORTER:.reportingComponent,MESSAGE:.message";
        let events = self.kubectl(&["get", "events", "-o", columns]).stdout;
        let mut out = format!("--- pods ---\n{pods}\n--- events ---\n{events}");
        for (i, n) in self.nodes.iter().enumerate() {
            let log = n.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out += &format!("--- n{} agent log (end) ---\n", i + 1);
            for l in tail.into_iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// Polls `f` every 250 ms for 90 s at most (scheduling and admission across nodes); on a
    /// timeout fails with the cluster's `diagnostics`.
    pub fn wait_long<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The podCIDR of Node `n<i>`: what the node IPAM controller (or `--pod-cidr`) set, or
    /// else 10.244.<i>.0/24, set here as the controller would.
    pub fn assign_pod_cidr(&self, i: usize) -> String {
        let name = format!("n{i}");
        let n = self.get_json(&["node", &name]).expect("the Node");
        if let Some(c) = n["spec"]["podCIDR"].as_str() {
            return c.to_string();
        }
        let cidr = format!("10.244.{i}.0/24");
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}).to_string();
        let out = self.kubectl(&["patch", "node", &name, "--type", "merge", "-p", &patch]);
        // The controller may have been quicker: its range stands.
        let n = self.get_json(&["node", &name]).expect("the Node");
        let c = n["spec"]["podCIDR"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!c.is_empty(), "podCIDR of {name} not set: {}", out.stderr);
        c
    }

    /// Waits until node `i`'s default CNI network uses `cidr`; returns the file.
    pub fn wait_network(&self, i: usize, cidr: &str) -> Value {
        let p = self.node(i).path("cni/net.d/10-podlet.conflist");
        self.wait(&format!("n{i}'s default network on {cidr}"), || {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            (v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == cidr).then_some(v)
        })
    }

    /// Runs a busybox pod `name` on node `i` (`sh -c script`), host network or not; returns
    /// the pod once Running with an IP.
    pub fn run_pod(&self, i: usize, name: &str, host_network: bool, script: &str) -> Value {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeName": format!("n{i}"),
                "hostNetwork": host_network,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox:1.36",
                                "command": ["sh", "-c", script]}],
            },
        });
        let out = self.kubectl_stdin(&["apply", "-f", "-"], &pod.to_string());
        assert_eq!(out.code, 0, "creating pod {name}: {}", out.stderr);
        self.wait(&format!("pod {name} Running"), || {
            self.get_json(&["pod", name])
                .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
        })
    }

    /// `sh -c CMD` in node `i`'s network namespace.
    pub fn sh(&self, i: usize, cmd: &str) -> Output {
        sh_in(self.node(i).holder_pid(), cmd)
    }

    /// `podlet exec` into the pod `name` on node `i`.
    pub fn exec(&self, i: usize, name: &str, cmd: &str) -> Output {
        self.node(i).podlet(&["exec", name, "--", "sh", "-c", cmd])
    }
}

/// A pod script: an HTTP server on `port` whose one CGI answers `peer=<the client's address>`.
pub fn echo_server(port: u16) -> String {
    format!(
        "mkdir -p /tmp/www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\n' > /tmp/www/cgi-bin/peer && chmod +x /tmp/www/cgi-bin/peer && exec httpd -f -p {port} -h /tmp/www"
    )
}

/// The shell command that asks an `echo_server` who is calling.
pub fn ask_peer(ip: &str, port: u16) -> String {
    format!("printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Workers first, while the control plane can still tell them their pods are gone.
        if let Some(n1) = self.nodes.first() {
            let _ = n1
                .kubectl_command(33, &["delete", "pods", "--all", "-A", "--wait=false"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        while let Some(n) = self.nodes.pop() {
            drop(n);
        }
    }
}

/// Like `echo_server`, and the answer also names the pod (`host=<hostname>`).
pub fn echo_server_named(port: u16) -> String {
    format!(
        "mkdir -p /tmp/www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\necho host=$(hostname)\\n' > /tmp/www/cgi-bin/peer && chmod +x /tmp/www/cgi-bin/peer && exec httpd -f -p {port} -h /tmp/www"
    )
}

impl Cluster {
    /// Runs a busybox pod `name` on node `i` with `labels` and one named container port
    /// (`port_name` → `port`), `sh -c script`; returns the pod once Running with an IP.
    pub fn run_backend(
        &self,
        i: usize,
        name: &str,
        labels: Value,
        port_name: &str,
        port: u16,
        script: &str,
    ) -> Value {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {
                "nodeName": format!("n{i}"),
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox:1.36",
                                "ports": [{"name": port_name, "containerPort": port}],
                                "command": ["sh", "-c", script]}],
            },
        });
        let out = self.kubectl_stdin(&["apply", "-f", "-"], &pod.to_string());
        assert_eq!(out.code, 0, "creating pod {name}: {}", out.stderr);
        self.wait(&format!("pod {name} Running"), || {
            self.get_json(&["pod", name])
                .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
        })
    }

    /// Creates Service `name` (ClusterIP, selector `app=<app>`, `ports`); returns its ClusterIP.
    pub fn create_service(&self, name: &str, app: &str, ports: Value) -> String {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": app}, "ports": ports},
        });
        let out = self.kubectl_stdin(&["apply", "-f", "-"], &svc.to_string());
        assert_eq!(out.code, 0, "creating service {name}: {}", out.stderr);
        let s = self.get_json(&["service", name]).expect("the Service");
        s["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Whether an `echo_server`'s answer names `ip` (busybox httpd listens on IPv6 and reports an
/// IPv4 peer as `[::ffff:a.b.c.d]`, an IPv6 one in brackets).
pub fn peer_is(out: &Output, ip: &str) -> bool {
    [
        format!("peer={ip}\n"),
        format!("peer=[::ffff:{ip}]"),
        format!("peer=[{ip}]"),
    ]
    .iter()
    .any(|p| out.stdout.contains(p.as_str()))
}

/// An `echo_server` outside the cluster: busybox httpd in the switch namespace, on `port` of
/// every address there. Stopped (by its PID) when dropped.
pub struct OutsideServer {
    httpd: std::process::Child,
    _www: tempfile::TempDir,
}

impl Cluster {
    pub fn serve_outside(&self, port: u16) -> OutsideServer {
        let www = tempfile::tempdir().unwrap();
        let cgi = www.path().join("cgi-bin");
        std::fs::create_dir_all(&cgi).unwrap();
        std::fs::write(
            cgi.join("peer"),
            "#!/bin/sh\necho Content-Type: text/plain\necho\necho peer=$REMOTE_ADDR\n",
        )
        .unwrap();
        std::fs::set_permissions(
            cgi.join("peer"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let httpd = Command::new("nsenter")
            .args(["-t", &self.switch.pid().to_string(), "-n"])
            .args(["busybox", "httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(www.path())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        OutsideServer { httpd, _www: www }
    }
}

impl Drop for OutsideServer {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
    }
}
