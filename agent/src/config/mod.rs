//! Agent configuration: kubelet-like flags, optionally preset by `/etc/podlet/config.yaml`.
//! A flag given on the command line wins over the file; the file wins over the default.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

mod parse;

pub use parse::{
    parse_labels, parse_reserved, parse_taints, parse_thresholds, Amount, ImageGcPolicy, Reserved,
    Threshold, DEFAULT_HARD,
};

pub const DEFAULT_CONFIG: &str = "/etc/podlet/config.yaml";

/// Paths every subcommand needs (so `podlet ps` finds the agent started with the same file).
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

/// Flags of `podlet run`.
#[derive(Debug, Clone, Args, Default)]
pub struct RunFlags {
    /// Directory of static pod manifests.
    #[arg(long)]
    pub manifest_dir: Option<PathBuf>,
    /// Node name (defaults to the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Parent of every pod cgroup, relative to each cgroup hierarchy.
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// Node API port (0 disables the TCP listener).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address the node API listens on.
    #[arg(long)]
    pub address: Option<IpAddr>,
    /// The node's IP, reported as hostIP (defaults to the first global address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// CNI network configurations (the lexically first valid one is used).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin binaries (a colon-separated search path).
    #[arg(long)]
    pub cni_bin_dir: Option<String>,
    /// CNI result cache (libcni's layout).
    #[arg(long)]
    pub cni_cache_dir: Option<PathBuf>,
    /// Pod address range of the default network podlet writes when there is none.
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Maximum number of processes in a pod (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub pod_pids_limit: Option<i64>,
    /// Resources kept for the OS, e.g. `cpu=500m,memory=1Gi`.
    #[arg(long)]
    pub system_reserved: Option<String>,
    /// Resources kept for Kubernetes daemons, e.g. `cpu=100m,memory=256Mi`.
    #[arg(long)]
    pub kube_reserved: Option<String>,
    /// Hard eviction thresholds (kubelet's syntax; empty disables eviction).
    #[arg(long)]
    pub eviction_hard: Option<String>,
    /// How often eviction signals are checked, in seconds.
    #[arg(long)]
    pub eviction_interval: Option<f64>,
    /// Memory the QoS cgroups keep for higher classes, e.g. `memory=100%`.
    #[arg(long)]
    pub qos_reserved: Option<String>,
    /// Use RuntimeDefault seccomp for containers that ask for no profile.
    #[arg(long)]
    pub seccomp_default: bool,
    /// Unsafe sysctls pods may set (comma-separated, `net.core.*` patterns).
    #[arg(long)]
    pub allowed_unsafe_sysctls: Option<String>,
    /// Run static pods only, with no apiserver (the kubelet's standalone mode).
    #[arg(long)]
    pub standalone: bool,
    /// Join the control plane at this URL as a worker (without it, and without
    /// `--standalone`, the control plane runs in-process).
    #[arg(long)]
    pub server: Option<String>,
    /// Bootstrap token (`abcdef.0123456789abcdef`) for the first join.
    #[arg(long)]
    pub token: Option<String>,
    /// The cluster CA certificate (PEM) that the apiserver's certificate must chain to.
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,
    /// The node's kubeconfig, written at join (default `<root-dir>/kubelet.kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Labels to register the node with, `key=value,...`.
    #[arg(long)]
    pub node_labels: Option<String>,
    /// Taints to register the node with, `key=value:Effect,...`.
    #[arg(long)]
    pub register_with_taints: Option<String>,
    /// All-in-one: where the in-process apiserver listens.
    #[arg(long)]
    pub apiserver_listen: Option<std::net::SocketAddr>,
    /// All-in-one: where the administrator's kubeconfig is written.
    #[arg(long)]
    pub admin_kubeconfig: Option<PathBuf>,
    /// Steady rate of the agent's writes to the apiserver, per second (the kubelet's 50).
    #[arg(long)]
    pub kube_api_qps: Option<f64>,
    /// Writes allowed in a burst above that rate (the kubelet's 100).
    #[arg(long)]
    pub kube_api_burst: Option<u32>,
    /// Pull one image at a time (the kubelet's default).
    #[arg(long)]
    pub serialize_image_pulls: Option<bool>,
    /// With pulls not serialized: how many at once (0: no limit).
    #[arg(long)]
    pub max_parallel_image_pulls: Option<u32>,
    /// Image filesystem usage (percent) that starts image garbage collection (100: never).
    #[arg(long)]
    pub image_gc_high_threshold: Option<u8>,
    /// Usage (percent) image garbage collection frees down to.
    #[arg(long)]
    pub image_gc_low_threshold: Option<u8>,
    /// Unused images younger than this are kept (Go duration, e.g. `2m`).
    #[arg(long)]
    pub image_minimum_gc_age: Option<String>,
    /// Unused images are removed after this long unused, whatever the disk (`0`: never).
    #[arg(long)]
    pub image_maximum_gc_age: Option<String>,
    /// How often image garbage collection runs (the kubelet's fixed 5m).
    #[arg(long, hide = true)]
    pub image_gc_period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    manifest_dir: Option<PathBuf>,
    root_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    node_name: Option<String>,
    cgroup_root: Option<String>,
    port: Option<u16>,
    address: Option<IpAddr>,
    node_ip: Option<IpAddr>,
    cni_conf_dir: Option<PathBuf>,
    cni_bin_dir: Option<String>,
    cni_cache_dir: Option<PathBuf>,
    pod_cidr: Option<String>,
    pod_pids_limit: Option<i64>,
    system_reserved: Option<String>,
    kube_reserved: Option<String>,
    eviction_hard: Option<String>,
    eviction_interval: Option<f64>,
    qos_reserved: Option<String>,
    seccomp_default: Option<bool>,
    allowed_unsafe_sysctls: Option<String>,
    standalone: Option<bool>,
    server: Option<String>,
    token: Option<String>,
    certificate_authority: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    node_labels: Option<String>,
    register_with_taints: Option<String>,
    apiserver_listen: Option<std::net::SocketAddr>,
    admin_kubeconfig: Option<PathBuf>,
    kube_api_qps: Option<f64>,
    kube_api_burst: Option<u32>,
    serialize_image_pulls: Option<bool>,
    max_parallel_image_pulls: Option<u32>,
    image_gc_high_threshold: Option<u8>,
    image_gc_low_threshold: Option<u8>,
    image_minimum_gc_age: Option<String>,
    image_maximum_gc_age: Option<String>,
    image_gc_period: Option<String>,
    /// Registry mirrors and plain-HTTP registries.
    registries: Option<podlet_runtime::image::pull::RegistryConfig>,
    /// Node-level registry credentials (a Docker `config.json`).
    image_credentials: Option<PathBuf>,
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
    },
    /// A worker of the control plane at `server`.
    Worker {
        server: String,
        token: Option<String>,
        ca: Option<PathBuf>,
    },
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
    pub pod_cidr: String,
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

fn read_file(path: &Path, explicit: bool) -> Result<FileConfig> {
    match std::fs::read(path) {
        Ok(data) if data.iter().all(u8::is_ascii_whitespace) => Ok(FileConfig::default()),
        Ok(data) => {
            let de = serde_yaml::Deserializer::from_slice(&data);
            serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
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
    pub fn load(paths: &PathFlags, run: &RunFlags) -> Result<Self> {
        let explicit = paths.config.is_some();
        let file_path = paths
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let f = read_file(&file_path, explicit)?;
        let node_name = run
            .node_name
            .clone()
            .or(f.node_name)
            .unwrap_or_else(hostname);
        if node_name.is_empty()
            || node_name.len() > 253
            || !node_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            anyhow::bail!("node name {node_name:?} is not a valid DNS subdomain (set --node-name)");
        }
        let cgroup_root = run
            .cgroup_root
            .clone()
            .or(f.cgroup_root)
            .unwrap_or_else(|| "kubepods".into())
            .trim_matches('/')
            .to_string();
        if cgroup_root.is_empty() || cgroup_root.split('/').any(|c| c == ".." || c.is_empty()) {
            anyhow::bail!("--cgroup-root {cgroup_root:?} must be a relative cgroup path");
        }
        let root_dir: PathBuf = paths
            .root_dir
            .clone()
            .or(f.root_dir)
            .unwrap_or_else(|| "/var/lib/podlet".into());
        Ok(Self {
            manifest_dir: run
                .manifest_dir
                .clone()
                .or(f.manifest_dir)
                .unwrap_or_else(|| "/etc/podlet/manifests".into()),
            run_dir: paths
                .run_dir
                .clone()
                .or(f.run_dir)
                .unwrap_or_else(|| "/run/podlet".into()),
            log_dir: paths
                .log_dir
                .clone()
                .or(f.log_dir)
                .unwrap_or_else(|| "/var/log/pods".into()),
            node_name,
            cgroup_root,
            port: run.port.or(f.port).unwrap_or(10250),
            address: run
                .address
                .or(f.address)
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            node_ip: run.node_ip.or(f.node_ip),
            cni_conf_dir: run
                .cni_conf_dir
                .clone()
                .or(f.cni_conf_dir)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            cni_bin_dirs: run
                .cni_bin_dir
                .clone()
                .or(f.cni_bin_dir)
                .unwrap_or_else(|| "/opt/cni/bin".into())
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect(),
            cni_cache_dir: run
                .cni_cache_dir
                .clone()
                .or(f.cni_cache_dir)
                .unwrap_or_else(|| "/var/lib/cni".into()),
            pod_cidr: run
                .pod_cidr
                .clone()
                .or(f.pod_cidr)
                .unwrap_or_else(|| "10.88.0.0/16".into()),
            pod_pids_limit: run.pod_pids_limit.or(f.pod_pids_limit).filter(|p| *p > 0),
            reserved: {
                let parse = |flag: &str, v: Option<String>| -> Result<Reserved> {
                    v.map(|s| parse_reserved(&s).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
                        .transpose()
                        .map(Option::unwrap_or_default)
                };
                let a = parse(
                    "system-reserved",
                    run.system_reserved.clone().or(f.system_reserved),
                )?;
                let b = parse(
                    "kube-reserved",
                    run.kube_reserved.clone().or(f.kube_reserved),
                )?;
                a + b
            },
            eviction_hard: parse_thresholds(
                &run.eviction_hard
                    .clone()
                    .or(f.eviction_hard)
                    .unwrap_or_else(|| DEFAULT_HARD.into()),
            )
            .map_err(|e| anyhow::anyhow!("--eviction-hard: {e}"))?,
            eviction_interval: std::time::Duration::from_secs_f64(
                run.eviction_interval
                    .or(f.eviction_interval)
                    .unwrap_or(10.0)
                    .max(0.1),
            ),
            qos_reserved_memory: match run.qos_reserved.clone().or(f.qos_reserved) {
                None => None,
                Some(v) => {
                    let pct = v
                        .strip_prefix("memory=")
                        .and_then(|p| p.strip_suffix('%'))
                        .and_then(|p| p.parse::<f64>().ok())
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| {
                            anyhow::anyhow!("--qos-reserved {v:?}: expected memory=<0-100>%")
                        })?;
                    Some(pct / 100.0)
                }
            },
            seccomp_default: run.seccomp_default || f.seccomp_default.unwrap_or(false),
            allowed_unsafe_sysctls: run
                .allowed_unsafe_sysctls
                .clone()
                .or(f.allowed_unsafe_sysctls)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            kubeconfig: run
                .kubeconfig
                .clone()
                .or(f.kubeconfig)
                .unwrap_or_else(|| root_dir.join("kubelet.kubeconfig")),
            cluster: if run.standalone || f.standalone.unwrap_or(false) {
                ClusterMode::Standalone
            } else if let Some(server) = run.server.clone().or(f.server) {
                ClusterMode::Worker {
                    server,
                    token: run.token.clone().or(f.token),
                    ca: run
                        .certificate_authority
                        .clone()
                        .or(f.certificate_authority),
                }
            } else {
                ClusterMode::AllInOne {
                    listen: run
                        .apiserver_listen
                        .or(f.apiserver_listen)
                        .unwrap_or_else(|| ([127, 0, 0, 1], 6443).into()),
                    admin_kubeconfig: run
                        .admin_kubeconfig
                        .clone()
                        .or(f.admin_kubeconfig)
                        .unwrap_or_else(|| "/etc/podlet/admin.kubeconfig".into()),
                }
            },
            node_labels: parse_labels(run.node_labels.clone().or(f.node_labels).as_deref())
                .map_err(|e| anyhow::anyhow!("--node-labels: {e}"))?,
            taints: parse_taints(
                run.register_with_taints
                    .clone()
                    .or(f.register_with_taints)
                    .as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("--register-with-taints: {e}"))?,
            kube_api: {
                let qps = run.kube_api_qps.or(f.kube_api_qps).unwrap_or(50.0);
                let burst = run.kube_api_burst.or(f.kube_api_burst).unwrap_or(100);
                if qps.is_nan() || qps <= 0.0 || burst == 0 {
                    anyhow::bail!("--kube-api-qps and --kube-api-burst must be positive");
                }
                (qps, burst)
            },
            image_pulls: {
                let serialize = run
                    .serialize_image_pulls
                    .or(f.serialize_image_pulls)
                    .unwrap_or(true);
                let max = run
                    .max_parallel_image_pulls
                    .or(f.max_parallel_image_pulls)
                    .unwrap_or(0);
                if serialize && max > 1 {
                    anyhow::bail!("--max-parallel-image-pulls needs --serialize-image-pulls=false");
                }
                match (serialize, max) {
                    (true, _) => Some(1),
                    (false, 0) => None,
                    (false, n) => Some(n as usize),
                }
            },
            registries: f.registries.unwrap_or_default(),
            image_gc: {
                let dur = |flag: &str, v: Option<String>, default: &str| {
                    k8s_rules::duration::parse(v.as_deref().unwrap_or(default))
                        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
                };
                let high = run
                    .image_gc_high_threshold
                    .or(f.image_gc_high_threshold)
                    .unwrap_or(85);
                let low = run
                    .image_gc_low_threshold
                    .or(f.image_gc_low_threshold)
                    .unwrap_or(80);
                if high > 100 || low >= high && high != 100 {
                    anyhow::bail!(
                        "--image-gc-low-threshold ({low}) must be below --image-gc-high-threshold ({high}), which is at most 100"
                    );
                }
                let period = dur(
                    "image-gc-period",
                    run.image_gc_period.clone().or(f.image_gc_period),
                    "5m",
                )?;
                if period.is_zero() {
                    anyhow::bail!("--image-gc-period must be positive");
                }
                ImageGcPolicy {
                    high,
                    low,
                    min_age: dur(
                        "image-minimum-gc-age",
                        run.image_minimum_gc_age.clone().or(f.image_minimum_gc_age),
                        "2m",
                    )?,
                    max_age: dur(
                        "image-maximum-gc-age",
                        run.image_maximum_gc_age.clone().or(f.image_maximum_gc_age),
                        "0",
                    )?,
                    period,
                }
            },
            // The kubelet's search: its root directory, then the user's Docker config.
            image_credentials: match f.image_credentials {
                Some(p) => vec![p],
                None => {
                    let mut v = vec![root_dir.join("config.json")];
                    if let Some(home) = std::env::var_os("HOME") {
                        v.push(PathBuf::from(home).join(".docker/config.json"));
                    }
                    v
                }
            },
            root_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "rootDir: /srv/podlet\nport: 1234\nnodeName: from-file\n",
        )
        .unwrap();
        let paths = PathFlags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let run = RunFlags {
            node_name: Some("from-flag".into()),
            ..Default::default()
        };
        let c = Config::load(&paths, &run).unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.root_dir, Path::new("/srv/podlet"));
        assert_eq!(c.port, 1234);
        assert_eq!(c.run_dir, Path::new("/run/podlet"));
        assert_eq!(c.cgroup_root, "kubepods");
    }

    #[test]
    fn bad_file_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "port: lots\n").unwrap();
        let paths = PathFlags {
            config: Some(file),
            ..Default::default()
        };
        let err = Config::load(&paths, &RunFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.yaml") && err.contains("port"), "{err}");
        std::fs::write(dir.path().join("d.yaml"), "staticPodPath: /x\n").unwrap();
        let paths = PathFlags {
            config: Some(dir.path().join("d.yaml")),
            ..Default::default()
        };
        assert!(Config::load(&paths, &RunFlags::default()).is_err());
    }
}
