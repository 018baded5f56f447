//! The node API's streaming endpoints, as the kubelet serves them: `/exec/{ns}/{pod}/{container}`
//! and `/attach/{ns}/{pod}/{container}` over SPDY/3.1 or WebSocket (`v5`/`v4.channel.k8s.io`),
//! and `/portForward/{ns}/{pod}` over SPDY/3.1 (`portforward.k8s.io`), bare or tunneled in a
//! WebSocket (`SPDY/3.1+portforward.k8s.io`, kubectl 1.30+). Commands run through `podlet oci exec`,
//! a single-threaded child of the agent (containers are never entered from the agent's own
//! threads); port forwarding connects from inside the pod's network namespace.

mod spdy;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pod::{NodeInfo, StatusCache};

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

/// The exec result on the error stream, as the kubelet writes it for v4 and later.
fn exit_status(code: i32, cmd: &[String]) -> Vec<u8> {
    let v = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    v.to_string().into_bytes()
}

fn failure(message: &str) -> Vec<u8> {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
        .to_string()
        .into_bytes()
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

/// What a stream session runs: a command in the container, or an attachment to it.
enum Job {
    Exec {
        id: String,
        cmd: Vec<String>,
    },
    Attach {
        run_dir: std::path::PathBuf,
        name: String,
    },
}

impl Job {
    async fn run(&self, info: &NodeInfo, o: ExecOptions, io: ExecIo) -> Result<i32, String> {
        match self {
            Job::Exec { id, cmd } => run_exec(info, id, cmd, o, io).await,
            Job::Attach { run_dir, name } => run_attach(run_dir, name, o, io).await,
        }
    }

    /// The final Status on the error stream.
    fn status(&self, result: Result<i32, String>) -> Vec<u8> {
        match (self, result) {
            (_, Err(e)) => failure(&e),
            (Job::Exec { cmd, .. }, Ok(code)) => exit_status(code, cmd),
            (Job::Attach { .. }, Ok(_)) => exit_status(0, &[]),
        }
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

/// The accept key and the subprotocol (the first of ours the client offers) of a WebSocket
/// upgrade request.
fn websocket_handshake(req: &Request, ours: &[&'static str]) -> Option<(String, &'static str)> {
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))?;
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let protocol = ours.iter().find(|p| offered.iter().any(|o| o == *p))?;
    is_ws.then_some((key, *protocol))
}

/// The server side of an upgraded WebSocket connection.
async fn server_websocket(
    up: hyper::upgrade::Upgraded,
) -> tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(up),
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        None,
    )
    .await
}

fn websocket_switching(accept: &str, protocol: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert("sec-websocket-accept", v);
    }
    h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    r
}

