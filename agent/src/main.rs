//! `podlet`: a Kubernetes node agent and container runtime in one binary.
//!
//! The modules below depend on lower layers only (util, sys, logs ← config ← eviction, imagegc,
//! network, manifest ← pod ← cluster, metrics, stream ← server, cli ← main); `agent/README.md`
//! explains the layers and `agent/tests/layering.rs` keeps them.

mod alloc;
mod cli;
mod cluster;
mod config;
mod dns;
mod eviction;
mod imagegc;
mod logs;
mod manifest;
mod metrics;
mod netpol;
mod network;
mod overlay;
mod pod;
mod proxy;
mod server;
mod services;
mod stream;
mod sys;
#[cfg(test)]
mod testns;
mod util;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use config::{Config, PathFlags, Settings};

#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "podlet",
    version,
    about = "Kubernetes node agent and container runtime in one binary"
)]
struct Cli {
    #[command(flatten)]
    paths: PathFlags,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent.
    Run(Box<Settings>),
    /// Run the control plane (apiserver) alone.
    ControlPlane {
        /// Where the embedded store keeps its data.
        #[arg(long, default_value = "/var/lib/podlet/control-plane")]
        data_dir: PathBuf,
        /// Address to serve the Kubernetes API on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// etcd members (comma-separated `http://host:port`); the embedded store when empty.
        #[arg(long, value_delimiter = ',')]
        etcd_servers: Vec<String>,
        /// Where to write the administrator's kubeconfig.
        #[arg(long, default_value = "/etc/podlet/admin.kubeconfig")]
        admin_kubeconfig: PathBuf,
        /// How often to compact store history older than one interval (kube-apiserver's
        /// `--etcd-compaction-interval`).
        #[arg(long, default_value = "5m", value_parser = k8s_rules::duration::parse)]
        etcd_compaction_interval: std::time::Duration,
        /// Static bearer tokens, one `token,user,uid,"group1,group2"` per line.
        #[arg(long)]
        token_auth_file: Option<PathBuf>,
        /// Range that service cluster IPs are allocated from.
        #[arg(long, default_value = "10.96.0.0/12", value_parser = |v: &str| k8s_rules::cidrs::DualStackCidrs::parse("service-cluster-ip-range", v))]
        service_cluster_ip_range: k8s_rules::cidrs::DualStackCidrs,
        /// Controllers to run (kube-controller-manager's `--controllers`): `*` every
        /// controller on by default, `name` on, `-name` off, e.g. `*,-cronjob`.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        controllers: Vec<String>,
        /// Finished pods kept before PodGC deletes the oldest (0: never).
        #[arg(long, default_value_t = podlet_control_plane::controllers::podgc::DEFAULT_THRESHOLD)]
        terminated_pod_gc_threshold: i64,
        /// Endpoints per EndpointSlice at most.
        #[arg(long, default_value_t = podlet_control_plane::controllers::endpointslice::DEFAULT_MAX_ENDPOINTS_PER_SLICE)]
        max_endpoints_per_slice: usize,
        /// The address the other members of the cluster reach this apiserver at (the
        /// `kubernetes` Endpoints, the admin kubeconfig, the serving certificate); by default
        /// the listening address, or the host's first global address when listening on all.
        #[arg(long)]
        advertise_address: Option<std::net::IpAddr>,
        /// Extra names or IPs for the serving certificate (repeatable, comma-separated).
        #[arg(long, value_delimiter = ',')]
        tls_san: Vec<String>,
        /// kube-scheduler's `--config`: a KubeSchedulerConfiguration (v1) file with its
        /// profiles, plugins and weights.
        #[arg(long)]
        scheduler_config: Option<PathBuf>,
        #[command(flatten)]
        nodes: Box<NodeControllerFlags>,
    },
    /// Remove the node networking the agent made: routes to other nodes' pods (protocol 158),
    /// the VXLAN device podlet.1 and the nftables table `ip podlet-masq`. Stop the agent
    /// first: a running agent makes them again.
    Cleanup,
    /// List pods and their containers.
    Ps,
    /// Print a container's logs.
    Logs {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command in a running container.
    Exec {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Low-level OCI runtime commands (for side-by-side benchmarks with crun and runc).
    #[command(subcommand, hide = true)]
    Oci(OciCmd),
    /// The per-pod shim (started by the agent).
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        pod_dir: PathBuf,
    },
}

/// kube-controller-manager's flags for the node IPAM and node lifecycle controllers.
#[derive(clap::Args)]
struct NodeControllerFlags {
    /// Ranges node pod CIDRs come from (one, or an IPv4 and an IPv6 one, comma-separated).
    #[arg(long, default_value = podlet_control_plane::controllers::nodeipam::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: String,
    /// Node CIDR mask size, single-stack (default 24 for IPv4, 64 for IPv6).
    #[arg(long)]
    node_cidr_mask_size: Option<u8>,
    /// Node CIDR mask size for IPv4 (default 24).
    #[arg(long)]
    node_cidr_mask_size_ipv4: Option<u8>,
    /// Node CIDR mask size for IPv6 (default 64).
    #[arg(long)]
    node_cidr_mask_size_ipv6: Option<u8>,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = k8s_rules::duration::parse)]
    node_monitor_period: std::time::Duration,
    /// How long a node may go without a heartbeat before it is marked Unknown.
    #[arg(long, default_value = "50s", value_parser = k8s_rules::duration::parse)]
    node_monitor_grace_period: std::time::Duration,
    /// The same for a node that never posted its status.
    #[arg(long, default_value = "60s", value_parser = k8s_rules::duration::parse)]
    node_startup_grace_period: std::time::Duration,
    /// Nodes tainted for eviction per second in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    node_eviction_rate: f32,
    /// Nodes tainted per second in a partially disrupted zone larger than
    /// --large-cluster-size-threshold (0 in smaller ones).
    #[arg(long, default_value_t = 0.01)]
    secondary_node_eviction_rate: f32,
    /// Fraction of not-Ready nodes (at least three) that makes a zone partially disrupted.
    #[arg(long, default_value_t = 0.55)]
    unhealthy_zone_threshold: f32,
    /// Zones with more nodes than this count as large.
    #[arg(long, default_value_t = 50)]
    large_cluster_size_threshold: i32,
}

