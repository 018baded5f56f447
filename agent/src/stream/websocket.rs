//! WebSocket transports of the node API: the handshake, exec and attach in the channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`), and the byte tunnel port forwarding's SPDY rides
//! in (`SPDY/3.1+portforward.k8s.io`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::session::{ExecIo, ExecOptions, Job};
use crate::pod::NodeInfo;

/// The accept key and the subprotocol (the first of ours the client offers) of a WebSocket
/// upgrade request.
pub(super) fn websocket_handshake(
    req: &Request,
    ours: &[&'static str],
) -> Option<(String, &'static str)> {
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

pub(super) fn websocket_switching(accept: &str, protocol: &'static str) -> Response {
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
/// Exec over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): binary messages whose first
/// byte is the channel — 0 stdin, 1 stdout, 2 stderr, 3 error (the final Status), 4 resize;
/// v5 adds `[255, channel]` to close a channel (stdin's end).
pub(super) async fn websocket_exec(
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
/// The byte stream carried in a WebSocket's binary messages, as a local duplex pipe.
pub(super) async fn websocket_tunnel(up: hyper::upgrade::Upgraded) -> tokio::io::DuplexStream {
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
