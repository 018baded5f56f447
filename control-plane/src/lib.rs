//! podlet's bundled control plane: the apiserver (Kubernetes REST API for kubectl and the client
//! libraries) over a revisioned store (embedded or etcd).

pub mod api;
pub mod store;
pub mod testing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub struct Config {
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `http://host:port` of etcd members; empty for the embedded store.
    pub etcd_servers: Vec<String>,
    /// Where to write a kubeconfig for the administrator.
    pub admin_kubeconfig: Option<PathBuf>,
    /// How often history older than one interval is compacted (the kube-apiserver's 5 min).
    pub compaction_interval: Duration,
}

/// The kubeconfig that reaches the apiserver at `server`.
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: podlet\n  cluster:\n    server: {server}\ncontexts:\n- name: podlet\n  context:\n    cluster: podlet\n    user: admin\n    namespace: default\ncurrent-context: podlet\nusers:\n- name: admin\n  user: {{}}\n"
    )
}

/// Serves the API until the process ends. `ready` receives the bound address.
pub async fn run(
    cfg: Config,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    // No authentication exists yet, so the API stays on loopback.
    if !cfg.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: the apiserver has no authentication yet and serves loopback addresses only",
            cfg.listen
        );
    }
    let store: Arc<dyn store::Store> = if cfg.etcd_servers.is_empty() {
        Arc::new(
            store::embedded::Embedded::open(&cfg.data_dir)
                .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?,
        )
    } else {
        Arc::new(store::etcd::Etcd::new(cfg.etcd_servers.clone()))
    };
    api::bootstrap(&*store).await?;
    tokio::spawn(api::compactor(store.clone(), cfg.compaction_interval));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &cfg.admin_kubeconfig {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, kubeconfig(&format!("http://{addr}")))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(%addr, store = if cfg.etcd_servers.is_empty() { "embedded" } else { "etcd" }, "apiserver serving");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let app = api::router(Arc::new(api::ApiServer { store }));
    axum::serve(listener, app).await?;
    Ok(())
}
