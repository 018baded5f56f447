//! The agent in a cluster: joining (or, all-in-one, starting the control plane in-process),
//! the Node and its Lease, pods from the apiserver, their statuses, mirror pods and events.

mod events;
pub mod join;
mod node;
mod node_watch;
pub mod pods;

use std::sync::Arc;

use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::sync::watch;

use crate::config::{ClusterMode, Config};
use crate::manifest::Desired;
use crate::pod::Services;
use crate::util::Limiter;

/// Starts the in-process control plane on the embedded store and returns the node's client,
/// authenticated by a certificate the cluster CA signs directly (no bootstrap needed), plus the
/// control plane's task.
pub async fn all_in_one(
    cfg: &Config,
    listen: std::net::SocketAddr,
    admin_kubeconfig: &std::path::Path,
    controllers: podlet_control_plane::controllers::Options,
    scheduler_config: Option<std::path::PathBuf>,
) -> Result<(kube::Client, tokio::task::JoinHandle<Result<()>>)> {
    let data_dir = cfg.root_dir.join("control-plane");
    let cp = podlet_control_plane::Config {
        data_dir: data_dir.clone(),
        listen,
        advertise_address: None,
        tls_san: Vec::new(),
        etcd_servers: Vec::new(),
        admin_kubeconfig: Some(admin_kubeconfig.to_path_buf()),
        compaction_interval: std::time::Duration::from_secs(300),
        token_auth_file: None,
        // The agent's own range: the one its proxy treats as the service range.
        service_cluster_ip_range: cfg.service_cluster_ip_range.clone(),
        controllers,
        scheduler_config,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(podlet_control_plane::run(cp, Some(tx)));
    let addr = match rx.await {
        Ok(a) => a,
        Err(_) => {
            return Err(task
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| {
                    r.err()
                        .ok_or_else(|| anyhow::anyhow!("the control plane stopped"))
                })
                .unwrap_or_else(|e| e))
            .context("starting the control plane")
        }
    };
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let pki = data_dir.join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt"))?;
    let (cert_pem, key_pem) = k8s_rules::pki::client_cert(
        &pki,
        &format!("system:node:{}", cfg.node_name),
        &["system:nodes"],
    )?;
    let yaml = join::kubeconfig(
        &format!("https://{host}"),
        &ca,
        join::User::Cert {
            cert_pem: &cert_pem,
            key_pem: &key_pem,
        },
    );
    k8s_rules::files::write_private(&cfg.kubeconfig, yaml.as_bytes())?;
    tracing::info!(%addr, admin_kubeconfig = %admin_kubeconfig.display(), "control plane running in-process");
    Ok((join::client(&yaml).await?, task))
}

/// The node's client for a worker: its kubeconfig, or a bootstrap join.
pub async fn worker_client(cfg: &Config) -> Result<kube::Client> {
    let ClusterMode::Worker { server, token, ca } = &cfg.cluster else {
        anyhow::bail!("not a worker");
    };
    join::join(
        &cfg.kubeconfig,
        &cfg.node_name,
        server,
        token.as_deref(),
        ca.as_deref(),
    )
    .await
}

/// Starts every cluster task; returns what the pod manager should run (static pods and the
/// apiserver's pods for this node). Each task takes the pieces of the node it uses.
pub fn start(
    svc: &Services,
    client: kube::Client,
    statics: watch::Receiver<Desired>,
) -> watch::Receiver<Desired> {
    let info = svc.info.clone();
    let cfg = &info.cfg;
    // Paces every write to the apiserver but events, which have their own budget (the
    // kubelet's `--event-qps` 50, `--event-burst` 100) so that they never hold up statuses.
    let api_limit = Arc::new(Limiter::new(cfg.kube_api.0, cfg.kube_api.1));
    let event_limit = Limiter::new(50.0, 100);
    let (client_tx, client_rx) = watch::channel(client);
    svc.api.connect(client_rx.clone());
    // Admission goes by the Node as the apiserver has it, kept current by a watch of it.
    svc.node.connect(&cfg.node_name, client_rx.clone());
    tokio::spawn(node_watch::run(
        cfg.node_name.clone(),
        client_rx.clone(),
        svc.node.clone(),
    ));
    let (api_tx, api_rx) = watch::channel::<pods::ApiPods>(None);
    let initial = pods::merge(cfg, &statics.borrow(), &None);
    let (desired_tx, desired_rx) = watch::channel(initial);
    tokio::spawn(events::run(
        cfg.node_name.clone(),
        event_limit,
        client_rx.clone(),
        svc.events.connect(),
    ));
    tokio::spawn(pods::watch(
        cfg.node_name.clone(),
        client_rx.clone(),
        api_tx,
    ));
    tokio::spawn(pods::feed(
        info.clone(),
        statics.clone(),
        api_rx.clone(),
        desired_tx,
    ));
    tokio::spawn(crate::overlay::run(
        Arc::new(cfg.clone()),
        info.host_ip,
        svc.network.clone(),
        client_rx.clone(),
    ));
    // Services and EndpointSlices, watched once for what serves them here (service
    // proxy, cluster DNS).
    let services = Arc::new(crate::services::ServiceCache::default());
    tokio::spawn(services.clone().run(client_rx.clone()));
    tokio::spawn(crate::proxy::run(Arc::new(cfg.clone()), services.clone()));
    tokio::spawn(crate::dns::serve(Arc::new(cfg.clone()), services));
    // NetworkPolicies, enforced for this node's pods (active before any pod worker runs).
    svc.netpol.activate();
    tokio::spawn(crate::netpol::run(
        svc.netpol.clone(),
        Arc::new(cfg.clone()),
        client_rx.clone(),
    ));
    tokio::spawn(join::rotate(
        cfg.kubeconfig.clone(),
        cfg.node_name.clone(),
        client_tx,
    ));
    let reporter = node::Reporter {
        info: info.clone(),
        evictions: svc.evictions.clone(),
        limit: api_limit.clone(),
    };
    let statuses = svc.statuses.clone();
    tokio::spawn(async move {
        let registered = reporter.register(&client_rx).await;
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: reporter.info.cfg.node_name.clone(),
            uid: registered.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            ..Default::default()
        };
        let report = pods::Report {
            info: reporter.info.clone(),
            statuses,
            limit: api_limit,
        };
        tokio::spawn(reporter.run(client_rx.clone(), registered));
        report.run(client_rx, api_rx, statics, owner).await;
    });
    desired_rx
}
