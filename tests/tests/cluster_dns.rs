//! End-to-end: the cluster DNS every agent serves on kube-dns' address (10.96.0.10), asked from
//! a pod with busybox's nslookup: services (ClusterIP, headless with hostnames and SRV,
//! ExternalName), PTR, the schema TXT, pod records, NXDOMAIN, short names through the search
//! path, names forwarded to the node's upstream (a stub resolver the test runs in its lab
//! switch's namespace), and TCP. The node's DNS address goes with `podlet cleanup`.

use std::process::{Child, Command, Stdio};

use podlet_e2e::cluster::Cluster;

/// A stub upstream resolver: `*.example.test` A → 192.0.2.77, anything else NXDOMAIN.
const STUB: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    tid = struct.unpack(">H", q[:2])[0]
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode())
        i += q[i] + 1
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    name, question = ".".join(labels).lower(), q[12:i + 5]
    print("asked", name, qtype, flush=True)
    if name.endswith("example.test") and qtype == 1:
        ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.77")
        s.sendto(struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + ans, peer)
    else:
        rcode = 0x8180 if name.endswith("example.test") else 0x8183
        s.sendto(struct.pack(">HHHHHH", tid, rcode, 1, 0, 0, 0) + question, peer)
"#;

/// A TCP question from the node's namespace: the answer's RCODE and answer count.
const TCP_ASK: &str = r#"
import socket, struct, sys
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
for l in sys.argv[1].split("."):
    q += bytes([len(l)]) + l.encode()
q += b"\x00" + struct.pack(">HH", 1, 1)
c = socket.create_connection(("10.96.0.10", 53), timeout=5)
c.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", c.recv(2))[0]
a = b""
while len(a) < n:
    a += c.recv(n - len(a))
print("rcode", a[3] & 15, "answers", struct.unpack(">H", a[6:8])[0])
"#;

struct Stub(Child);

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: web}}
spec:
  hostname: web-0
  subdomain: web-h
  nodeName: n1
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: "busybox:1.36", command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: "busybox:1.36", command: [sleep, "3600"]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-h}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: www.example.test
"#;

