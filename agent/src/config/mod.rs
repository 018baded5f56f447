//! Agent configuration, like the kubelet's `KubeletConfiguration`: every setting is one field of
//! `Settings`, given as a flag or in `/etc/podlet/config.yaml`. A flag given on the command line
//! wins over the file; the file wins over the default. `Config` is the resolved, typed result.

use std::net::IpAddr;
use std::path::PathBuf;

mod parse;
mod settings;

pub use parse::{
    parse_labels, parse_reserved, parse_taints, parse_thresholds, Amount, ImageGcPolicy, Reserved,
    Threshold, DEFAULT_HARD,
};
pub use settings::{PathFlags, Settings};

pub const DEFAULT_CONFIG: &str = "/etc/podlet/config.yaml";
/// The cluster DNS address in a cluster: the tenth of the default service range, which the
/// control plane reserves for `kube-system/kube-dns` (kubeadm's and k3s' choice).
pub const DEFAULT_CLUSTER_DNS: &str = "10.96.0.10";

/// Why the configuration cannot be used. Messages name the flag (or the file and its field).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}")]
    Field {
        path: PathBuf,
        field: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("node name {0:?} is not a valid DNS subdomain (set --node-name)")]
    NodeName(String),
    #[error("--cgroup-root {0:?} must be a relative cgroup path")]
    CgroupRoot(String),
    /// A value its parser refused, with the parser's reason.
    #[error("--{flag}: {reason}")]
    Value { flag: &'static str, reason: String },
    #[error("--qos-reserved {0:?}: expected memory=<0-100>%")]
    QosReserved(String),
    #[error("--kube-api-qps and --kube-api-burst must be positive")]
    KubeApiRate,
    #[error("--max-parallel-image-pulls needs --serialize-image-pulls=false")]
    ParallelPulls,
    #[error("--image-gc-low-threshold ({low}) must be below --image-gc-high-threshold ({high}), which is at most 100")]
    ImageGcThresholds { low: u8, high: u8 },
    #[error("--network-backend {0:?}: expected auto, host-gw, vxlan or none")]
    NetworkBackend(String),
    #[error("--image-gc-period must be positive")]
    ImageGcPeriod,
    #[error("--{flag} {value:?}: {why}")]
    Invalid {
        flag: &'static str,
        value: String,
        why: String,
    },
}

/// `parse(value)`, its error naming `flag`.
fn parsed<T>(flag: &'static str, r: Result<T, String>) -> Result<T, ConfigError> {
    r.map_err(|reason| ConfigError::Value { flag, reason })
}

/// How the agent relates to a control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterMode {
    /// Static pods only.
    Standalone,
    /// The control plane runs in this process on the embedded store.
    AllInOne {
        listen: std::net::SocketAddr,
        admin_kubeconfig: PathBuf,
        /// The in-process kube-controller-manager's options.
        controllers: podlet_control_plane::controllers::Options,
        /// The in-process kube-scheduler's KubeSchedulerConfiguration file.
        scheduler_config: Option<PathBuf>,
    },
    /// A worker of the control plane at `server`.
    Worker {
        server: String,
        token: Option<String>,
        ca: Option<PathBuf>,
    },
}

/// `--network-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkBackend {
    Auto,
    HostGw,
    Vxlan,
    None,
}

impl std::str::FromStr for NetworkBackend {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "auto" => Ok(Self::Auto),
            "host-gw" => Ok(Self::HostGw),
            "vxlan" => Ok(Self::Vxlan),
            "none" => Ok(Self::None),
            _ => Err(()),
        }
    }
}

