//! What the agent learns about its node at start and never changes afterwards: configuration,
//! capacity, the host's address, the cgroup layout, what the kernel enforces; and the node as
//! a v1 Node built from it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podlet_runtime::cgroup::Layout;

use super::security;
use crate::config::Config;
use crate::eviction::Evictions;

/// The node's facts, probed once.
pub struct NodeInfo {
    pub cfg: Config,
    pub host_ip: Option<IpAddr>,
    /// Node CPU in millicores.
    pub cpu_capacity: i64,
    pub memory_capacity: f64,
    /// The podlet binary, re-executed as each pod's shim.
    pub exe: PathBuf,
    pub cgroups: Layout,
    /// Controllers the layout lacks; their limits are not enforced (warned at start).
    pub missing_controllers: Vec<&'static str>,
    /// The lowest OOM score adjustment this node may give: -1000 with CAP_SYS_RESOURCE,
    /// otherwise the agent's own (a process may only raise its score without it).
    pub oom_floor: i32,
    /// Whether the kernel enforces AppArmor.
    pub apparmor: bool,
    /// When the agent started (the time conditions that never changed report).
    pub started: jiff::Timestamp,
}

/// Why the node cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("finding the podlet binary")]
    Exe(#[source] std::io::Error),
    #[error("loading the AppArmor profile {}", security::APPARMOR_DEFAULT)]
    AppArmor(#[source] security::ProfileError),
}

impl NodeInfo {
    /// Looks at the node: addresses, CPUs and memory, cgroups, capabilities, AppArmor (whose
    /// default profile is loaded where it is enforced).
    pub fn probe(cfg: Config) -> Result<Self, ProbeError> {
        let exe = std::env::current_exe().map_err(ProbeError::Exe)?;
        let cgroups = Layout::detect(&cfg.mountinfo);
        let missing = podlet_runtime::cgroup::missing_controllers(&cgroups);
        if !missing.is_empty() {
            tracing::warn!(
                ?cgroups,
                ?missing,
                "cgroup controllers unavailable: their limits are not enforced"
            );
        }
        let oom_floor = if caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .unwrap_or(false)
        {
            -1000
        } else {
            let own = std::fs::read_to_string("/proc/self/oom_score_adj")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            tracing::warn!(
                floor = own,
                "no CAP_SYS_RESOURCE: negative OOM score adjustments are raised to {own}"
            );
            own
        };
        let apparmor = security::apparmor_enabled();
        if apparmor {
            security::load_default_profile(&cfg.run_dir).map_err(ProbeError::AppArmor)?;
        }
        Ok(Self {
            host_ip: cfg.node_ip.or_else(first_global_ip),
            cpu_capacity: std::thread::available_parallelism()
                .map(|n| n.get() as i64 * 1000)
                .unwrap_or(1000),
            memory_capacity: memory_capacity(),
            exe,
            cgroups,
            missing_controllers: missing,
            oom_floor,
            apparmor,
            started: jiff::Timestamp::now(),
            cfg,
        })
    }

    /// A node of `cfg` with made-up facts (4 CPUs, 8 GiB, cgroup v2 under a path that does
    /// not exist), for tests that never touch the host.
    #[cfg(test)]
    pub fn for_tests(cfg: Config) -> Self {
        Self {
            host_ip: None,
            cpu_capacity: 4000,
            memory_capacity: 8.0 * 1024.0 * 1024.0 * 1024.0,
            exe: PathBuf::from("/nonexistent/podlet"),
            cgroups: Layout::V2 {
                root: PathBuf::from("/nonexistent/cgroup"),
            },
            missing_controllers: Vec::new(),
            oom_floor: 0,
            apparmor: false,
            started: jiff::Timestamp::now(),
            cfg,
        }
    }

    /// Allocatable (millicores, bytes): capacity less what is reserved.
    pub fn allocatable(&self) -> (i64, i64) {
        (
            self.cpu_capacity - self.cfg.reserved.cpu,
            self.memory_capacity as i64 - self.cfg.reserved.memory,
        )
    }

    /// The node's labels: the well-known ones and `--node-labels`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let arch = arch();
        let mut labels = BTreeMap::from([
            (
                "kubernetes.io/hostname".to_string(),
                self.cfg.node_name.clone(),
            ),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), arch.clone()),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            ("beta.kubernetes.io/arch".to_string(), arch),
        ]);
        labels.extend(self.cfg.node_labels.clone());
        labels
    }

    /// The node as a v1 Node: capacity, allocatable, conditions (from the eviction signals),
    /// addresses and node info.
    pub fn node_object(&self, evictions: &Evictions) -> Node {
        let (acpu, amem) = self.allocatable();
        let res = |cpu: i64, mem: i64| {
            BTreeMap::from([
                (
                    "cpu".to_string(),
                    Quantity(if cpu % 1000 == 0 {
                        (cpu / 1000).to_string()
                    } else {
                        format!("{cpu}m")
                    }),
                ),
                ("memory".to_string(), Quantity(format!("{}Ki", mem / 1024))),
                ("pods".to_string(), Quantity("110".into())),
            ])
        };
        let mut conditions: Vec<NodeCondition> = ["MemoryPressure", "DiskPressure", "PIDPressure"]
            .iter()
            .map(|t| {
                let (on, since) = evictions.condition(t).unwrap_or((false, self.started));
                let what = match *t {
                    "MemoryPressure" => "memory",
                    "DiskPressure" => "disk",
                    _ => "PID",
                };
                NodeCondition {
                    type_: t.to_string(),
                    status: if on { "True" } else { "False" }.into(),
                    reason: Some(format!(
                        "Kubelet{}{}",
                        if on { "Has" } else { "HasNo" },
                        if *t == "PIDPressure" {
                            "InsufficientPID".to_string()
                        } else {
                            format!(
                                "{}{}",
                                if on { "" } else { "Sufficient" },
                                t.replace("Pressure", "")
                            )
                        }
                    )),
                    message: Some(format!(
                        "kubelet has {}{what} pressure",
                        if on { "" } else { "no " }
                    )),
                    last_transition_time: Some(Time(since)),
                    ..Default::default()
                }
            })
            .collect();
        conditions.push(NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("podlet is posting ready status".into()),
            last_transition_time: Some(Time(self.started)),
            ..Default::default()
        });
        let uname = nix::sys::utsname::uname().ok();
        let mut addresses = vec![NodeAddress {
            type_: "Hostname".into(),
            address: self.cfg.node_name.clone(),
        }];
        if let Some(ip) = self.host_ip {
            addresses.insert(
                0,
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_string(),
                },
            );
        }
        let version = env!("CARGO_PKG_VERSION");
        let mut n = Node::default();
        n.metadata.name = Some(self.cfg.node_name.clone());
        n.status = Some(NodeStatus {
            capacity: Some(res(self.cpu_capacity, self.memory_capacity as i64)),
            allocatable: Some(res(acpu, amem)),
            conditions: Some(conditions),
            addresses: Some(addresses),
            node_info: Some(NodeSystemInfo {
                architecture: arch(),
                operating_system: "linux".into(),
                kernel_version: uname
                    .as_ref()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default(),
                os_image: os_image(),
                kubelet_version: format!("v{version}"),
                kube_proxy_version: String::new(),
                container_runtime_version: format!("podlet://{version}"),
                ..Default::default()
            }),
            ..Default::default()
        });
        n
    }
}

/// The architecture as Kubernetes names it.
fn arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn memory_capacity() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(1024.0 * 1024.0 * 1024.0)
}

fn first_global_ip() -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut v6 = None;
    for a in addrs {
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            let ip = v4.ip();
            if !ip.is_loopback() && !ip.is_link_local() {
                return Some(IpAddr::V4(ip));
            }
        } else if let Some(s6) = addr.as_sockaddr_in6() {
            let ip = s6.ip();
            if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 && v6.is_none() {
                v6 = Some(IpAddr::V6(ip));
            }
        }
    }
    v6
}
