//! The node API's streaming endpoints, as the kubelet serves them: `/exec/{ns}/{pod}/{container}`
//! and `/attach/{ns}/{pod}/{container}` over SPDY/3.1 or WebSocket (`v5`/`v4.channel.k8s.io`),
//! and `/portForward/{ns}/{pod}` over SPDY/3.1 (`portforward.k8s.io`), bare or tunneled in a
//! WebSocket (`SPDY/3.1+portforward.k8s.io`, kubectl 1.30+). Commands run through `podlet oci exec`,
//! a single-threaded child of the agent (containers are never entered from the agent's own
//! threads); port forwarding connects from inside the pod's network namespace.
//!
//! `mod.rs` answers the exec and attach requests and runs SPDY sessions; `session` is what a
//! session runs, `websocket` the WebSocket framing, `portforward` the port-forward endpoint,
//! `spdy` the SPDY/3.1 framing.

mod portforward;
mod session;
mod spdy;
mod websocket;

pub use portforward::port_forward;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use crate::pod::{NodeInfo, StatusCache};
use session::{ExecIo, ExecOptions, Job};
use websocket::{websocket_exec, websocket_handshake, websocket_switching};

/// Exec protocols, best first (v5 only adds the close signal on WebSocket).
const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

fn text(code: StatusCode, msg: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], msg).into_response()
}

fn query(req: &Request) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default()
}

fn flag(q: &[(String, String)], k: &str) -> bool {
    q.iter()
        .any(|(n, v)| n == k && matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// Picks the protocol: the first of ours the client offers.
fn negotiate<'a>(req: &Request, ours: &[&'a str]) -> Option<&'a str> {
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    ours.iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
}

fn wants_spdy(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
}

/// 101 Switching Protocols to SPDY with the chosen stream protocol.
fn switching(protocol: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(protocol) {
        h.insert("x-stream-protocol-version", v);
    }
    r
}

/// The running container's runtime ID and the pod's UID.
fn running_container(
    statuses: &StatusCache,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<(String, String), (StatusCode, String)> {
    let p = statuses.pod_named(ns, pod).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        )
    })?;
    let st = p.status.clone().unwrap_or_default();
    let cs = st
        .container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("container {container} is not valid for pod {pod}"),
            )
        })?;
    if cs.state.as_ref().and_then(|s| s.running.as_ref()).is_none() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {pod}"),
        ));
    }
    let id = cs
        .container_id
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches("podlet://")
        .to_string();
    Ok((id, p.metadata.uid.clone().unwrap_or_default()))
}
pub async fn exec(
    State(info): State<Arc<NodeInfo>>,
    State(statuses): State<Arc<StatusCache>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    let q = query(&req);
    let cmd: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if cmd.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container".into(),
        );
    }
    let (id, _) = match running_container(&statuses, &ns, &pod, &container) {
        Ok(x) => x,
        Err((code, msg)) => return text(code, msg),
    };
    upgrade(info, req, Job::Exec { id, cmd }, options(&q))
}

/// `/attach/{ns}/{pod}/{container}`: the running container's own stdio, through its shim.
pub async fn attach(
    State(info): State<Arc<NodeInfo>>,
    State(statuses): State<Arc<StatusCache>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    let q = query(&req);
    let (_, uid) = match running_container(&statuses, &ns, &pod, &container) {
        Ok(x) => x,
        Err((code, msg)) => return text(code, msg),
    };
    let job = Job::Attach {
        run_dir: info.cfg.pod_run_dir(&uid),
        name: container,
    };
    upgrade(info, req, job, options(&q))
}

fn options(q: &[(String, String)]) -> ExecOptions {
    ExecOptions {
        stdin: flag(q, "stdin"),
        stdout: flag(q, "stdout"),
        stderr: flag(q, "stderr"),
        tty: flag(q, "tty"),
    }
}
/// Answers the upgrade a client asks for: SPDY/3.1, or a WebSocket.
fn upgrade(info: Arc<NodeInfo>, mut req: Request, job: Job, opts: ExecOptions) -> Response {
    if !wants_spdy(&req) {
        return websocket_upgrade(info, req, job, opts);
    }
    let Some(protocol) = negotiate(&req, EXEC_PROTOCOLS) else {
        return text(
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: unable to negotiate protocol: client supports {:?}, server supports {EXEC_PROTOCOLS:?}",
                req.headers().get_all("x-stream-protocol-version").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>()),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                if let Err(e) = spdy_exec(info, TokioIo::new(up), job, opts).await {
                    tracing::debug!("exec session: {e}");
                }
            }
            Err(e) => tracing::debug!("exec upgrade: {e}"),
        }
    });
    switching(protocol)
}

/// Answers a WebSocket upgrade for exec with the best channel protocol the client offers.
fn websocket_upgrade(
    info: Arc<NodeInfo>,
    mut req: Request,
    job: Job,
    opts: ExecOptions,
) -> Response {
    let Some((accept, protocol)) = websocket_handshake(&req, EXEC_PROTOCOLS) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: a WebSocket with one of {EXEC_PROTOCOLS:?} or SPDY/3.1 is required"),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            websocket_exec(info, up, job, opts).await;
        }
    });
    websocket_switching(&accept, protocol)
}
async fn spdy_exec<IO>(info: Arc<NodeInfo>, io: IO, job: Job, o: ExecOptions) -> std::io::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let mut session = spdy::Session::start(r, w);
    let tx = session.sender();
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    let expect_stderr = o.stderr && !o.tty;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while error.is_none()
        || (o.stdin && stdin.is_none())
        || (o.stdout && stdout.is_none())
        || (expect_stderr && stderr.is_none())
        || (o.tty && resize.is_none())
    {
        let Ok(Some(s)) = tokio::time::timeout_at(deadline, session.accept()).await else {
            return Err(std::io::Error::other(
                "the client did not open the expected streams",
            ));
        };
        match s.header("streamtype").unwrap_or_default() {
            "error" => error = Some(s),
            "stdin" => stdin = Some(s),
            "stdout" => stdout = Some(s),
            "stderr" => stderr = Some(s),
            "resize" => resize = Some(s),
            _ => {}
        }
    }
    let error: spdy::Incoming = error.expect("checked above");
    let ids = [
        (1u8, stdout.as_ref().map(|s| s.id)),
        (2u8, stderr.as_ref().map(|s| s.id)),
    ];
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<(u8, Vec<u8>)>();
    let writer = {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some((ch, data)) = out_rx.recv().await {
                let sid = ids.iter().find(|(c, _)| *c == ch).and_then(|(_, id)| *id);
                if let Some(sid) = sid {
                    if tx.data(sid, &data).await.is_err() {
                        break;
                    }
                }
            }
        })
    };
    let io = ExecIo {
        stdin: stdin.map(|s| s.data),
        resize: resize.map(|s| s.data),
        out: out_tx,
    };
    let result = job.run(&info, o, io).await;
    let _ = writer.await;
    let status = job.status(result);
    tx.data(error.id, &status).await?;
    for sid in [Some(error.id), ids[0].1, ids[1].1].into_iter().flatten() {
        let _ = tx.close(sid).await;
    }
    tx.goaway().await
}
