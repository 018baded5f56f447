//! podlet's bundled control plane: the apiserver (Kubernetes REST API for kubectl and the client
//! libraries) over a revisioned store (embedded or etcd).

pub mod api;
pub mod certificates;
pub mod controllers;
pub mod pki;
pub mod reconcile;
pub mod scheduler;
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
    /// `--advertise-address`: the address other members of the cluster reach this apiserver
    /// at (the `kubernetes` Endpoints, the admin kubeconfig); by default the listening address,
    /// or the host's first global address when listening on every address.
    pub advertise_address: Option<std::net::IpAddr>,
    /// `--tls-san`: extra names and IPs for the serving certificate.
    pub tls_san: Vec<String>,
    /// `http://host:port` of etcd members; empty for the embedded store.
    pub etcd_servers: Vec<String>,
    /// Where to write a kubeconfig for the administrator.
    pub admin_kubeconfig: Option<PathBuf>,
    /// How often history older than one interval is compacted (the kube-apiserver's 5 min).
    pub compaction_interval: Duration,
    /// Static bearer tokens (`token,user,uid,"groups"` lines).
    pub token_auth_file: Option<PathBuf>,
    /// Where service cluster IPs come from: one range, or one of each family (dual-stack).
    pub service_cluster_ip_range: k8s_rules::cidrs::DualStackCidrs,
    /// kube-controller-manager's options: which controllers run, and their settings.
    pub controllers: controllers::Options,
    /// kube-scheduler's `--config`: a KubeSchedulerConfiguration file (the default profile
    /// when None).
    pub scheduler_config: Option<PathBuf>,
}

/// A kubeconfig for the apiserver at `server` (trusting `ca_pem`) as the holder of a client
/// certificate.
pub fn kubeconfig_for(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: podlet\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: podlet\n  context:\n    cluster: podlet\n    user: admin\n    namespace: default\ncurrent-context: podlet\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b(ca_pem),
        b(cert_pem),
        b(key_pem)
    )
}

/// The administrator's kubeconfig: the cluster CA and a `system:masters` client certificate.
pub fn kubeconfig(server: &str, pki: &pki::Pki) -> String {
    kubeconfig_for(server, &pki.ca_pem, &pki.admin_cert_pem, &pki.admin_key_pem)
}

/// Starts kube-scheduler's and kube-controller-manager's loops beside the apiserver at `listen`,
/// each with its own identity and Lease, so that of several apiservers sharing one store only
/// one runs each.
async fn start_components(
    listen: SocketAddr,
    data_dir: PathBuf,
    opts: controllers::Options,
    sched_cfg: Arc<scheduler::config::SchedulerConfig>,
) -> anyhow::Result<()> {
    let url = reconcile::loopback_url(listen);
    let pki = data_dir.join("pki");
    let scheduler =
        reconcile::component(&url, &pki, &data_dir, reconcile::rbac::SCHEDULER_USER).await?;
    let manager = reconcile::component(
        &url,
        &pki,
        &data_dir,
        reconcile::rbac::CONTROLLER_MANAGER_USER,
    )
    .await?;
    let elect = |c: &reconcile::Component, lease: &str| {
        reconcile::leader::Elector::new(c.client.clone(), "kube-system", lease, &c.identity)
    };
    let sched = elect(&scheduler, "kube-scheduler");
    let sched_client = scheduler.client.clone();
    tokio::spawn(sched.run(move || scheduler::run_with(sched_client.clone(), sched_cfg.clone())));
    let cm = elect(&manager, "kube-controller-manager");
    let cm_client = manager.client.clone();
    tokio::spawn(cm.run(move || controllers::run(cm_client.clone(), pki.clone(), opts.clone())));
    Ok(())
}