#[derive(Clone, Copy)]
struct ExecOptions {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// What an exec session exchanges with its client, whatever the transport.
struct ExecIo {
    stdin: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
    resize: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
    /// (1 stdout | 2 stderr, bytes).
    out: tokio::sync::mpsc::UnboundedSender<(u8, Vec<u8>)>,
}

/// Runs the command through `podlet oci exec` with pipes (or a terminal) wired to `io`;
/// returns its exit code once its output is drained.
async fn run_exec(
    info: &NodeInfo,
    id: &str,
    cmd: &[String],
    o: ExecOptions,
    io: ExecIo,
) -> Result<i32, String> {
    let mut command = tokio::process::Command::new(&info.exe);
    command
        .arg("oci")
        .arg("exec")
        .arg("--root")
        .arg(info.cfg.container_state_root())
        .arg(id)
        .arg("--")
        .args(cmd)
        // Its stderr is the command's: no log lines of podlet's own there.
        .env("PODLET_LOG", "off")
        .kill_on_drop(false);
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    // With a TTY the command gets the terminal's slave side as its stdio.
    let pty = if o.tty {
        let p = nix::pty::openpty(None, None).map_err(|e| e.to_string())?;
        let slave = std::fs::File::from(p.slave);
        let dup = |f: &std::fs::File| f.try_clone().map_err(|e| e.to_string());
        command
            .stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        Some(std::fs::File::from(p.master))
    } else {
        command
            .stdin(pipe(o.stdin))
            .stdout(pipe(o.stdout))
            .stderr(pipe(o.stderr));
        None
    };
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting the command: {e}"))?;
    drop(command);
    let mut pumps = Vec::new();
    let mut outputs: Vec<(Box<dyn tokio::io::AsyncRead + Send + Unpin>, u8)> = Vec::new();
    let mut stdin_sink: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = None;
    if let Some(master) = pty {
        let clone = || master.try_clone().map_err(|e| e.to_string());
        if o.stdout {
            outputs.push((Box::new(tokio::fs::File::from_std(clone()?)), 1));
        }
        stdin_sink = Some(Box::new(tokio::fs::File::from_std(clone()?)));
        if let Some(mut rz) = io.resize {
            pumps.push(tokio::spawn(async move {
                while let Some(b) = rz.recv().await {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                        let ws = libc::winsize {
                            ws_row: v["Height"].as_u64().unwrap_or(24) as u16,
                            ws_col: v["Width"].as_u64().unwrap_or(80) as u16,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = crate::sys::set_window_size(&master, &ws);
                    }
                }
            }));
        }
    } else {
        if let Some(out) = child.stdout.take() {
            outputs.push((Box::new(out), 1));
        }
        if let Some(err) = child.stderr.take() {
            outputs.push((Box::new(err), 2));
        }
        if let Some(w) = child.stdin.take() {
            stdin_sink = Some(Box::new(w));
        }
    }
    for (mut reader, ch) in outputs {
        let out = io.out.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.send((ch, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    if let Some(mut rx) = io.stdin {
        let is_tty = o.tty;
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let Some(w) = stdin_sink.as_mut() else { break };
                if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            // A terminal's input ends with ^D; a pipe's by closing it.
            if let (true, Some(w)) = (is_tty, stdin_sink.as_mut()) {
                let _ = w.write_all(&[4]).await;
            }
        });
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    for p in pumps {
        // With a terminal, the reader ends when the last holder of the slave side exits.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), p).await;
    }
    Ok(status
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}

/// Connects the session to the container's shim: its output as it is written (the log gets it
/// too), the client's input to the container's stdin, resizes to its terminal.
async fn run_attach(
    run_dir: &std::path::Path,
    name: &str,
    o: ExecOptions,
    io: ExecIo,
) -> Result<i32, String> {
    use podlet_runtime::shim::frame;
    let (dir, n) = (run_dir.to_path_buf(), name.to_string());
    let stream =
        tokio::task::spawn_blocking(move || podlet_runtime::shim::attach(&dir, &n, o.stdin))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
    let (mut r, mut w) = stream.into_split();
    let (frames, mut to_shim) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let mut pumps = vec![tokio::spawn(async move {
        while let Some(f) = to_shim.recv().await {
            if w.write_all(&f).await.is_err() {
                break;
            }
        }
    })];
    if let Some(mut rx) = io.stdin {
        let frames = frames.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let _ = frames.send(frame::encode(frame::STDIN, &b));
            }
            let _ = frames.send(frame::encode(frame::CLOSE_STDIN, &[]));
        }));
    }
    if let Some(mut rx) = io.resize {
        let frames = frames.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                    let mut size = Vec::with_capacity(4);
                    size.extend_from_slice(
                        &(v["Width"].as_u64().unwrap_or(80) as u16).to_be_bytes(),
                    );
                    size.extend_from_slice(
                        &(v["Height"].as_u64().unwrap_or(24) as u16).to_be_bytes(),
                    );
                    let _ = frames.send(frame::encode(frame::RESIZE, &size));
                }
            }
        }));
    }
    // Held until the end: the writer's half closes when every sender is gone, and the shim
    // takes a closed connection for a client that left.
    let _open = frames;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    'read: loop {
        let n = r.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((kind, data)) = frame::decode(&mut buf) {
            let ch = match kind {
                frame::STDOUT if o.stdout => 1,
                frame::STDERR if o.stderr => 2,
                frame::EXIT => break 'read,
                _ => continue,
            };
            if io.out.send((ch, data)).is_err() {
                break 'read;
            }
        }
    }
    for p in pumps {
        p.abort();
    }
    Ok(0)
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

/// Exec over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): binary messages whose first
/// byte is the channel — 0 stdin, 1 stdout, 2 stderr, 3 error (the final Status), 4 resize;
/// v5 adds `[255, channel]` to close a channel (stdin's end).
async fn websocket_exec(
    info: Arc<NodeInfo>,
    up: hyper::upgrade::Upgraded,
    job: Job,
    o: ExecOptions,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = server_websocket(up).await;
    let (mut sink, mut stream) = ws.split();
    let (stdin_tx, stdin_rx) = tokio::sync::mpsc::unbounded_channel();
    let (resize_tx, resize_rx) = tokio::sync::mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<(u8, Vec<u8>)>();
    tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(m)) = stream.next().await {
            let data = match m {
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            match data.split_first() {
                Some((0, rest)) => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(rest.to_vec());
                    }
                }
                Some((4, rest)) => {
                    let _ = resize_tx.send(rest.to_vec());
                }
                Some((255, [0])) => stdin_tx = None,
                _ => {}
            }
        }
    });
    let writer = tokio::spawn(async move {
        // Every output channel opens with an empty message, as the kubelet's does.
        for ch in [1u8, 2, 3] {
            if sink.send(Message::binary(vec![ch])).await.is_err() {
                return sink;
            }
        }
        while let Some((ch, mut data)) = out_rx.recv().await {
            data.insert(0, ch);
            if sink.send(Message::binary(data)).await.is_err() {
                break;
            }
        }
        sink
    });
    let io = ExecIo {
        stdin: o.stdin.then_some(stdin_rx),
        resize: o.tty.then_some(resize_rx),
        out: out_tx.clone(),
    };
    let result = job.run(&info, o, io).await;
    let status = job.status(result);
    let _ = out_tx.send((3, status));
    drop(out_tx);
    if let Ok(mut sink) = writer.await {
        // A normal closure: clients read the error channel until the connection ends.
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    }
}