impl NodeControllerFlags {
    fn options(
        self,
    ) -> Result<(
        podlet_control_plane::controllers::nodeipam::Config,
        podlet_control_plane::controllers::nodelifecycle::Config,
    )> {
        use podlet_control_plane::controllers::{nodeipam, nodelifecycle};
        let ipam = nodeipam::Config {
            cluster_cidrs: nodeipam::parse_cluster_cidr(&self.cluster_cidr)
                .map_err(anyhow::Error::msg)?,
            node_cidr_mask_size: self.node_cidr_mask_size,
            node_cidr_mask_size_ipv4: self.node_cidr_mask_size_ipv4,
            node_cidr_mask_size_ipv6: self.node_cidr_mask_size_ipv6,
        };
        let lifecycle = nodelifecycle::Config {
            node_monitor_period: self.node_monitor_period,
            node_monitor_grace_period: self.node_monitor_grace_period,
            node_startup_grace_period: self.node_startup_grace_period,
            node_eviction_rate: self.node_eviction_rate,
            secondary_node_eviction_rate: self.secondary_node_eviction_rate,
            unhealthy_zone_threshold: self.unhealthy_zone_threshold,
            large_cluster_size_threshold: self.large_cluster_size_threshold,
        };
        Ok((ipam, lifecycle))
    }
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Import an OCI layout directory, OCI archive or docker archive.
    Import {
        file: PathBuf,
        /// Name for an archive that names no image (or to rename it).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image from its registry (mirrors and credentials from the configuration).
    Pull {
        image: String,
        /// A Docker config file with credentials for this pull (before the node's).
        #[arg(long)]
        creds: Option<PathBuf>,
    },
    /// List images.
    Ls,
    /// Show an image's record and configuration (JSON).
    Inspect { image: String },
    /// Remove every image no pod on this node uses, and what no image refers to.
    Prune,
    /// Write an image as an OCI archive (`-` for standard output).
    Export {
        image: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Remove images.
    Rm { images: Vec<String> },
}

#[derive(Subcommand)]
enum OciCmd {
    /// Run a command in a running container with this process's stdio; exits with its code.
    Exec {
        #[arg(long)]
        root: PathBuf,
        id: String,
        /// Kill the command after this many seconds (exit code 124).
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create, start, wait for and delete a container from a bundle, like `crun run`.
    Run {
        #[arg(long)]
        root: PathBuf,
        #[arg(long, short)]
        bundle: PathBuf,
        id: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PODLET_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,libcontainer=warn,libcgroups=error")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podlet: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    // Subcommands that create containers stay single-threaded: no tokio runtime for them.
    match cli.cmd {
        Cmd::Shim { pod_dir } => Ok(podlet_runtime::shim::run(&pod_dir)),
        Cmd::Oci(OciCmd::Exec {
            root,
            id,
            timeout,
            command,
        }) => podlet_runtime::oci::exec(
            &root,
            &id,
            command,
            timeout.map(std::time::Duration::from_secs),
        )
        .map_err(anyhow::Error::msg),
        Cmd::Oci(OciCmd::Run { root, bundle, id }) => {
            podlet_runtime::oci::run_bundle(&root, &id, &bundle).map_err(anyhow::Error::msg)
        }
        Cmd::Exec {
            pod,
            container,
            namespace,
            command,
        } => {
            let cfg = Config::load(&cli.paths, &Settings::default())?;
            cli::exec(&cfg, &namespace, &pod, container.as_deref(), command)
        }
        Cmd::Cleanup => {
            let done = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(async {
                    let mut done = overlay::cleanup::run().await?;
                    done.extend(dns::cleanup().await?);
                    done.extend(proxy::cleanup()?);
                    done.extend(netpol::cleanup()?);
                    std::io::Result::Ok(done)
                })
                .context("podlet cleanup")?;
            if done.is_empty() {
                println!("nothing to remove");
            }
            for d in done {
                println!("removed {d}");
            }
            Ok(0)
        }
        Cmd::Ps => {
            let cfg = Config::load(&cli.paths, &Settings::default())?;
            cli::ps(&cfg, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Cmd::Logs {
            pod,
            container,
            namespace,
            follow,
        } => {
            let cfg = Config::load(&cli.paths, &Settings::default())?;
            cli::logs(
                &cfg,
                &namespace,
                &pod,
                container.as_deref(),
                follow,
                &mut std::io::stdout().lock(),
            )?;
            Ok(0)
        }
        Cmd::Image(cmd) => {
            let cfg = Config::load(&cli.paths, &Settings::default())?;
            let store = podlet_runtime::image::ImageStore::open(cfg.images_dir())?;
            match cmd {
                ImageCmd::Import { file, name } => {
                    let imported = store.import(&file, name.as_deref())?;
                    for i in imported {
                        println!("imported {} ({})", i.name, i.id);
                    }
                }
                ImageCmd::Pull { image, creds } => {
                    let mut c = match creds {
                        Some(p) => podlet_runtime::image::pull::Credentials::load(&p)?,
                        None => Default::default(),
                    };
                    if let Some(node) = cfg.image_credentials.iter().find(|p| p.exists()) {
                        c = c.and(&podlet_runtime::image::pull::Credentials::load(node)?);
                    }
                    let puller = podlet_runtime::image::pull::Puller::new(
                        store.clone(),
                        cfg.registries.clone(),
                    );
                    let pulled = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting the async runtime")?
                        .block_on(puller.pull(&image, &c))?;
                    println!(
                        "{} {} ({} downloaded in {:.2}s)",
                        pulled.image.name,
                        pulled.image.manifest_digest,
                        podlet_runtime::image::human_size(pulled.downloaded),
                        pulled.duration.as_secs_f64()
                    );
                }
                ImageCmd::Inspect { image } => {
                    let rec = store.resolve(&image)?;
                    println!("{}", serde_json::to_string_pretty(&rec)?);
                }
                ImageCmd::Prune => {
                    let used = cli::images_in_use(&cfg, &store);
                    for rec in store.list()? {
                        if used.contains(&rec.id) {
                            continue;
                        }
                        match store.remove(&rec.name, &cfg.mountinfo) {
                            Ok(r) => println!("removed {}", r.name),
                            Err(e) => eprintln!("kept {}: {e}", rec.name),
                        }
                    }
                    store.prune_unreferenced(&cfg.mountinfo, std::time::Duration::ZERO)?;
                }
                ImageCmd::Export { image, output } => {
                    if output.as_os_str() == "-" {
                        store.export(&image, &mut std::io::stdout().lock())?;
                    } else {
                        let tmp = output.with_extension("partial");
                        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
                        store.export(&image, &mut f)?;
                        f.into_inner()?.sync_all()?;
                        std::fs::rename(&tmp, &output)?;
                    }
                }
                ImageCmd::Ls => {
                    podlet_runtime::image::write_table(
                        &store.list()?,
                        &mut std::io::stdout().lock(),
                    )?;
                }
                ImageCmd::Rm { images } => {
                    for i in images {
                        let r = store.remove(&i, &cfg.mountinfo)?;
                        println!("removed {}", r.name);
                    }
                }
            }
            Ok(0)
        }
        Cmd::ControlPlane {
            data_dir,
            listen,
            etcd_servers,
            admin_kubeconfig,
            etcd_compaction_interval,
            token_auth_file,
            service_cluster_ip_range,
            controllers,
            terminated_pod_gc_threshold,
            max_endpoints_per_slice,
            advertise_address,
            tls_san,
            scheduler_config,
            nodes,
        } => {
            let (node_ipam, node_lifecycle) = (*nodes).options()?;
            let cfg = podlet_control_plane::Config {
                data_dir,
                listen,
                advertise_address,
                tls_san,
                etcd_servers,
                admin_kubeconfig: Some(admin_kubeconfig),
                compaction_interval: etcd_compaction_interval,
                token_auth_file,
                service_cluster_ip_range,
                controllers: podlet_control_plane::controllers::Options {
                    controllers,
                    terminated_pod_gc_threshold,
                    max_endpoints_per_slice,
                    node_ipam,
                    node_lifecycle,
                },
                scheduler_config,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(async {
                    tokio::select! {
                        r = podlet_control_plane::run(cfg, None) => r,
                        _ = tokio::signal::ctrl_c() => Ok(()),
                    }
                })?;
            Ok(0)
        }
        Cmd::Run(flags) => {
            let cfg = Config::load(&cli.paths, &flags)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(agent(cfg))?;
            Ok(0)
        }
    }
}

async fn agent(cfg: Config) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("podlet run needs root (namespaces, mounts and cgroups)");
    }
    for d in [&cfg.root_dir, &cfg.run_dir, &cfg.log_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // A hostUsers: false pod's root is host uid 65536 or above: a root-only directory above
    // the root dir keeps its root filesystems out of its reach.
    let first = pod::userns::RANGE;
    if let Some(u) = podlet_runtime::rootfs::untraversable_by(&cfg.root_dir, first, first) {
        tracing::warn!(
            dir = %u.dir.display(),
            "the root dir is not traversable by hostUsers: false pods: {u} by host uid {first} and up; their containers will fail to start (allow search, e.g. chmod o+x, as containerd keeps its root 0711)"
        );
    }
    // Without CAP_SYS_RESOURCE this fails and the node's floor stays where it is (see NodeInfo::oom_floor).
    let _ = podlet_runtime::sys::set_oom_score_adj(-999);
    tracing::info!(node = %cfg.node_name, manifests = %cfg.manifest_dir.display(), "podlet starting");
    // The cluster comes first: a failed join touches nothing on the node.
    let mut control_plane = None;
    let client = match &cfg.cluster {
        config::ClusterMode::Standalone => None,
        config::ClusterMode::AllInOne {
            listen,
            admin_kubeconfig,
            controllers,
            scheduler_config,
        } => {
            let (client, task) = cluster::all_in_one(
                &cfg,
                *listen,
                admin_kubeconfig,
                controllers.clone(),
                scheduler_config.clone(),
            )
            .await?;
            control_plane = Some(task);
            Some(client)
        }
        config::ClusterMode::Worker { server, .. } => {
            tracing::info!(%server, "joining the control plane");
            Some(cluster::worker_client(&cfg).await?)
        }
    };
    let info = Arc::new(pod::NodeInfo::probe(cfg.clone())?);
    let node = Arc::new(pod::ApiNode::default());
    let svc = Arc::new(pod::Services {
        admission: Arc::new(pod::Admission::new(info.clone(), node.clone())),
        node,
        evictions: Arc::default(),
        statuses: Arc::default(),
        events: Arc::default(),
        api: Arc::default(),
        images: Arc::new(pod::Images::open(&cfg)?),
        network: Arc::new(network::Network::init(
            &cfg,
            &info.exe,
            overlay::pod_mtu(&cfg, info.host_ip).await,
            info.host_ip,
        )?),
        userns: pod::userns::Allocator::open(&cfg.root_dir.join("userns.json"))?,
        netpol: Arc::default(),
        info,
    });
    svc.admission.update_qos_cgroups();
    if cfg.cluster == config::ClusterMode::Standalone {
        overlay::standalone(&cfg).with_context(|| {
            format!(
                "writing the pod masquerade rule (nftables table {})",
                overlay::MASQ_TABLE
            )
        })?;
    }
    {
        let svc = svc.clone();
        tokio::task::spawn_blocking(move || pod::network_gc(&svc)).await?;
    }
    // The manager tears down pods that are not desired, so it must start from a complete view
    // of the manifests, never from an empty one (which would stop every adopted pod).
    let (desired, errors) = manifest::scan(&cfg.manifest_dir, &cfg.node_name);
    for e in &errors {
        tracing::error!(source = "file", "invalid static pod manifest: {e}");
    }
    let (tx, statics) = tokio::sync::watch::channel(desired);
    tokio::spawn(manifest::watch_dir(
        cfg.manifest_dir.clone(),
        cfg.node_name.clone(),
        tx,
        errors,
    ));
    let desired = match client {
        None => statics,
        Some(client) => cluster::start(&svc, client, statics),
    };
    tokio::spawn(pod::run_manager(svc.clone(), desired));
    if !cfg.eviction_hard.is_empty() {
        let (admission, statuses) = (svc.admission.clone(), svc.statuses.clone());
        tokio::spawn(eviction::run(&cfg, svc.evictions.clone(), move || {
            admission.eviction_candidates(&statuses)
        }));
    }
    if cfg.image_gc.high < 100 || !cfg.image_gc.max_age.is_zero() {
        let gc = imagegc::Collector::new(&cfg, svc.images.store.clone(), svc.images.usage.clone());
        let statuses = svc.statuses.clone();
        tokio::spawn(imagegc::run(gc, move || statuses.images()));
    }
    let server = tokio::spawn(server::serve(server::NodeApi::new(&svc)));
    let control_plane = async move {
        match control_plane {
            Some(t) => t.await?,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = server => r??,
        r = control_plane => {
            r.context("the control plane stopped")?;
            anyhow::bail!("the control plane stopped");
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; pods keep running"),
    }
    Ok(())
}
