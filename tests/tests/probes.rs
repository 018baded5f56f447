//! End-to-end: probes and lifecycle hooks on an all-in-one node. Startup (tcpSocket on a named
//! port), readiness (exec), liveness (httpGet; gRPC against a real grpcio health server),
//! postStart hooks that succeed and fail, and the events kubectl shows for them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use podlet_e2e::TestNode;
use serde_json::Value;

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:1.36
    command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && sleep 2 && exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    lifecycle:
      postStart:
        exec: {command: [sh, -c, "echo started > /tmp/poststart"]}
    startupProbe:
      tcpSocket: {port: http}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      httpGet: {path: /index.html, port: http}
      periodSeconds: 1
"#;

const UNHEALTHY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: live
    image: busybox:1.36
    command: [sh, -c, "mkdir -p /srv && exec httpd -f -p 8081 -h /srv"]
    livenessProbe:
      httpGet: {path: /healthz, port: 8081}
      periodSeconds: 1
      failureThreshold: 2
  - name: hook
    image: busybox:1.36
    command: [sleep, "1000"]
    lifecycle:
      postStart:
        exec: {command: [sh, -c, "echo no way; exit 7"]}
"#;

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn condition(pod: &Value, type_: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// `(reason, message)` of the events about pod `name`.
fn events(node: &TestNode, name: &str) -> Vec<(String, String)> {
    let list = node.get_json(&["events"]).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn wait_event(node: &TestNode, pod: &str, reason: &str, message: &str) {
    node.wait_for(
        &format!("event {reason} {message:?} on {pod}"),
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(200));
            events(node, pod)
                .iter()
                .any(|(r, m)| r == reason && m.contains(message))
                .then_some(())
        },
    );
}