/// The client for node APIs: a `kube-apiserver-kubelet-client` certificate (group
/// `system:masters`, so nodes' SubjectAccessReviews allow it). Nodes serve self-signed
/// certificates, which the kube-apiserver does not verify unless given
/// `--kubelet-certificate-authority`; neither does this one.
fn kubelet_client(
    pki_dir: &std::path::Path,
) -> anyhow::Result<(reqwest::Client, Arc<rustls::ClientConfig>)> {
    let (cert, key) = pki::client_cert(
        pki_dir,
        "kube-apiserver-kubelet-client",
        &["system:masters"],
    )?;
    let identity = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes())?;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .identity(identity)
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    Ok((client, Arc::new(api::proxy_client_config(&cert, &key)?)))
}

/// Serves the API until the process ends. `ready` receives the bound address.
pub async fn run(
    cfg: Config,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    cfg.controllers
        .validate()
        .map_err(|e| anyhow::anyhow!("controller options: {e}"))?;
    let sched_cfg = Arc::new(match &cfg.scheduler_config {
        Some(path) => scheduler::config::SchedulerConfig::load(path)?,
        None => scheduler::config::SchedulerConfig::default(),
    });
    let store: Arc<dyn store::Store> = if cfg.etcd_servers.is_empty() {
        Arc::new(
            store::embedded::Embedded::open(&cfg.data_dir)
                .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?,
        )
    } else {
        Arc::new(store::etcd::Etcd::new(cfg.etcd_servers.clone()))
    };

    tokio::spawn(api::compactor(store.clone(), cfg.compaction_interval));
    let tokens = match &cfg.token_auth_file {
        Some(f) => api::auth::Tokens::load(f)?,
        None => Default::default(),
    };
    for san in &cfg.tls_san {
        pki::canonical_name(san).map_err(|e| anyhow::anyhow!("--tls-san: {e}"))?;
    }
    // The kubernetes and kube-dns services are single-stack, of the primary range.
    let service_range = cfg.service_cluster_ip_range.primary();
    let service_ip = api::services::Hosts::of(service_range)
        .nth(0)
        .with_context(|| {
            format!("--service-cluster-ip-range: {service_range} has no address for the kubernetes service")
        })?;
    let reach = pki::Reach {
        listen: cfg.listen.ip(),
        advertise: cfg.advertise_address,
        tls_san: &cfg.tls_san,
        service_ip,
    };
    let pki = pki::ensure(&cfg.data_dir.join("pki"), &pki::serving_names(&reach))?;
    api::bootstrap(&*store, &pki.ca_pem).await?;
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()?));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let public = SocketAddr::new(
        pki::public_address(addr.ip(), cfg.advertise_address),
        addr.port(),
    );
    if let Some(path) = &cfg.admin_kubeconfig {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        k8s_rules::files::write_private(
            path,
            kubeconfig(&reconcile::loopback_url(public), &pki).as_bytes(),
        )?;
    }
    tracing::info!(%addr, store = if cfg.etcd_servers.is_empty() { "embedded" } else { "etcd" }, "apiserver serving");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let sa = api::satoken::Signer::load(&cfg.data_dir.join("pki"))?;
    api::services::ensure_kubernetes_service(&*store, service_range, public).await?;
    api::services::ensure_dns_service(&*store, service_range).await?;
    let (kubelet, kubelet_tls) = kubelet_client(&cfg.data_dir.join("pki"))?;
    let app = api::router(Arc::new(api::ApiServer {
        store,
        tokens,
        sa,
        service_cidr: cfg.service_cluster_ip_range.clone(),
        ca_pem: pki.ca_pem.clone(),
        kubelet,
        kubelet_tls,
        quota_turn: Default::default(),
    }));
    start_components(
        addr,
        cfg.data_dir.clone(),
        cfg.controllers.clone(),
        sched_cfg,
    )
    .await?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let identity = api::auth::CertIdentity(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(pki::identity),
            );
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(identity.clone());
                    let app = app.clone();
                    async move {
                        use tower::ServiceExt;
                        app.oneshot(req.map(axum::body::Body::new)).await
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}
