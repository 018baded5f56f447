//! The actions probes and lifecycle hooks run, as the kubelet's prober and hook runner do: a
//! command in the container, an HTTP(S) GET, a TCP connect, a gRPC health check, a sleep; and
//! killing one container (preStop, SIGTERM, SIGKILL after the grace period).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, GRPCAction, HTTPGetAction, LifecycleHandler, Pod, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podlet_runtime::shim::Request;

use super::call;
use crate::pod::{EventSink, NodeInfo};

pub(super) enum Action {
    Exec(Vec<String>),
    Http(HTTPGetAction),
    Tcp(TCPSocketAction),
    Grpc(GRPCAction),
    Sleep(i64),
    None,
}

impl From<&LifecycleHandler> for Action {
    fn from(h: &LifecycleHandler) -> Self {
        if let Some(e) = &h.exec {
            Action::Exec(e.command.clone().unwrap_or_default())
        } else if let Some(g) = &h.http_get {
            Action::Http(g.clone())
        } else if let Some(t) = &h.tcp_socket {
            Action::Tcp(t.clone())
        } else if let Some(s) = &h.sleep {
            Action::Sleep(s.seconds)
        } else {
            Action::None
        }
    }
}

impl From<&Probe> for Action {
    fn from(p: &Probe) -> Self {
        if let Some(e) = &p.exec {
            Action::Exec(e.command.clone().unwrap_or_default())
        } else if let Some(g) = &p.http_get {
            Action::Http(g.clone())
        } else if let Some(t) = &p.tcp_socket {
            Action::Tcp(t.clone())
        } else if let Some(g) = &p.grpc {
            Action::Grpc(g.clone())
        } else {
            Action::None
        }
    }
}

/// One running container instance, as probes and hooks see it.
#[derive(Clone)]
pub(super) struct Target {
    pub info: Arc<NodeInfo>,
    pub events: Arc<EventSink>,
    pub pod: Pod,
    pub container: Container,
    /// The container instance (its runtime id).
    pub id: String,
    /// Where network actions go when they name no host: the pod's IP.
    pub host: String,
    pub run_dir: PathBuf,
}

impl Target {
    /// Runs `action`; `Ok` carries its output, `Err` why it failed (the kubelet's messages).
    pub async fn run(
        &self,
        action: &Action,
        timeout: Duration,
        agent: &str,
    ) -> Result<String, String> {
        match action {
            Action::Exec(cmd) => self.exec(cmd, timeout).await,
            Action::Http(h) => self.http(h, timeout, agent).await,
            Action::Tcp(t) => {
                let host = self.host_of(t.host.as_deref());
                let port = self.port(&t.port)?;
                tcp(&host, port, timeout).await
            }
            Action::Grpc(g) => {
                let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
                grpc(
                    &self.host,
                    port,
                    g.service.as_deref().unwrap_or(""),
                    timeout,
                )
                .await
            }
            Action::Sleep(s) => {
                tokio::time::sleep(Duration::from_secs((*s).max(0) as u64)).await;
                Ok(String::new())
            }
            Action::None => Ok(String::new()),
        }
    }

    fn host_of(&self, host: Option<&str>) -> String {
        host.filter(|h| !h.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| self.host.clone())
    }