#[test]
fn probes_and_hooks_drive_readiness_and_restarts() {
    let Some(node) = TestNode::all_in_one() else {
        return;
    };
    for manifest in [PROBED, UNHEALTHY] {
        let out = node.kubectl_stdin(33, &["apply", "-f", "-"], Some(manifest));
        assert_eq!(out.code, 0, "{}", out.stderr);
    }

    // Startup passes once httpd listens; readiness stays False until its file exists.
    let p = node.wait_pod("probed", "probed started", |p| {
        container(p, "web")["started"] == true
    });
    assert_eq!(container(&p, "web")["ready"], false);
    assert_eq!(condition(&p, "Ready"), "False");
    assert_eq!(condition(&p, "ContainersReady"), "False");
    wait_event(&node, "probed", "Unhealthy", "Readiness probe failed:");
    // The postStart hook ran in the container.
    let out = node.kubectl(33, &["exec", "probed", "--", "cat", "/tmp/poststart"]);
    assert_eq!(out.stdout, "started\n", "{}", out.stderr);

    let out = node.kubectl(33, &["exec", "probed", "--", "touch", "/tmp/ready"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let p = node.wait_pod("probed", "probed Ready", |p| {
        condition(p, "Ready") == "True"
    });
    assert_eq!(container(&p, "web")["ready"], true);
    let out = node.kubectl(33, &["get", "pod", "probed"]);
    assert!(out.stdout.contains("1/1"), "{}", out.stdout);
    // Readiness failing again takes the pod out of service, without a restart.
    let out = node.kubectl(33, &["exec", "probed", "--", "rm", "/tmp/ready"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let p = node.wait_pod("probed", "probed not Ready", |p| {
        condition(p, "Ready") == "False"
    });
    assert_eq!(container(&p, "web")["restartCount"], 0);

    // A failing liveness probe restarts the container (SIGKILL after the grace period: httpd
    // as PID 1 ignores SIGTERM).
    let p = node.wait_pod("unhealthy", "live restarted", |p| {
        container(p, "live")["restartCount"].as_i64() >= Some(1)
    });
    assert_eq!(
        container(&p, "live")["lastState"]["terminated"]["exitCode"],
        137
    );
    wait_event(
        &node,
        "unhealthy",
        "Unhealthy",
        "Liveness probe failed: HTTP probe failed with statuscode: 404",
    );
    wait_event(
        &node,
        "unhealthy",
        "Killing",
        "Container live failed liveness probe, will be restarted",
    );
    // A failing postStart hook kills its container, which restarts by the pod's policy.
    wait_event(&node, "unhealthy", "FailedPostStartHook", "no way");
    node.wait_pod("unhealthy", "hook restarted", |p| {
        container(p, "hook")["restartCount"].as_i64() >= Some(1)
    });
    // The healthy pod was never restarted by its liveness probe.
    let p = node.get_json(&["pod", "probed"]).unwrap();
    assert_eq!(container(&p, "web")["restartCount"], 0);

    let out = node.kubectl(33, &["delete", "pod", "probed", "unhealthy"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A `grpc.health.v1.Health` server (HTTP/2 without TLS, what grpc-go and C-core servers speak)
/// listening on `addr` inside the network namespace of process `pid`: SERVING, or NOT_SERVING
/// once `serving` is false. Stops on drop.
struct HealthServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthServer {
    fn start(pid: u32, addr: &str, serving: Arc<AtomicBool>) -> Self {
        use bytes::Bytes;
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let thread = std::thread::spawn(move || {
            // setns moves this thread only: the listener is the node's, the test stays put.
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(()).unwrap();
                loop {
                    let (io, _) = tokio::select! {
                        c = listener.accept() => c.unwrap(),
                        _ = &mut stopped => return,
                    };
                    let serving = serving.clone();
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let status: u8 = if serving.load(Ordering::SeqCst) { 1 } else { 2 };
                            let ok = req.uri().path() == "/grpc.health.v1.Health/Check";
                            async move {
                                let mut trailers = hyper::HeaderMap::new();
                                trailers.insert(
                                    "grpc-status",
                                    if ok { "0" } else { "12" }.parse().unwrap(),
                                );
                                let mut frames = Vec::new();
                                if ok {
                                    // HealthCheckResponse { status = 1 } in a length-prefixed frame.
                                    frames.push(Ok::<_, std::convert::Infallible>(Frame::data(
                                        Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]),
                                    )));
                                }
                                frames.push(Ok(Frame::trailers(trailers)));
                                let body = StreamBody::new(futures_util::stream::iter(frames));
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                            }
                        },
                    );
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                    });
                }
            });
        });
        ready.recv().expect("the gRPC health server listens");
        HealthServer {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn grpc_liveness_probe_asks_the_health_service() {
    let Some(node) = TestNode::all_in_one() else {
        return;
    };
    let serving = Arc::new(AtomicBool::new(true));
    let _server = HealthServer::start(node.holder_pid(), "10.201.0.2:9090", serving.clone());

    // A host-network pod: its probes go to the node's address, where the server listens.
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: grpc}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:1.36
    command: [sleep, "1000"]
    livenessProbe:
      grpc: {port: 9090}
      periodSeconds: 1
      failureThreshold: 2
"#;
    let out = node.kubectl_stdin(33, &["apply", "-f", "-"], Some(pod));
    assert_eq!(out.code, 0, "{}", out.stderr);
    node.wait_pod("grpc", "grpc Ready", |p| condition(p, "Ready") == "True");
    // SERVING for three seconds: no restart.
    std::thread::sleep(Duration::from_secs(3));
    let p = node.get_json(&["pod", "grpc"]).unwrap();
    assert_eq!(container(&p, "c")["restartCount"], 0);
    let ev = events(&node, "grpc");
    assert!(!ev.iter().any(|(r, _)| r == "Unhealthy"), "{ev:?}");

    serving.store(false, Ordering::SeqCst);
    wait_event(
        &node,
        "grpc",
        "Unhealthy",
        "Liveness probe failed: service unhealthy (responded with \"NOT_SERVING\")",
    );
    node.wait_pod("grpc", "grpc restarted", |p| {
        container(p, "c")["restartCount"].as_i64() >= Some(1)
    });
    let out = node.kubectl(33, &["delete", "pod", "grpc"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}
