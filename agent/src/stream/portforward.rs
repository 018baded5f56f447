//! `/portForward/{ns}/{pod}`: SPDY/3.1 (`portforward.k8s.io`), bare or tunneled in a WebSocket;
//! each forwarded connection is dialled from inside the pod's network namespace.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::websocket::{websocket_handshake, websocket_switching, websocket_tunnel};
use super::{
    negotiate, spdy, switching, text, wants_spdy, PORT_FORWARD_PROTOCOL, PORT_FORWARD_TUNNEL,
};
use crate::pod::{NodeInfo, StatusCache};

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