#[test]
fn pods_resolve_cluster_and_outside_names() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("upstream-resolv.conf");
    std::fs::write(&resolv, "nameserver 10.200.1.1\n").unwrap();
    let resolv_flag = format!("--resolv-conf={}", resolv.display());
    let Some(c) = Cluster::start(&[1], &[&resolv_flag], true) else {
        return;
    };
    let mut stub = Stub(
        Command::new("nsenter")
            .args([
                "-t",
                &c.switch.pid().to_string(),
                "-n",
                "python3",
                "-c",
                STUB,
                "10.200.1.1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the stub resolver"),
    );
    {
        use std::io::BufRead;
        let mut line = String::new();
        let out = stub.0.stdout.as_mut().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }
    // The control plane reserves kube-dns' address; every node answers on it.
    let dns = c.kubectl(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(dns.stdout, "10.96.0.10", "{dns:?}");
    // The apiserver's own EndpointSlice, which proxies read (as kube-apiserver writes it).
    let slice = c.kubectl(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.endpoints[0].addresses[0]} {.ports[0].port}",
    ]);
    assert_eq!(slice.stdout, format!("{} 6443", c.ip(1)), "{slice:?}");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], OBJECTS);
    assert_eq!(out.code, 0, "{out:?}");
    let web = c.wait("web's cluster IP", || {
        c.get_json(&["svc", "web"])?["spec"]["clusterIP"]
            .as_str()
            .map(String::from)
    });
    let pod_ip = c.wait("web-0 Running", || {
        let p = c.get_json(&["pod", "web-0"])?;
        (p["status"]["phase"] == "Running")
            .then(|| p["status"]["podIP"].as_str().map(String::from))?
    });
    c.wait("client Running", || {
        (c.get_json(&["pod", "client"])?["status"]["phase"] == "Running").then_some(())
    });
    let resolv = c.exec(1, "client", "cat /etc/resolv.conf");
    assert!(
        resolv.stdout.contains("nameserver 10.96.0.10"),
        "{resolv:?}"
    );
    assert!(
        resolv
            .stdout
            .contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv:?}"
    );
    let ns = |args: &str| {
        let o = c.exec(1, "client", &format!("nslookup {args} 2>&1"));
        format!("{}{}", o.stdout, o.stderr)
    };
    // Names follow the watches: the headless service's endpoint may take a moment.
    let srv = c.wait("the headless service's SRV", || {
        let o = ns("-type=srv _http._tcp.web-h.default.svc.cluster.local");
        o.contains("web-0.web-h.default.svc.cluster.local")
            .then_some(o)
    });
    assert!(srv.contains(" 80 "), "{srv}");
    let full = ns("web.default.svc.cluster.local");
    assert!(full.contains(&format!("Address: {web}")), "{full}");
    let short = ns("web");
    assert!(
        short.contains(&format!("Address: {web}")),
        "short name via search: {short}"
    );
    // libc's resolver (busybox's nslookup searches only for names without a dot).
    let api = c.exec(1, "client", "ping -c 1 -W 1 kubernetes.default 2>&1");
    assert!(
        api.stdout.contains("PING kubernetes.default (10.96.0.1)"),
        "{api:?}"
    );
    let host = ns("web-0.web-h.default.svc.cluster.local");
    assert!(host.contains(&format!("Address: {pod_ip}")), "{host}");
    let headless = ns("web-h.default.svc.cluster.local");
    assert!(
        headless.contains(&format!("Address: {pod_ip}")),
        "{headless}"
    );
    let ptr = ns(&web);
    assert!(ptr.contains("web.default.svc.cluster.local"), "{ptr}");
    let txt = ns("-type=txt dns-version.cluster.local");
    assert!(txt.contains("1.1.0"), "{txt}");
    let pod = ns(&format!(
        "{}.default.pod.cluster.local",
        pod_ip.replace('.', "-")
    ));
    assert!(pod.contains(&format!("Address: {pod_ip}")), "{pod}");
    let nx = ns("nothere.default.svc.cluster.local");
    assert!(nx.contains("NXDOMAIN"), "{nx}");
    // Outside the cluster: the node's upstream, through the CNAME of an ExternalName too.
    let out = ns("www.example.test");
    assert!(out.contains("Address: 192.0.2.77"), "{out}");
    let ext = ns("ext.default.svc.cluster.local");
    assert!(
        ext.contains("www.example.test") && ext.contains("192.0.2.77"),
        "{ext}"
    );
    // TCP, from the node itself.
    let tcp = c.sh(
        1,
        &format!(
            "python3 -c '{}' kubernetes.default.svc.cluster.local",
            TCP_ASK.replace('\'', "\"")
        ),
    );
    assert_eq!(tcp.stdout.trim(), "rcode 0 answers 1", "{tcp:?}");
    // A service that goes is gone from DNS at once (NXDOMAIN, no stale cache here).
    let del = c.kubectl(&["delete", "svc", "web"]);
    assert_eq!(del.code, 0, "{del:?}");
    c.wait("web gone from DNS", || {
        ns("web.default.svc.cluster.local")
            .contains("NXDOMAIN")
            .then_some(())
    });
    // The address is on the node's lo, labelled; cleanup (after the agent) takes it.
    let lo = c.sh(1, "ip -4 addr show dev lo");
    assert!(
        lo.stdout.contains("10.96.0.10/32") && lo.stdout.contains("lo:podlet-dns"),
        "{lo:?}"
    );
    drop(stub);
    let mut c = c;
    c.node_mut(1).kill_agent();
    let cleanup = c.node(1).podlet(&["cleanup"]);
    assert!(cleanup.stdout.contains("10.96.0.10/32"), "{cleanup:?}");
    let lo = c.sh(1, "ip -4 addr show dev lo");
    assert!(!lo.stdout.contains("10.96.0.10"), "{lo:?}");
}
