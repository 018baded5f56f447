//! Every setting of `podlet run`, declared once: the same field is a command-line flag (clap)
//! and a key of the configuration file (serde, camelCase), so a flag, its file key and its help
//! cannot drift apart. A setting not given is `None`; `Settings::or` layers flags over the file,
//! and `Config::resolve` fills in the defaults and checks the values.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use super::ConfigError;

/// Paths every subcommand needs (so `podlet ps` finds the agent started with the same file).
/// The three directories are file keys too (`Settings`); as flags they are global.
#[derive(Debug, Clone, Args, Default)]
pub struct PathFlags {
    /// Configuration file (YAML); missing is fine unless given explicitly.
    #[arg(long, global = true, env = "PODLET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Persistent state: images, pod volumes and root filesystems.
    #[arg(long, global = true)]
    pub root_dir: Option<PathBuf>,
    /// Runtime state: shims, sockets, container state.
    #[arg(long, global = true)]
    pub run_dir: Option<PathBuf>,
    /// Container logs, in the kubelet's layout.
    #[arg(long, global = true)]
    pub log_dir: Option<PathBuf>,
}

/// Declares `Settings` and its field-by-field layering from one list, so that a new setting
/// cannot be left out of the layering.
macro_rules! settings {
    ($( $(#[$attr:meta])* $field:ident: $ty:ty, )*) => {
        /// The settings of `podlet run`, as flags or as the configuration file's keys.
        #[derive(Debug, Clone, Default, Args, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$attr])* pub $field: Option<$ty>, )*
        }

        impl Settings {
            /// Each setting from `self`, or else from `lower`.
            pub fn or(self, lower: Settings) -> Settings {
                Settings { $( $field: self.$field.or(lower.$field), )* }
            }
        }
    };
}

settings! {
    /// Directory of static pod manifests.
    #[arg(long)]
    manifest_dir: PathBuf,
    /// `--root-dir` (a global flag, see `PathFlags`).
    #[arg(skip)]
    root_dir: PathBuf,
    /// `--run-dir` (a global flag).
    #[arg(skip)]
    run_dir: PathBuf,
    /// `--log-dir` (a global flag).
    #[arg(skip)]
    log_dir: PathBuf,
    /// Node name (defaults to the hostname).
    #[arg(long)]
    node_name: String,
    /// Parent of every pod cgroup, relative to each cgroup hierarchy.
    #[arg(long)]
    cgroup_root: String,
    /// Node API port (0 disables the TCP listener).
    #[arg(long)]
    port: u16,
    /// Address the node API listens on.
    #[arg(long)]
    address: IpAddr,
    /// The node's IP, reported as hostIP (defaults to the first global address).
    #[arg(long)]
    node_ip: IpAddr,
    /// CNI network configurations (the lexically first valid one is used).
    #[arg(long)]
    cni_conf_dir: PathBuf,
    /// CNI plugin binaries (a colon-separated search path).
    #[arg(long)]
    cni_bin_dir: String,
    /// CNI result cache (libcni's layout).
    #[arg(long)]
    cni_cache_dir: PathBuf,
    /// Pod address range of the default network podlet writes, or one of each IP family for
    /// dual-stack pods, primary first (standalone default 10.88.0.0/16; in a cluster the
    /// Node's `spec.podCIDRs`, which this overrides).
    #[arg(long)]
    pod_cidr: String,
    /// Routes to other nodes' pods: `auto` (host-gw to peers on the node IP's subnet, VXLAN to
    /// the others), `host-gw`, `vxlan` or `none` (default `auto`; cluster mode only).
    #[arg(long)]
    network_backend: String,
    /// Every pod address of the cluster (the controller manager's `--cluster-cidr`): pod
    /// traffic to it is never masqueraded (default 10.244.0.0/16).
    #[arg(long)]
    cluster_cidr: String,
    /// Every ClusterIP (the apiserver's `--service-cluster-ip-range`): the service proxy drops
    /// traffic to an address in it that no Service has (default 10.96.0.0/12).
    #[arg(long)]
    service_cluster_ip_range: String,
    /// The cluster DNS servers pods with `dnsPolicy: ClusterFirst` use (comma-separated IPs).
    /// In a cluster the agent answers on them itself (default 10.96.0.10, kube-system/kube-dns);
    /// standalone the default is none, and "" is none: such pods fall back to the node's
    /// resolvers, with a MissingClusterDNS warning.
    #[arg(long)]
    cluster_dns: String,
    /// The TTL of the cluster DNS server's answers, in seconds (default 5, as CoreDNS').
    #[arg(long)]
    dns_ttl: u32,
    /// The cluster's DNS domain, the end of pods' search path (default cluster.local).
    #[arg(long)]
    cluster_domain: String,
    /// The node's resolver configuration pods' resolv.conf is formed from (default
    /// /etc/resolv.conf; empty: none, pods with the node's DNS use 127.0.0.1).
    #[arg(long)]
    resolv_conf: String,
    /// Maximum number of processes in a pod (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pod_pids_limit: i64,
    /// Resources kept for the OS, e.g. `cpu=500m,memory=1Gi`.
    #[arg(long)]
    system_reserved: String,
    /// Resources kept for Kubernetes daemons, e.g. `cpu=100m,memory=256Mi`.
    #[arg(long)]
    kube_reserved: String,
    /// Hard eviction thresholds (kubelet's syntax; empty disables eviction).
    #[arg(long)]
    eviction_hard: String,
    /// How often eviction signals are checked, in seconds.
    #[arg(long)]
    eviction_interval: f64,
    /// Memory the QoS cgroups keep for higher classes, e.g. `memory=100%`.
    #[arg(long)]
    qos_reserved: String,
    /// Use RuntimeDefault seccomp for containers that ask for no profile.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    seccomp_default: bool,
    /// Unsafe sysctls pods may set (comma-separated, `net.core.*` patterns).
    #[arg(long)]
    allowed_unsafe_sysctls: String,
    /// Run static pods only, with no apiserver (the kubelet's standalone mode).
    #[arg(long, num_args = 0, default_missing_value = "true")]
    standalone: bool,
    /// Join the control plane at this URL as a worker (without it, and without
    /// `--standalone`, the control plane runs in-process).
    #[arg(long)]
    server: String,
    /// Bootstrap token (`abcdef.0123456789abcdef`) for the first join.
    #[arg(long)]
    token: String,
    /// The cluster CA certificate (PEM) that the apiserver's certificate must chain to.
    #[arg(long)]
    certificate_authority: PathBuf,
    /// The node's kubeconfig, written at join (default `<root-dir>/kubelet.kubeconfig`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Labels to register the node with, `key=value,...`.
    #[arg(long)]
    node_labels: String,
    /// Taints to register the node with, `key=value:Effect,...`.
    #[arg(long)]
    register_with_taints: String,
    /// All-in-one: where the in-process apiserver listens.
    #[arg(long)]
    apiserver_listen: SocketAddr,
    /// All-in-one: where the administrator's kubeconfig is written.
    #[arg(long)]
    admin_kubeconfig: PathBuf,
    /// All-in-one: the scheduler's KubeSchedulerConfiguration (v1) file (kube-scheduler's
    /// `--config`): profiles by `schedulerName`, plugins, weights, percentageOfNodesToScore.
    #[arg(long)]
    scheduler_config: PathBuf,
    /// All-in-one: the controllers to run, as kube-controller-manager's `--controllers`
    /// (`*` every controller on by default, `name` on, `-name` off; default `*`).
    #[arg(long)]
    controllers: String,
    /// All-in-one: finished pods kept before PodGC deletes the oldest (0: never; default
    /// 12500).
    #[arg(long)]
    terminated_pod_gc_threshold: i64,
    /// All-in-one: the size of the pod range each Node is given from `--cluster-cidr`
    /// (kube-controller-manager's `--node-cidr-mask-size`; default 24, IPv6 64).
    #[arg(long)]
    node_cidr_mask_size: u8,
    /// All-in-one: how often node health is checked (`--node-monitor-period`; default 5s).
    #[arg(long)]
    node_monitor_period: String,
    /// All-in-one: how long a node may go without a heartbeat before it is marked Unknown
    /// and, later, its pods evicted (`--node-monitor-grace-period`; default 50s).
    #[arg(long)]
    node_monitor_grace_period: String,
    /// All-in-one: the same for a node that never posted its status
    /// (`--node-startup-grace-period`; default 60s).
    #[arg(long)]
    node_startup_grace_period: String,
    /// Steady rate of the agent's writes to the apiserver, per second (the kubelet's 50).
    #[arg(long)]
    kube_api_qps: f64,
    /// Writes allowed in a burst above that rate (the kubelet's 100).
    #[arg(long)]
    kube_api_burst: u32,
    /// Pull one image at a time (the kubelet's default).
    #[arg(long)]
    serialize_image_pulls: bool,
    /// With pulls not serialized: how many at once (0: no limit).
    #[arg(long)]
    max_parallel_image_pulls: u32,
    /// Image filesystem usage (percent) that starts image garbage collection (100: never).
    #[arg(long)]
    image_gc_high_threshold: u8,
    /// Usage (percent) image garbage collection frees down to.
    #[arg(long)]
    image_gc_low_threshold: u8,
    /// Unused images younger than this are kept (Go duration, e.g. `2m`).
    #[arg(long)]
    image_minimum_gc_age: String,
    /// Unused images are removed after this long unused, whatever the disk (`0`: never).
    #[arg(long)]
    image_maximum_gc_age: String,
    /// How often image garbage collection runs (the kubelet's fixed 5m).
    #[arg(long, hide = true)]
    image_gc_period: String,
    /// Registry mirrors and plain-HTTP registries (file only).
    #[arg(skip)]
    registries: podlet_runtime::image::pull::RegistryConfig,
    /// Node-level registry credentials, a Docker `config.json` (file only).
    #[arg(skip)]
    image_credentials: PathBuf,
}

impl Settings {
    /// The global directory flags in their place among the settings.
    pub fn with_dirs(self, paths: &PathFlags) -> Settings {
        Settings {
            root_dir: paths.root_dir.clone(),
            run_dir: paths.run_dir.clone(),
            log_dir: paths.log_dir.clone(),
            ..self
        }
    }

    /// Reads the configuration file; a missing one is empty unless it was asked for
    /// (`explicit`). Errors name the file and the field.
    pub fn read_file(path: &Path, explicit: bool) -> Result<Settings, ConfigError> {
        match std::fs::read(path) {
            Ok(data) if data.iter().all(u8::is_ascii_whitespace) => Ok(Settings::default()),
            Ok(data) => {
                let de = serde_yaml::Deserializer::from_slice(&data);
                serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Field {
                    path: path.to_path_buf(),
                    field: e.path().to_string(),
                    source: e.into_inner(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Settings::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}