impl NetworkBackend {
    /// Whether VXLAN may carry pod traffic.
    pub fn vxlan(self) -> bool {
        matches!(self, Self::Auto | Self::Vxlan)
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub manifest_dir: PathBuf,
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub node_name: String,
    pub cgroup_root: String,
    pub port: u16,
    pub address: IpAddr,
    pub node_ip: Option<IpAddr>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_cache_dir: PathBuf,
    /// The default network's ranges (one, or one of each family): given, or (None) the Node's
    /// `spec.podCIDRs` in a cluster.
    pub pod_cidr: Option<k8s_rules::cidrs::DualStackCidrs>,
    pub network_backend: NetworkBackend,
    pub cluster_cidr: k8s_rules::cidrs::DualStackCidrs,
    /// `--service-cluster-ip-range` (IPv4 only for now).
    pub service_cluster_ip_range: k8s_rules::cidrs::DualStackCidrs,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The TTL of cluster DNS answers, in seconds.
    pub dns_ttl: u32,
    /// None: `--resolv-conf ""`, no node resolver configuration.
    pub resolv_conf: Option<PathBuf>,
    pub pod_pids_limit: Option<i64>,
    /// Reserved (millicores, bytes), system and kube together.
    pub reserved: Reserved,
    pub eviction_hard: Vec<Threshold>,
    pub eviction_interval: std::time::Duration,
    /// Fraction of higher classes' memory requests kept from lower QoS classes.
    pub qos_reserved_memory: Option<f64>,
    pub seccomp_default: bool,
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Where mounts are read from (a parameter so tests can use a fixture).
    pub mountinfo: PathBuf,
    pub cluster: ClusterMode,
    pub kubeconfig: PathBuf,
    pub node_labels: std::collections::BTreeMap<String, String>,
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// (QPS, burst) of writes to the apiserver.
    pub kube_api: (f64, u32),
    /// Image pulls at once (None: no limit).
    pub image_pulls: Option<usize>,
    pub registries: podlet_runtime::image::pull::RegistryConfig,
    /// Docker config files with node-level registry credentials, first match wins.
    pub image_credentials: Vec<PathBuf>,
    pub image_gc: ImageGcPolicy,
}

impl Config {
    pub fn images_dir(&self) -> PathBuf {
        self.root_dir.join("images")
    }
    /// Per-pod persistent data (rootfs instances, volumes, etc files).
    pub fn pod_data_dir(&self, uid: &str) -> PathBuf {
        self.root_dir.join("pods").join(uid)
    }
    /// Per-pod runtime dir (shim socket and state).
    pub fn pod_run_dir(&self, uid: &str) -> PathBuf {
        self.run_dir.join("pods").join(uid)
    }
    /// libcontainer's state root.
    pub fn container_state_root(&self) -> PathBuf {
        self.run_dir.join("containers")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("podlet.sock")
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .to_lowercase()
}

impl Config {
    /// The configuration from the command line (`paths` and `flags`) over the file over the
    /// defaults.
    pub fn load(paths: &PathFlags, flags: &Settings) -> Result<Self, ConfigError> {
        let explicit = paths.config.is_some();
        let file_path = paths
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let file = Settings::read_file(&file_path, explicit)?;
        Self::resolve(flags.clone().with_dirs(paths).or(file))
    }

