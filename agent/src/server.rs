//! The kubelet's node API: `GET /pods` (a v1 PodList with live statuses) and `/healthz`, on a
//! unix socket under the run dir and on TCP `--address:--port`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::pod::Node;

fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/pods", get(pods))
        .route("/healthz", get(|| async { "ok" }))
        .route("/node", get(node_object))
        .with_state(node)
}

async fn pods(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let items: Vec<_> = node
        .pods
        .read()
        .expect("pods lock")
        .values()
        .cloned()
        .collect();
    let body = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn node_object(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = serde_json::to_string(&node.node_object()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Serves until the process ends.
pub async fn serve(node: Arc<Node>) -> anyhow::Result<()> {
    let sock = node.cfg.socket_path();
    let _ = std::fs::remove_file(&sock);
    if let Some(d) = sock.parent() {
        std::fs::create_dir_all(d)?;
    }
    let unix = tokio::net::UnixListener::bind(&sock)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", sock.display()))?;
    let app = router(node.clone());
    let unix_app = app.clone();
    let unix_task = tokio::spawn(async move { axum::serve(unix, unix_app).await });
    if node.cfg.port != 0 {
        let addr = std::net::SocketAddr::new(node.cfg.address, node.cfg.port);
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        tracing::info!(%addr, socket = %sock.display(), "node API listening");
        axum::serve(tcp, app).await?;
    } else {
        tracing::info!(socket = %sock.display(), "node API listening");
    }
    unix_task.await??;
    Ok(())
}