/// `/portForward/{ns}/{pod}`: each forwarded connection is a pair of streams (`error`, `data`)
/// with the same `requestID` and a `port` header.
pub async fn port_forward(
    State(info): State<Arc<NodeInfo>>,
    State(statuses): State<Arc<StatusCache>>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    mut req: Request,
) -> Response {
    let Some(p) = statuses.pod_named(&ns, &pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        );
    };
    let pid = p.metadata.uid.clone().unwrap_or_default();
    let netns = match crate::pod::sandbox_netns(&info.cfg, &pid) {
        Some(n) => n,
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("pod {ns}/{pod} has no running sandbox"),
            )
        }
    };
    if !wants_spdy(&req) {
        // kubectl 1.30+: SPDY tunneled in WebSocket binary messages.
        let Some((accept, protocol)) = websocket_handshake(&req, &[PORT_FORWARD_TUNNEL]) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("unable to upgrade: SPDY/3.1 or a WebSocket with {PORT_FORWARD_TUNNEL} is required"),
            );
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let io = websocket_tunnel(up).await;
                if let Err(e) = spdy_port_forward(io, netns).await {
                    tracing::debug!("port-forward session: {e}");
                }
            }
        });
        return websocket_switching(&accept, protocol);
    }
    if negotiate(&req, &[PORT_FORWARD_PROTOCOL]).is_none() {
        return text(
            StatusCode::FORBIDDEN,
            "unable to upgrade: unable to negotiate protocol portforward.k8s.io".into(),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on_upgrade.await {
            if let Err(e) = spdy_port_forward(TokioIo::new(up), netns).await {
                tracing::debug!("port-forward session: {e}");
            }
        }
    });
    switching(PORT_FORWARD_PROTOCOL)
}

/// The byte stream carried in a WebSocket's binary messages, as a local duplex pipe.
async fn websocket_tunnel(up: hyper::upgrade::Upgraded) -> tokio::io::DuplexStream {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = server_websocket(up).await;
    let (mut sink, mut stream) = ws.split();
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut r, mut w) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    ours
}

async fn spdy_port_forward<IO>(io: IO, netns: std::path::PathBuf) -> std::io::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let mut session = spdy::Session::start(r, w);
    let tx = session.sender();
    // requestID -> the stream that came first of its pair.
    let mut pending: HashMap<String, spdy::Incoming> = HashMap::new();
    while let Some(s) = session.accept().await {
        let rid = s.header("requestid").unwrap_or_default().to_string();
        let Some(other) = pending.remove(&rid) else {
            pending.insert(rid, s);
            continue;
        };
        let (data, error) = if s.header("streamtype") == Some("data") {
            (s, other)
        } else {
            (other, s)
        };
        let port: u16 = match data.header("port").and_then(|p| p.parse().ok()) {
            Some(p) if p > 0 => p,
            _ => {
                let _ = tx.data(error.id, b"invalid port").await;
                continue;
            }
        };
        let tx = tx.clone();
        let netns = netns.clone();
        tokio::spawn(async move {
            let conn = tokio::task::spawn_blocking(move || {
                podlet_cni::ns::with_netns(&netns, || {
                    std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())
                })
                .map_err(|e| e.to_string())
                .and_then(|r| r)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let stream = match conn.and_then(|s| {
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
            }) {
                Ok(s) => s,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod: {e}");
                    let _ = tx.data(error.id, msg.as_bytes()).await;
                    let _ = tx.close(error.id).await;
                    let _ = tx.close(data.id).await;
                    return;
                }
            };
            let (mut rd, mut wr) = stream.into_split();
            let mut incoming = data.data;
            let up = tokio::spawn(async move {
                while let Some(b) = incoming.recv().await {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            });
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.data(data.id, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.close(data.id).await;
            let _ = tx.close(error.id).await;
            up.abort();
        });
    }
    Ok(())
}