    /// Fills in the defaults and checks and converts every value.
    pub fn resolve(s: Settings) -> Result<Self, ConfigError> {
        let node_name = s.node_name.unwrap_or_else(hostname);
        if node_name.is_empty()
            || node_name.len() > 253
            || !node_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(ConfigError::NodeName(node_name));
        }
        let cgroup_root = s
            .cgroup_root
            .unwrap_or_else(|| "kubepods".into())
            .trim_matches('/')
            .to_string();
        if cgroup_root.is_empty() || cgroup_root.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(ConfigError::CgroupRoot(cgroup_root));
        }
        let root_dir: PathBuf = s.root_dir.unwrap_or_else(|| "/var/lib/podlet".into());
        let reserved = |flag, v: Option<String>| {
            v.map(|v| parsed(flag, parse_reserved(&v)))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let reserved = reserved("system-reserved", s.system_reserved)?
            + reserved("kube-reserved", s.kube_reserved)?;
        let eviction_hard = parsed(
            "eviction-hard",
            parse_thresholds(s.eviction_hard.as_deref().unwrap_or(DEFAULT_HARD)),
        )?;
        let qos_reserved_memory = match s.qos_reserved {
            None => None,
            Some(v) => {
                let pct = v
                    .strip_prefix("memory=")
                    .and_then(|p| p.strip_suffix('%'))
                    .and_then(|p| p.parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| ConfigError::QosReserved(v.clone()))?;
                Some(pct / 100.0)
            }
        };
        let cluster = if s.standalone.unwrap_or(false) {
            ClusterMode::Standalone
        } else if let Some(server) = s.server {
            ClusterMode::Worker {
                server,
                token: s.token,
                ca: s.certificate_authority,
            }
        } else {
            ClusterMode::AllInOne {
                listen: s
                    .apiserver_listen
                    .unwrap_or_else(|| ([127, 0, 0, 1], 6443).into()),
                admin_kubeconfig: s
                    .admin_kubeconfig
                    .unwrap_or_else(|| "/etc/podlet/admin.kubeconfig".into()),
                scheduler_config: s.scheduler_config,
                controllers: {
                    let mut o = podlet_control_plane::controllers::Options::default();
                    if let Some(list) = s.controllers.as_deref() {
                        o.controllers = list.split(',').map(|c| c.trim().to_string()).collect();
                    }
                    if let Some(t) = s.terminated_pod_gc_threshold {
                        o.terminated_pod_gc_threshold = t;
                    }
                    // The controller manager gives Nodes their ranges from the same
                    // --cluster-cidr the agent keeps unmasqueraded.
                    if let Some(v) = s.cluster_cidr.as_deref() {
                        o.node_ipam.cluster_cidrs = parsed(
                            "cluster-cidr",
                            podlet_control_plane::controllers::nodeipam::parse_cluster_cidr(v),
                        )?;
                    }
                    o.node_ipam.node_cidr_mask_size = s.node_cidr_mask_size;
                    let duration =
                        |flag: &'static str, v: Option<&str>, into: &mut std::time::Duration| {
                            if let Some(v) = v {
                                *into = parsed(flag, k8s_rules::duration::parse(v))?;
                            }
                            Ok::<_, ConfigError>(())
                        };
                    let lc = &mut o.node_lifecycle;
                    duration(
                        "node-monitor-period",
                        s.node_monitor_period.as_deref(),
                        &mut lc.node_monitor_period,
                    )?;
                    duration(
                        "node-monitor-grace-period",
                        s.node_monitor_grace_period.as_deref(),
                        &mut lc.node_monitor_grace_period,
                    )?;
                    duration(
                        "node-startup-grace-period",
                        s.node_startup_grace_period.as_deref(),
                        &mut lc.node_startup_grace_period,
                    )?;
                    parsed("controllers", o.validate())?;
                    o
                },
            }
        };
        let dual = |flag: &'static str, v: Option<String>, default: &str| {
            let v = v.unwrap_or_else(|| default.into());
            // Its messages name the flag already.
            let r = k8s_rules::cidrs::DualStackCidrs::parse(flag, &v).map_err(|e| {
                e.strip_prefix(&format!("--{flag}: "))
                    .map(String::from)
                    .unwrap_or(e)
            });
            parsed(flag, r)
        };
        // Standalone, there is no Node to take the range from. One of each family for a
        // dual-stack default network (a Node's `spec.podCIDRs`, primary first).
        let pod_cidr = match s.pod_cidr.clone() {
            Some(v) => Some(dual("pod-cidr", Some(v), "")?),
            None if cluster == ClusterMode::Standalone => {
                Some(dual("pod-cidr", None, "10.88.0.0/16")?)
            }
            None => None,
        };
        let cluster_cidr = dual("cluster-cidr", s.cluster_cidr.clone(), "10.244.0.0/16")?;
        let service_cluster_ip_range = dual(
            "service-cluster-ip-range",
            s.service_cluster_ip_range.clone(),
            "10.96.0.0/12",
        )?;
        // In a cluster the agent serves the cluster DNS address itself (`crate::dns`), the one
        // the control plane reserves for kube-system/kube-dns; standalone there is none.
        let cluster_dns = s
            .cluster_dns
            .as_deref()
            .unwrap_or(if cluster == ClusterMode::Standalone {
                ""
            } else {
                DEFAULT_CLUSTER_DNS
            })
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<IpAddr>().map_err(|e| ConfigError::Invalid {
                    flag: "cluster-dns",
                    value: v.to_string(),
                    why: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let network_backend = match s.network_backend.as_deref() {
            None => NetworkBackend::Auto,
            Some(b) => b
                .parse()
                .map_err(|_| ConfigError::NetworkBackend(b.to_string()))?,
        };
        let node_labels = parsed("node-labels", parse_labels(s.node_labels.as_deref()))?;
        let taints = parsed(
            "register-with-taints",
            parse_taints(s.register_with_taints.as_deref()),
        )?;
        let kube_api = {
            let qps = s.kube_api_qps.unwrap_or(50.0);
            let burst = s.kube_api_burst.unwrap_or(100);
            if qps.is_nan() || qps <= 0.0 || burst == 0 {
                return Err(ConfigError::KubeApiRate);
            }
            (qps, burst)
        };
        let image_pulls = {
            let serialize = s.serialize_image_pulls.unwrap_or(true);
            let max = s.max_parallel_image_pulls.unwrap_or(0);
            if serialize && max > 1 {
                return Err(ConfigError::ParallelPulls);
            }
            match (serialize, max) {
                (true, _) => Some(1),
                (false, 0) => None,
                (false, n) => Some(n as usize),
            }
        };
        let image_gc = {
            let dur = |flag, v: Option<String>, default: &str| {
                parsed(
                    flag,
                    k8s_rules::duration::parse(v.as_deref().unwrap_or(default)),
                )
            };
            let high = s.image_gc_high_threshold.unwrap_or(85);
            let low = s.image_gc_low_threshold.unwrap_or(80);
            if high > 100 || low >= high && high != 100 {
                return Err(ConfigError::ImageGcThresholds { low, high });
            }
            let period = dur("image-gc-period", s.image_gc_period, "5m")?;
            if period.is_zero() {
                return Err(ConfigError::ImageGcPeriod);
            }
            ImageGcPolicy {
                high,
                low,
                min_age: dur("image-minimum-gc-age", s.image_minimum_gc_age, "2m")?,
                max_age: dur("image-maximum-gc-age", s.image_maximum_gc_age, "0")?,
                period,
            }
        };
        Ok(Self {
            manifest_dir: s
                .manifest_dir
                .unwrap_or_else(|| "/etc/podlet/manifests".into()),
            run_dir: s.run_dir.unwrap_or_else(|| "/run/podlet".into()),
            log_dir: s.log_dir.unwrap_or_else(|| "/var/log/pods".into()),
            node_name,
            cgroup_root,
            port: s.port.unwrap_or(10250),
            address: s.address.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            node_ip: s.node_ip,
            cni_conf_dir: s.cni_conf_dir.unwrap_or_else(|| "/etc/cni/net.d".into()),
            cni_bin_dirs: s
                .cni_bin_dir
                .unwrap_or_else(|| "/opt/cni/bin".into())
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect(),
            cni_cache_dir: s.cni_cache_dir.unwrap_or_else(|| "/var/lib/cni".into()),
            pod_cidr,
            network_backend,
            cluster_cidr,
            service_cluster_ip_range,
            cluster_dns,
            cluster_domain: s
                .cluster_domain
                .map(|d| d.trim_end_matches('.').to_string())
                .unwrap_or_else(|| "cluster.local".into()),
            dns_ttl: s.dns_ttl.unwrap_or(5),
            resolv_conf: match s.resolv_conf {
                None => Some("/etc/resolv.conf".into()),
                Some(p) if p.is_empty() => None,
                Some(p) => Some(p.into()),
            },
            pod_pids_limit: s.pod_pids_limit.filter(|p| *p > 0),
            reserved,
            eviction_hard,
            eviction_interval: std::time::Duration::from_secs_f64(
                s.eviction_interval.unwrap_or(10.0).max(0.1),
            ),
            qos_reserved_memory,
            seccomp_default: s.seccomp_default.unwrap_or(false),
            allowed_unsafe_sysctls: s
                .allowed_unsafe_sysctls
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            kubeconfig: s
                .kubeconfig
                .unwrap_or_else(|| root_dir.join("kubelet.kubeconfig")),
            cluster,
            node_labels,
            taints,
            kube_api,
            image_pulls,
            registries: s.registries.unwrap_or_default(),
            // The kubelet's search: its root directory, then the user's Docker config.
            image_credentials: match s.image_credentials {
                Some(p) => vec![p],
                None => {
                    let mut v = vec![root_dir.join("config.json")];
                    if let Some(home) = std::env::var_os("HOME") {
                        v.push(PathBuf::from(home).join(".docker/config.json"));
                    }
                    v
                }
            },
            image_gc,
            root_dir,
        })
    }
}

#[cfg(test)]
mod tests;
