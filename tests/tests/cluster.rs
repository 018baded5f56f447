//! End-to-end: podlet as a node of a cluster. The all-in-one node (control plane in-process)
//! runs inside a network namespace made by the test, and the real kubectl talks to it there.

use std::time::Duration;

use podlet_e2e::cluster::Netns;
use podlet_e2e::{privileged, sh_ip, TestNode, POD_CIDR};
use serde_json::Value;

/// The pod as the node itself reports it (its API on the unix socket).
fn local(node: &TestNode, name: &str) -> Option<Value> {
    node.pods()
        .into_iter()
        .find(|p| p["metadata"]["name"] == name)
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

const STATIC: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sleep\", \"1000\"]\n";

const USES_API_OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: uses}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:1.36
    command: ["sh", "-c", "echo env: $GREETING $password; echo file: $(cat /cfg/greeting); echo namespace: $(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace); echo ca: $(head -1 /var/run/secrets/kubernetes.io/serviceaccount/ca.crt); echo token: $(wc -c < /var/run/secrets/kubernetes.io/serviceaccount/token); echo done; exec sleep 1000"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: cfg, key: greeting}}
    envFrom:
    - secretRef: {name: sec}
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
  volumes:
  - name: cfg
    configMap: {name: cfg}
"#;

#[test]
fn all_in_one_node_runs_kubectl_pods_and_reports_status() {
    let Some(node) = TestNode::all_in_one() else {
        return;
    };

    // The node registers and is Ready, with its capacity and identity.
    let n = node.wait_for("the node to be Ready", Duration::from_secs(30), || {
        node.get_json(&["node", "e2e"]).filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    });
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(n["status"]["capacity"]["cpu"], cpus.to_string());
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "e2e");
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert!(n["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("podlet://"));
    assert_eq!(
        n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        10250
    );
    assert_eq!(n["spec"]["podCIDR"], POD_CIDR);
    let out = node.kubectl(27, &["get", "nodes"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("e2e") && l.contains(" Ready")),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let lease = node
        .get_json(&["lease", "-n", "kube-node-lease", "e2e"])
        .expect("node lease");
    assert_eq!(lease["spec"]["holderIdentity"], "e2e");

    // kubectl run (1.33 and 1.27): scheduled here, Running with a pod IP, statuses as the
    // kubelet reports them.
    for (minor, name) in [(33, "one"), (27, "two")] {
        let out = node.kubectl(
            minor,
            &[
                "run",
                name,
                "--image=busybox:1.36",
                "--",
                "sh",
                "-c",
                "echo hello from $HOSTNAME; exec sleep 1000",
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    for name in ["one", "two"] {
        let p = node.wait_pod(name, "pod Running with an IP", |p| {
            phase(p) == "Running" && p["status"]["podIP"].is_string()
        });
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(
            ip.starts_with(POD_CIDR.trim_end_matches("0/24")),
            "pod IP {ip} outside {POD_CIDR}"
        );
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert!(p["status"]["startTime"].is_string());
        let cs = &p["status"]["containerStatuses"][0];
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert!(cs["containerID"].as_str().unwrap().starts_with("podlet://"));
        assert!(cs["state"]["running"]["startedAt"].is_string());
        let types: Vec<&str> = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "True")
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        for t in [
            "PodScheduled",
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
        ] {
            assert!(types.contains(&t), "{t} missing from {types:?}");
        }
    }
    let wide = node.kubectl(33, &["get", "pods", "-o", "wide"]);
    assert!(
        wide.stdout
            .lines()
            .filter(|l| l.contains("Running") && l.contains(" e2e "))
            .count()
            == 2,
        "{}",
        wide.stdout
    );
    // The node lists its images, by digest and tag, with their sizes (ImageLocality's input).
    node.wait_for("busybox in status.images", Duration::from_secs(30), || {
        let n = node.get_json(&["node", "e2e"])?;
        n["status"]["images"].as_array()?.iter().find_map(|i| {
            let names = i["names"].as_array()?;
            let tagged = names.iter().any(|x| x == "docker.io/library/busybox:1.36");
            let digest = names.iter().any(|x| {
                x.as_str()
                    .is_some_and(|s| s.starts_with("docker.io/library/busybox@sha256:"))
            });
            (tagged && digest && i["sizeBytes"].as_i64()? > 0).then_some(())
        })
    });

    // Logs through the apiserver, which streams them from the node API.
    assert_eq!(n["status"]["addresses"][0]["address"], "10.201.0.2");
    for minor in [33, 27] {
        let out = node.kubectl(minor, &["logs", "one"]);
        assert_eq!(out.stdout, "hello from one\n", "{}", out.stderr);
    }
    let out = node.kubectl(33, &["logs", "two", "--timestamps"]);
    assert!(
        out.stdout.ends_with("Z hello from two\n") && out.stdout.starts_with("20"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = node.kubectl(33, &["logs", "one", "-c", "nope"]);
    assert!(
        out.stderr
            .contains("container nope is not valid for pod one"),
        "{}",
        out.stderr
    );
    let out = node.kubectl(
        33,
        &[
            "run",
            "ticker",
            "--image=busybox:1.36",
            "--",
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    node.wait_pod("ticker", "ticker Running", |p| phase(p) == "Running");
    let mut follow = node
        .kubectl_command(33, &["logs", "-f", "ticker", "--tail=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("kubectl logs -f stalled after {seen:?}: {e}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let n: Vec<u32> = seen
        .iter()
        .map(|l| l.trim_start_matches("tick ").parse().unwrap())
        .collect();
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "lines arrive in order as written: {seen:?}"
    );
    // Resource usage through the apiserver's node proxy, as metrics-server reads it.
    let out = node.kubectl(
        33,
        &["get", "--raw", "/api/v1/nodes/e2e/proxy/stats/summary"],
    );
    let summary: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", out.stdout, out.stderr));
    assert_eq!(summary["node"]["nodeName"], "e2e");
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let one = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "one")
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(one["containers"][0]["name"], "one");
    assert!(
        one["containers"][0]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{one}"
    );
    assert!(
        one["cpu"]["usageCoreNanoSeconds"].as_u64().is_some(),
        "{one}"
    );
    let out = node.kubectl(
        33,
        &["get", "--raw", "/api/v1/nodes/e2e/proxy/metrics/resource"],
    );
    assert!(
        out.stdout.contains("container_memory_working_set_bytes{container=\"one\",namespace=\"default\",pod=\"one\"}"),
        "{}",
        out.stdout
    );
    let out = node.kubectl(33, &["get", "--raw", "/api/v1/nodes/e2e/proxy/metrics"]);
    assert!(
        out.stdout.contains("kubelet_running_pods "),
        "{}",
        out.stdout
    );

    // exec through the apiserver: SPDY for 1.27; 1.33 tries WebSocket first and falls back.
    for minor in [33, 27] {
        let out = node.kubectl(minor, &["exec", "one", "--", "hostname"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "one\n"),
            "{}",
            out.stderr
        );
        let out = node.kubectl_stdin(
            minor,
            &[
                "exec",
                "-i",
                "one",
                "--",
                "sh",
                "-c",
                "cat; echo; echo err >&2",
            ],
            Some("through stdin"),
        );
        assert_eq!(out.stdout, "through stdin\n", "{}", out.stderr);
        assert_eq!(out.stderr, "err\n");
        let out = node.kubectl(minor, &["exec", "one", "--", "sh", "-c", "exit 3"]);
        assert_eq!(out.code, 3, "the command's exit code: {}", out.stderr);
    }
    // The official Python client's exec (WebSocket only, v4.channel.k8s.io).
    let py = std::process::Command::new("timeout")
        .args(["60", "nsenter", "-t", &node.holder_pid().to_string(), "-n", "--", "/usr/bin/python3", "-c"])
        .arg(
            "import sys\n\
             from kubernetes import client, config\n\
             from kubernetes.stream import stream\n\
             config.load_kube_config(sys.argv[1])\n\
             out = stream(client.CoreV1Api().connect_get_namespaced_pod_exec, 'one', 'default',\n\
                 command=['sh', '-c', 'echo py-exec from $(hostname)'], stderr=True, stdin=False, stdout=True, tty=False)\n\
             print(out, end='')\n",
        )
        .arg(node.admin_kubeconfig())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&py.stdout),
        "py-exec from one\n",
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    // With a terminal (script gives kubectl one): the command sees a TTY.
    let cmd = format!(
        "{} --kubeconfig {} --cache-dir {} exec -it one -- sh -c '[ -t 0 ] && echo stdin is a terminal; stty size'",
        podlet_e2e::apiserver::kubectl_bin(33).display(),
        node.admin_kubeconfig().display(),
        node.path("kube-cache-33").display()
    );
    let tty = std::process::Command::new("nsenter")
        .args([
            "-t",
            &node.holder_pid().to_string(),
            "-n",
            "--",
            "script",
            "-qec",
            &cmd,
            "/dev/null",
        ])
        .env("HOME", node.dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let tty_out = String::from_utf8_lossy(&tty.stdout);
    assert!(tty_out.contains("stdin is a terminal"), "{tty_out}");

    // port-forward: a local port in the node's namespace reaches the pod's port.
    let out = node.kubectl(
        33,
        &[
            "run",
            "web",
            "--image=busybox:1.36",
            "--",
            "sh",
            "-c",
            "mkdir /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    node.wait_pod("web", "web Running", |p| phase(p) == "Running");
    for minor in [33, 27] {
        let port = if minor == 33 { "18080" } else { "18081" };
        let mut pf = node
            .kubectl_command(
                minor,
                &["port-forward", "pod/web", &format!("{port}:8080"), "-v=6"],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let body = node.wait_for("a forwarded connection", Duration::from_secs(20), || {
            std::thread::sleep(Duration::from_millis(200));
            let o = std::process::Command::new("nsenter")
                .args([
                    "-t",
                    &node.holder_pid().to_string(),
                    "-n",
                    "--",
                    "curl",
                    "-s",
                    "--max-time",
                    "5",
                ])
                .arg(format!("http://127.0.0.1:{port}/"))
                .output()
                .unwrap();
            let b = String::from_utf8_lossy(&o.stdout).into_owned();
            (!b.is_empty()).then_some(b)
        });
        let _ = pf.kill();
        let out = pf.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(body, "pong\n", "kubectl 1.{minor}");
        // 1.33 tunnels SPDY in a WebSocket (GET); 1.27 upgrades to SPDY itself (POST).
        let (verb, want) = if minor == 33 {
            ("GET", "negotiated protocol: portforward.k8s.io")
        } else {
            ("POST", "portforward 101 Switching Protocols")
        };
        assert!(
            log.contains(want) && log.contains(verb),
            "kubectl 1.{minor}: {log}"
        );
    }

    // The node API itself wants credentials.
    let anon = std::process::Command::new("nsenter")
        .args([
            "-t",
            &node.holder_pid().to_string(),
            "-n",
            "--",
            "curl",
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://10.201.0.2:10250/pods",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anon.stdout), "401");

    // Events as the kubelet records them.
    let described = node.wait_for("Started event", Duration::from_secs(20), || {
        let d = node.kubectl(33, &["describe", "pod", "one"]);
        d.stdout.contains("Started").then_some(d.stdout)
    });
    assert!(
        described.contains("Pulled") && described.contains("kubelet"),
        "{described}"
    );

    // A static pod shows up as a mirror pod, owned by the Node; deleting the mirror brings it
    // back, the static pod itself untouched.
    node.write_manifest("web.yaml", STATIC);
    let m = node.wait_pod("web-e2e", "the mirror pod Running", |p| {
        phase(p) == "Running"
    });
    assert!(m["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string());
    assert_eq!(m["metadata"]["ownerReferences"][0]["kind"], "Node");
    let local_uid = node.pod("web").unwrap()["metadata"]["uid"].clone();
    let out = node.kubectl(33, &["delete", "pod", "web-e2e"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = node.wait_pod("web-e2e", "the mirror pod recreated", |p| {
        p["metadata"]["uid"] != m["metadata"]["uid"] && phase(p) == "Running"
    });
    assert!(again["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(node.pod("web").unwrap()["metadata"]["uid"], local_uid);
    node.remove_manifest("web.yaml");
    node.wait_for("the mirror pod gone", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(100));
        let out = node.kubectl(33, &["get", "pod", "web-e2e"]);
        out.stderr.contains("NotFound").then_some(())
    });

    // ConfigMaps, Secrets and the service account token reach the containers.
    for args in [
        &["create", "configmap", "cfg", "--from-literal=greeting=hi"][..],
        &[
            "create",
            "secret",
            "generic",
            "sec",
            "--from-literal=password=s3cret",
        ][..],
    ] {
        let out = node.kubectl(33, args);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let out = node.kubectl_stdin(33, &["apply", "-f", "-"], Some(USES_API_OBJECTS));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let p = node.wait_pod("uses", "the pod using API objects Running", |p| {
        phase(p) == "Running"
    });
    assert!(
        p["spec"]["volumes"]
            .to_string()
            .contains("kube-api-access-"),
        "ServiceAccount admission adds the token volume: {}",
        p["spec"]
    );
    let logs = node.wait_for("the pod's output", Duration::from_secs(20), || {
        let out = node.podlet(&["logs", "uses"]);
        out.stdout.contains("done").then_some(out.stdout)
    });
    assert!(logs.contains("env: hi s3cret"), "{logs}");
    assert!(logs.contains("file: hi"), "{logs}");
    assert!(logs.contains("namespace: default"), "{logs}");
    assert!(logs.contains("ca: -----BEGIN CERTIFICATE-----"), "{logs}");
    let token_len: usize = logs
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(token_len > 100, "{logs}");
    // A missing ConfigMap keeps the container from starting, with the kubelet's reason.
    let out = node.kubectl(33, &["run", "missing", "--image=busybox:1.36", "--overrides",
        r#"{"spec":{"containers":[{"name":"missing","image":"busybox:1.36","command":["sleep","1000"],"env":[{"name":"X","valueFrom":{"configMapKeyRef":{"name":"nope","key":"k"}}}]}]}}"#]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let p = node.wait_pod("missing", "CreateContainerConfigError", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    assert!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("configmap \"nope\" not found"),
        "{p}"
    );
    let out = node.kubectl(
        33,
        &[
            "run",
            "ghost",
            "--image=busybox:1.36",
            "--overrides",
            r#"{"spec":{"serviceAccountName":"ghost"}}"#,
        ],
    );
    assert!(
        out.stderr.contains(
            "error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        ),
        "{}",
        out.stderr
    );
    let out = node.kubectl(
        33,
        &["delete", "pod", "uses", "missing", "--grace-period=1"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Deletion runs preStop hooks before SIGTERM.
    let hooks = node.path("hooks");
    let hooked = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hooked}}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [sleep, '1000']\n    lifecycle:\n      preStop:\n        exec: {{command: [sh, -c, 'echo bye > /hooks/prestop']}}\n    volumeMounts: [{{name: hooks, mountPath: /hooks}}]\n  volumes:\n  - name: hooks\n    hostPath: {{path: {}, type: DirectoryOrCreate}}\n",
        hooks.display()
    );
    let out = node.kubectl_stdin(33, &["apply", "-f", "-"], Some(&hooked));
    assert_eq!(out.code, 0, "{}", out.stderr);
    node.wait_pod("hooked", "hooked Running", |p| phase(p) == "Running");
    let out = node.kubectl(33, &["delete", "pod", "hooked"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(hooks.join("prestop")).unwrap_or_default(),
        "bye\n"
    );

    // kubectl delete waits for the node to confirm; nothing of the pod is left.
    let one = node.get_json(&["pod", "one"]).unwrap();
    let uid = one["metadata"]["uid"].as_str().unwrap().to_string();
    let out = node.kubectl(33, &["delete", "pod", "one", "--grace-period=1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(local(&node, "one").is_none(), "the node still has the pod");
    assert!(!node.path(&format!("run/pods/{uid}")).exists());
    assert!(!node.path(&format!("root/pods/{uid}")).exists());
}

const BOOTSTRAP: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-abcdef\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: \"true\"\n";

fn ready_since(node: &Value) -> Option<&str> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")?["lastHeartbeatTime"]
        .as_str()
}

#[test]
fn worker_joins_with_a_bootstrap_token_and_survives_control_plane_outage() {
    use podlet_e2e::apiserver::ControlPlane;
    if !privileged() {
        return;
    }
    // The control plane in one namespace, the worker node in another, a veth between them.
    let cp_ns = Netns::new();
    let mut node = TestNode::with_busybox();
    cp_ns.ip(&[
        "link",
        "add",
        "cp0",
        "type",
        "veth",
        "peer",
        "name",
        "node0",
        "netns",
        &node.holder_pid().to_string(),
    ]);
    cp_ns.ip(&["addr", "add", "10.202.0.1/24", "dev", "cp0"]);
    cp_ns.ip(&["link", "set", "cp0", "up"]);
    sh_ip(
        node.holder_pid(),
        &["addr", "add", "10.202.0.2/24", "dev", "node0"],
    );
    sh_ip(node.holder_pid(), &["link", "set", "node0", "up"]);
    let mut cp = ControlPlane::start_in_netns(cp_ns.pid(), "10.202.0.1");
    cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(BOOTSTRAP));

    // A join with a wrong token fails with the apiserver's answer, and leaves no kubeconfig.
    node.cluster = true;
    let ca = cp.ca().display().to_string();
    let bad = node.podlet(&[
        "run",
        "--server",
        &cp.url(),
        "--token",
        "abcdef.ffffffffffffffff",
        "--certificate-authority",
        &ca,
        "--node-name",
        "e2e",
        "--port",
        "0",
        "--manifest-dir",
        node.path("manifests").to_str().unwrap(),
        "--cni-conf-dir",
        node.path("cni/net.d").to_str().unwrap(),
        "--cni-bin-dir",
        node.path("cni/bin").to_str().unwrap(),
        "--cni-cache-dir",
        node.path("cni/cache").to_str().unwrap(),
        "--cgroup-root",
        &node.cgroup_root,
    ]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("Unauthorized") || bad.stderr.contains("401"),
        "{}",
        bad.stderr
    );
    assert!(!node.path("root/kubelet.kubeconfig").exists());

    node.agent_args = vec![
        "--server".into(),
        cp.url(),
        "--token".into(),
        "abcdef.0123456789abcdef".into(),
        "--certificate-authority".into(),
        ca,
        "--node-labels".into(),
        "zone=lab".into(),
    ];
    node.start_agent();
    let n = node.wait_for("the worker Ready", Duration::from_secs(30), || {
        get(&cp, &["node", "e2e"]).filter(|n| ready_since(n).is_some())
    });
    assert_eq!(n["metadata"]["labels"]["zone"], "lab");
    let kc = std::fs::read_to_string(node.path("root/kubelet.kubeconfig")).unwrap();
    assert!(kc.contains("client-certificate-data"), "{kc}");
    let csrs = k(&cp, &["get", "csr"]);
    assert!(
        csrs.contains("system:bootstrap:abcdef") && csrs.contains("Approved,Issued"),
        "{csrs}"
    );

    k(
        &cp,
        &["run", "w", "--image=busybox:1.36", "--", "sleep", "1000"],
    );
    let running = |p: &Value| phase(p) == "Running" && p["status"]["podIP"].is_string();
    let p = node.wait_for(
        "the pod Running on the worker",
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(100));
            get(&cp, &["pod", "w"]).filter(running)
        },
    );
    assert_eq!(p["spec"]["nodeName"], "e2e");
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let pid = node.shim_state(&uid)["containers"]["w"]["pid"]
        .as_i64()
        .unwrap();

    // The control plane goes away for 30 s: the pod keeps running, untouched.
    cp.kill();
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        podlet_e2e::alive(pid),
        "the container died while the apiserver was down"
    );
    assert_eq!(phase(&local(&node, "w").unwrap()), "Running");
    cp.restart();
    // The agent reconnects: it heartbeats again and takes new pods.
    let restarted = jiff_now();
    node.wait_for(
        "a heartbeat after the restart",
        Duration::from_secs(40),
        || {
            std::thread::sleep(Duration::from_millis(500));
            let l = get(&cp, &["lease", "-n", "kube-node-lease", "e2e"])?;
            (l["spec"]["renewTime"].as_str()? > restarted.as_str()).then_some(())
        },
    );
    k(
        &cp,
        &["run", "x", "--image=busybox:1.36", "--", "sleep", "1000"],
    );
    node.wait_for(
        "a new pod after the restart",
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(100));
            get(&cp, &["pod", "x"]).filter(running)
        },
    );

    // The agent restarted: it adopts its pods without restarting them.
    node.kill_agent();
    node.start_agent();
    std::thread::sleep(Duration::from_secs(2));
    let p = get(&cp, &["pod", "w"]).unwrap();
    assert_eq!(phase(&p), "Running");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(
        node.shim_state(&uid)["containers"]["w"]["pid"]
            .as_i64()
            .unwrap(),
        pid
    );

    k(&cp, &["delete", "pod", "w", "x", "--grace-period=1"]);
    assert!(node.pods().is_empty(), "pods left on the worker");
}

fn k(cp: &podlet_e2e::apiserver::ControlPlane, args: &[&str]) -> String {
    let out = cp.kubectl(33, args);
    assert_eq!(out.code, 0, "kubectl {args:?}: {}", out.stderr);
    out.stdout
}

fn get(cp: &podlet_e2e::apiserver::ControlPlane, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = cp.kubectl(33, &a);
    (out.code == 0).then(|| serde_json::from_str(&out.stdout).ok())?
}

/// Now in RFC 3339 with microseconds, comparable as text with the apiserver's MicroTime.
fn jiff_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