    fn port(&self, p: &IntOrString) -> Result<u16, String> {
        let n = match p {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => match name.parse::<i32>() {
                Ok(n) => n,
                Err(_) => self
                    .container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.container_port)
                    .ok_or_else(|| format!("couldn't find port: {name:?}"))?,
            },
        };
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port number: {n}"))
    }

    async fn exec(&self, cmd: &[String], timeout: Duration) -> Result<String, String> {
        let secs = timeout.as_secs().max(1);
        let run = tokio::process::Command::new(&self.info.exe)
            .arg("oci")
            .arg("exec")
            .arg("--root")
            .arg(self.info.cfg.container_state_root())
            .arg("--timeout")
            .arg(secs.to_string())
            .arg(&self.id)
            .arg("--")
            .args(cmd)
            .env("PODLET_LOG", "off")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        // `oci exec` kills the command at the deadline; this one only guards a stuck exec.
        let out = tokio::time::timeout(timeout + Duration::from_secs(5), run)
            .await
            .map_err(|_| format!("command {:?} timed out", cmd.join(" ")))?
            .map_err(|e| e.to_string())?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        match out.status.code() {
            Some(0) => Ok(text),
            Some(podlet_runtime::oci::TIMED_OUT) => {
                Err(format!("command {:?} timed out", cmd.join(" ")))
            }
            Some(c) if text.trim().is_empty() => {
                Err(format!("command {:?} exited with {c}", cmd.join(" ")))
            }
            _ => Err(text),
        }
    }

    async fn http(
        &self,
        h: &HTTPGetAction,
        timeout: Duration,
        agent: &str,
    ) -> Result<String, String> {
        let host = self.host_of(h.host.as_deref());
        let port = self.port(&h.port)?;
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("unsupported scheme {:?}", h.scheme));
        }
        let path = h.path.as_deref().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let host_port = match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let url = format!("{scheme}://{host_port}{path}");
        let mut req = http_client()
            .get(&url)
            .timeout(timeout)
            .header("User-Agent", agent)
            .header("Accept", "*/*");
        for hd in h.http_headers.iter().flatten() {
            // The pod's headers replace the defaults, as the kubelet's do.
            req = req.header(hd.name.as_str(), hd.value.as_str());
        }
        let resp = req.send().await.map_err(|e| describe(&e))?;
        let code = resp.status().as_u16();
        // The kubelet reads at most 10 KiB of the body for the probe's output.
        let mut body = Vec::new();
        let mut resp = resp;
        while body.len() < 10 * 1024 {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(10 * 1024);
        if (200..400).contains(&code) {
            Ok(String::from_utf8_lossy(&body).into_owned())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    }

    /// Kills the container as the kubelet does: preStop hook, SIGTERM, and SIGKILL when it is
    /// still running after the grace period.
    pub async fn kill(&self, grace: Duration) {
        let started = tokio::time::Instant::now();
        if let Some(hook) = self
            .container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
        {
            let _ = tokio::time::timeout(grace, self.pre_stop(hook)).await;
        }
        let _ = call(
            &self.run_dir,
            Request::Kill {
                name: self.container.name.clone(),
                signal: libc::SIGTERM,
            },
        )
        .await;
        let deadline = started + grace;
        loop {
            let state = match call(&self.run_dir, Request::State).await {
                Ok(s) => s,
                Err(_) => return,
            };
            let running = state
                .containers
                .get(&self.container.name)
                .is_some_and(|r| r.id == self.id && r.running());
            if !running {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = call(
                &self.run_dir,
                Request::Wait {
                    after: state.seq,
                    timeout_ms: left.as_millis().max(1) as u64,
                },
            )
            .await;
        }
        let _ = call(
            &self.run_dir,
            Request::Kill {
                name: self.container.name.clone(),
                signal: libc::SIGKILL,
            },
        )
        .await;
    }

    /// Runs the preStop hook; a failure is an event, not an error.
    pub async fn pre_stop(&self, hook: &LifecycleHandler) {
        let r = self
            .run(
                &Action::from(hook),
                Duration::from_secs(3600),
                LIFECYCLE_AGENT,
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(container = %self.container.name, "preStop hook failed: {e}");
            self.events.warning(
                &self.pod,
                "FailedPreStopHook",
                format!("PreStopHook failed: {e}"),
            );
        }
    }
}

pub(super) const LIFECYCLE_AGENT: &str = concat!("kube-lifecycle/", env!("CARGO_PKG_VERSION"));
pub(super) const PROBE_AGENT: &str = concat!("kube-probe/", env!("CARGO_PKG_VERSION"));

/// The prober's HTTP client: no connection reuse, certificates not verified (as the kubelet's
/// probes do), redirects followed only on the same host.
fn http_client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::custom(|a| {
                let same = a
                    .previous()
                    .first()
                    .is_some_and(|p| p.host_str() == a.url().host_str());
                if a.previous().len() >= 10 || !same {
                    // A redirect elsewhere is a success, not followed (the kubelet's rule).
                    a.stop()
                } else {
                    a.follow()
                }
            }))
            .build()
            .expect("the probe HTTP client builds")
    })
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<String, String> {
    let addr = format!("{host}:{port}");
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// A `grpc.health.v1.Health/Check` call over HTTP/2 without TLS, as the kubelet's gRPC probe.
async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Result<String, String> {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    let client = C.get_or_init(|| {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("the gRPC probe client builds")
    });
    // HealthCheckRequest { string service = 1; } in a gRPC length-prefixed frame.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let addr = format!("{host}:{port}");
    let resp = client
        .post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .timeout(timeout)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", PROBE_AGENT)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("timeout: health rpc did not complete within {timeout:?}")
            } else {
                format!(
                    "failed to connect service {addr:?} within {timeout:?}: {}",
                    describe(&e)
                )
            }
        })?;
    let status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let message = resp
        .headers()
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.bytes().await.map_err(|e| describe(&e))?;
    if let Some(s) = status.filter(|s| s != "0") {
        return Err(format!(
            "health rpc failed with status {s}: {}",
            message.unwrap_or_default()
        ));
    }
    // HealthCheckResponse { ServingStatus status = 1; }, SERVING = 1.
    let payload = bytes.get(5..).unwrap_or_default();
    let mut serving = 0u64;
    let mut i = 0;
    while i < payload.len() {
        let tag = payload[i];
        i += 1;
        let mut v = 0u64;
        let mut shift = 0;
        while i < payload.len() {
            let b = payload[i];
            i += 1;
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        if tag == 0x08 {
            serving = v;
        } else if tag & 7 != 0 {
            break;
        }
    }
    match serving {
        1 => Ok(String::new()),
        0 => Err("service unhealthy (responded with \"UNKNOWN\")".into()),
        2 => Err("service unhealthy (responded with \"NOT_SERVING\")".into()),
        3 => Err("service unhealthy (responded with \"SERVICE_UNKNOWN\")".into()),
        n => Err(format!("service unhealthy (responded with {n})")),
    }
}
