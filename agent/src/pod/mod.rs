//! The pod sync loop: one manager keeps a worker per desired pod (and tears down pods that are
//! no longer desired, including ones found on disk after a restart); each worker drives its pod's
//! shim towards the spec and publishes the pod's status.

pub mod resources;
pub mod security;
pub mod status;
pub mod translate;
pub mod userns;
mod worker;
pub use worker::POD_FILE;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_rules::nodeaffinity::{required_node_affinity_matches, NodeFacts};
use k8s_rules::qos::QosClass;
use k8s_rules::taints::find_untolerated;
use podlet_runtime::image::ImageStore;
use tokio::sync::watch;

use crate::config::Config;
use crate::manifest::Desired;
use crate::util::send_if_changed;

/// Everything workers share.
pub struct Node {
    pub cfg: Config,
    pub images: ImageStore,
    pub puller: podlet_runtime::image::pull::Puller,
    /// When images were first seen and last used, for garbage collection.
    pub image_usage: crate::imagegc::Usage,
    qos_update: std::sync::Mutex<()>,
    /// Image pulls at once (`--serialize-image-pulls`, `--max-parallel-image-pulls`).
    pub pull_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Pods with their current status, by UID, for the node API.
    pub pods: RwLock<BTreeMap<String, Pod>>,
    pub host_ip: Option<IpAddr>,
    pub memory_capacity: f64,
    /// The podlet binary, re-executed as each pod's shim.
    pub exe: PathBuf,
    pub network: crate::network::Network,
    pub cgroups: podlet_runtime::cgroup::Layout,
    /// Controllers the layout lacks; their limits are not enforced (warned at start).
    pub missing_controllers: Vec<&'static str>,
    /// Host ID ranges of `hostUsers: false` pods.
    pub userns: userns::Allocator,
    /// Node CPU in millicores.
    pub cpu_capacity: i64,
    /// Admitted pods: uid -> (QoS, cpu request in millicores, memory request in bytes).
    pub admitted: std::sync::Mutex<BTreeMap<String, (QosClass, i64, i64)>>,
    /// The lowest OOM score adjustment this node may give: -1000 with CAP_SYS_RESOURCE,
    /// otherwise the agent's own (a process may only raise its score without it).
    pub oom_floor: i32,
    /// Whether the kernel enforces AppArmor.
    pub apparmor: bool,
    /// Node conditions driven by eviction signals: type -> (status, last transition).
    pub conditions: RwLock<BTreeMap<&'static str, (bool, jiff::Timestamp)>>,
    /// Evictions asked for and not finished yet: uid -> message.
    pub evictions: std::sync::Mutex<BTreeMap<String, String>>,
    /// Bumped on every eviction request, waking the pod workers.
    pub eviction_tx: watch::Sender<u64>,
    /// Bumped whenever a pod's published status changes or a pod goes.
    pub status_tx: watch::Sender<u64>,
    /// When the agent started (the time conditions that never changed report).
    pub started: jiff::Timestamp,
    /// Paces writes to the apiserver.
    pub api_limit: crate::util::Limiter,
    /// Paces events on their own (the kubelet's `--event-qps` 50, `--event-burst` 100), so
    /// they never hold up statuses.
    pub event_limit: crate::util::Limiter,
    /// The apiserver client, when there is one (config maps, secrets, tokens for pods).
    pub api: std::sync::OnceLock<watch::Receiver<kube::Client>>,
    /// Where pod events go, once an apiserver takes them.
    pub events: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<PodEvent>>,
}

/// An event about a pod, as the kubelet records them (`Pulled`, `Started`, `Killing`…).
pub struct PodEvent {
    pub pod: Pod,
    pub type_: String,
    pub reason: String,
    pub message: String,
}

impl Node {
    /// Registry credentials of the node: the first Docker config file found.
    pub fn node_credentials(&self) -> podlet_runtime::image::pull::Credentials {
        for p in &self.cfg.image_credentials {
            match podlet_runtime::image::pull::Credentials::load(p) {
                Ok(c) => {
                    if p.exists() {
                        return c;
                    }
                }
                Err(e) => tracing::warn!("registry credentials: {e}"),
            }
        }
        Default::default()
    }

    pub fn new(cfg: Config) -> anyhow::Result<Self> {
        let images = ImageStore::open(cfg.images_dir())?;
        let host_ip = cfg.node_ip.or_else(first_global_ip);
        let exe = std::env::current_exe()?;
        let network = crate::network::Network::init(&cfg, &exe)?;
        let cgroups = podlet_runtime::cgroup::Layout::detect(&cfg.mountinfo);
        let missing = podlet_runtime::cgroup::missing_controllers(&cgroups);
        if !missing.is_empty() {
            tracing::warn!(
                ?cgroups,
                ?missing,
                "cgroup controllers unavailable: their limits are not enforced"
            );
        }
        let cpu_capacity = std::thread::available_parallelism()
            .map(|n| n.get() as i64 * 1000)
            .unwrap_or(1000);
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
            if let Err(e) = security::load_default_profile(&cfg.run_dir) {
                anyhow::bail!(
                    "loading the AppArmor profile {}: {e}",
                    security::APPARMOR_DEFAULT
                );
            }
        }
        Ok(Self {
            apparmor,
            conditions: RwLock::new(BTreeMap::new()),
            evictions: std::sync::Mutex::new(BTreeMap::new()),
            eviction_tx: watch::channel(0).0,
            status_tx: watch::channel(0).0,
            started: jiff::Timestamp::now(),
            events: std::sync::OnceLock::new(),
            api: std::sync::OnceLock::new(),
            api_limit: crate::util::Limiter::new(cfg.kube_api.0, cfg.kube_api.1),
            event_limit: crate::util::Limiter::new(50.0, 100),
            oom_floor,
            cgroups,
            missing_controllers: missing,
            userns: userns::Allocator::open(&cfg.root_dir.join("userns.json"))?,
            cpu_capacity,
            admitted: std::sync::Mutex::new(BTreeMap::new()),
            puller: podlet_runtime::image::pull::Puller::new(
                images.clone(),
                cfg.registries.clone(),
            ),
            pull_slots: cfg
                .image_pulls
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
            image_usage: Default::default(),
            qos_update: Default::default(),
            images,
            pods: RwLock::new(BTreeMap::new()),
            host_ip,
            memory_capacity: memory_capacity(),
            exe,
            network,
            cfg,
        })
    }

    /// Allocatable (millicores, bytes): capacity less what is reserved.
    pub fn allocatable(&self) -> (i64, i64) {
        (
            self.cpu_capacity - self.cfg.reserved.cpu,
            self.memory_capacity as i64 - self.cfg.reserved.memory,
        )
    }

    /// Writes the QoS-level cgroups: the root limited to allocatable, BestEffort at the minimum
    /// weight, Burstable weighted by the requests of its pods.
    pub fn update_qos_cgroups(&self) {
        use podlet_runtime::cgroup::{apply, Limits};
        // One update at a time: two workers racing here could leave the limits of the older
        // snapshot of admitted pods written last.
        let _one = self.qos_update.lock().expect("qos update lock");
        let (cpu, mem) = self.allocatable();
        let admitted = self.admitted.lock().expect("admitted lock").clone();
        let sum = |qos: QosClass, cpu: bool| -> i64 {
            admitted
                .values()
                .filter(|(q, _, _)| *q == qos)
                .map(|(_, c, m)| if cpu { *c } else { *m })
                .sum()
        };
        let burstable = sum(QosClass::Burstable, true);
        // --qos-reserved: lower classes may not use what higher classes requested.
        let reserve = |classes: &[QosClass]| {
            self.cfg.qos_reserved_memory.map(|f| {
                let requested: i64 = classes.iter().map(|q| sum(*q, false)).sum();
                (mem - (requested as f64 * f) as i64).max(0)
            })
        };
        let root = &self.cfg.cgroup_root;
        let sets = [
            (
                root.clone(),
                Limits {
                    cpu_shares: Some(resources::milli_cpu_to_shares(cpu)),
                    memory: Some(mem),
                    ..Default::default()
                },
            ),
            (
                format!("{root}/besteffort"),
                Limits {
                    cpu_shares: Some(2),
                    memory: reserve(&[QosClass::Guaranteed, QosClass::Burstable]),
                    ..Default::default()
                },
            ),
            (
                format!("{root}/burstable"),
                Limits {
                    cpu_shares: Some(resources::milli_cpu_to_shares(burstable)),
                    memory: reserve(&[QosClass::Guaranteed]),
                    ..Default::default()
                },
            ),
        ];
        for (path, limits) in sets {
            if let Err(e) = apply(&self.cgroups, &path, &limits) {
                tracing::warn!("cgroup {path}: {e}");
            }
        }
    }

    /// Admits a pod if its requests fit next to the admitted ones; else the kubelet's reason
    /// (`OutOfcpu`, `OutOfmemory`) and message.
    pub fn admit(
        &self,
        uid: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        qos: QosClass,
    ) -> Result<(), (String, String)> {
        let cpu = resources::pod_request(spec, "cpu");
        let mem = resources::pod_request(spec, "memory");
        let mut admitted = self.admitted.lock().expect("admitted lock");
        if admitted.contains_key(uid) {
            return Ok(());
        }
        let (cap_cpu, cap_mem) = self.allocatable();
        let used_cpu: i64 = admitted.values().map(|v| v.1).sum();
        let used_mem: i64 = admitted.values().map(|v| v.2).sum();
        for (name, req, used, cap) in [
            ("cpu", cpu, used_cpu, cap_cpu),
            ("memory", mem, used_mem, cap_mem),
        ] {
            if req > 0 && used + req > cap {
                let reason = format!("OutOf{name}");
                return Err((
                    reason,
                    format!("Pod was rejected: Node didn't have enough resource: {name}, requested: {req}, used: {used}, capacity: {cap}"),
                ));
            }
        }
        admitted.insert(uid.to_string(), (qos, cpu, mem));
        Ok(())
    }

    /// The node's labels: the well-known ones and `--node-labels`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let arch = std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64");
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

    /// The kubelet's placement checks at admission (the scheduler may have raced a label or
    /// taint change): node selector and required node affinity, then NoExecute taints the pod
    /// does not tolerate (not for static pods).
    pub fn placement(&self, pod: &Pod) -> Result<(), (String, String)> {
        let spec = pod.spec.clone().unwrap_or_default();
        let labels = self.labels();
        let node = NodeFacts {
            name: &self.cfg.node_name,
            labels: &labels,
        };
        if !required_node_affinity_matches(&spec, node) {
            return Err((
                "NodeAffinity".into(),
                "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
                    .into(),
            ));
        }
        let is_static = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.source"))
            .is_some_and(|s| s == "file");
        if !is_static {
            let tolerations = spec.tolerations.unwrap_or_default();
            if let Some(t) =
                find_untolerated(&self.cfg.taints, &tolerations, |t| t.effect == "NoExecute")
            {
                return Err((
                    "TaintToleration".into(),
                    format!(
                        "Predicate TaintToleration failed: node(s) had untolerated taint {{{}: {}}}",
                        t.key,
                        t.value.clone().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Records a pod that already runs (adopted after a restart), whether or not it fits now.
    pub fn admit_running(
        &self,
        uid: &str,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        qos: QosClass,
    ) {
        let cpu = resources::pod_request(spec, "cpu");
        let mem = resources::pod_request(spec, "memory");
        self.admitted
            .lock()
            .expect("admitted lock")
            .insert(uid.to_string(), (qos, cpu, mem));
    }

    pub fn release(&self, uid: &str) {
        self.admitted.lock().expect("admitted lock").remove(uid);
    }

    pub fn set_conditions(&self, now: &BTreeMap<&'static str, bool>) {
        let mut c = self.conditions.write().expect("conditions lock");
        for (k, v) in now {
            match c.get(k) {
                Some((old, _)) if old == v => {}
                _ => {
                    if *v {
                        tracing::warn!(condition = k, "node condition is now True");
                    }
                    c.insert(k, (*v, jiff::Timestamp::now()));
                }
            }
        }
    }

    pub fn eviction_in_progress(&self) -> bool {
        !self.evictions.lock().expect("evictions lock").is_empty()
    }

    /// The pod to evict next: pods using more memory than they requested first, then lower
    /// priority, then the most memory above the request.
    pub fn eviction_candidate(&self) -> Option<(String, String)> {
        let admitted = self.admitted.lock().expect("admitted lock").clone();
        let pods = self.pods.read().expect("pods lock");
        let mut ranked: Vec<(bool, i32, i64, String, String)> = admitted
            .iter()
            .filter_map(|(uid, (qos, _, mem_req))| {
                let pod = pods.get(uid)?;
                let usage = podlet_runtime::cgroup::memory_usage(
                    &self.cgroups,
                    &pod_cgroup(&self.cfg.cgroup_root, *qos, uid),
                )
                .unwrap_or(0) as i64;
                let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                let name = format!(
                    "{}/{}",
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default()
                );
                Some((
                    usage > *mem_req,
                    priority,
                    usage - mem_req,
                    uid.clone(),
                    name,
                ))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
        ranked.into_iter().next().map(|r| (r.3, r.4))
    }

    pub fn evict(&self, uid: &str, message: String) {
        self.evictions
            .lock()
            .expect("evictions lock")
            .insert(uid.to_string(), message);
        self.eviction_tx.send_modify(|g| *g += 1);
    }

    pub fn eviction_for(&self, uid: &str) -> Option<String> {
        self.evictions
            .lock()
            .expect("evictions lock")
            .get(uid)
            .cloned()
    }

    pub fn eviction_done(&self, uid: &str) {
        self.evictions.lock().expect("evictions lock").remove(uid);
    }

    /// The node as a v1 Node: capacity, allocatable, conditions, addresses and node info.
    pub fn node_object(&self) -> k8s_openapi::api::core::v1::Node {
        use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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
        let conds = self.conditions.read().expect("conditions lock");
        let mut conditions: Vec<NodeCondition> = ["MemoryPressure", "DiskPressure", "PIDPressure"]
            .iter()
            .map(|t| {
                let (on, since) = conds.get(t).copied().unwrap_or((false, self.started));
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
        let mut n = k8s_openapi::api::core::v1::Node::default();
        n.metadata.name = Some(self.cfg.node_name.clone());
        n.status = Some(NodeStatus {
            capacity: Some(res(self.cpu_capacity, self.memory_capacity as i64)),
            allocatable: Some(res(acpu, amem)),
            conditions: Some(conditions),
            addresses: Some(addresses),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH
                    .replace("x86_64", "amd64")
                    .replace("aarch64", "arm64"),
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

    /// The pod named `namespace/name` as the node runs it, with its live status.
    pub fn pod_named(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.pods
            .read()
            .expect("pods lock")
            .values()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }

    pub fn publish(&self, uid: &str, pod: Pod) {
        self.pods
            .write()
            .expect("pods lock")
            .insert(uid.to_string(), pod);
        self.status_tx.send_modify(|g| *g += 1);
    }

    pub fn forget(&self, uid: &str) {
        self.pods.write().expect("pods lock").remove(uid);
        self.status_tx.send_modify(|g| *g += 1);
    }

    /// Records a Kubernetes event about a pod (posted to the apiserver when there is one).
    pub fn event(&self, pod: &Pod, type_: &str, reason: &str, message: String) {
        if let Some(tx) = self.events.get() {
            let _ = tx.send(PodEvent {
                pod: pod.clone(),
                type_: type_.to_string(),
                reason: reason.to_string(),
                message,
            });
        }
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// A pod's cgroup below the root, by QoS class (the kubelet's layout).
pub fn pod_cgroup(root: &str, qos: QosClass, uid: &str) -> String {
    match qos.cgroup_dir() {
        Some(d) => format!("/{root}/{d}/pod{uid}"),
        None => format!("/{root}/pod{uid}"),
    }
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

struct Handle {
    stop: watch::Sender<bool>,
    /// The latest spec of the pod (only resources can change for the same UID).
    pod: watch::Sender<Pod>,
    task: tokio::task::JoinHandle<()>,
}

/// UIDs of the pods the runtime holds on disk (from a previous run of the agent too).
fn uids_on_disk(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.cfg.run_dir.join("pods"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The pod a sandbox on disk was made for; a sandbox whose spec was never written gets a
/// minimal pod, enough to tear it down.
fn pod_on_disk(node: &Node, uid: &str) -> Pod {
    std::fs::read(node.cfg.pod_run_dir(uid).join(worker::POD_FILE))
        .ok()
        .and_then(|d| serde_json::from_slice::<Pod>(&d).ok())
        .unwrap_or_else(|| {
            let mut p = Pod::default();
            p.metadata.uid = Some(uid.to_string());
            p.metadata.name = Some(uid.to_string());
            p.metadata.namespace = Some("default".into());
            p
        })
}

/// The network namespace of a pod's running sandbox (its pause process's).
pub fn sandbox_netns(node: &Node, uid: &str) -> Option<PathBuf> {
    let st = podlet_runtime::shim::read_state(&node.cfg.pod_run_dir(uid))?;
    if st.pause_exited || st.pause_pid <= 0 {
        return None;
    }
    let p = PathBuf::from(format!("/proc/{}/ns/net", st.pause_pid));
    p.exists().then_some(p)
}

/// The pods the runtime holds on disk, with the spec each was made from.
pub fn pods_on_disk(node: &Node) -> Vec<(String, Pod)> {
    uids_on_disk(node)
        .into_iter()
        .map(|uid| {
            let pod = pod_on_disk(node, &uid);
            (uid, pod)
        })
        .collect()
}

/// Releases network attachments and user namespace ranges of sandboxes that no longer exist
/// (after a crash or reboot).
pub fn network_gc(node: &Node) {
    let live = uids_on_disk(node);
    node.userns.retain(&live);
    if let Err(e) = node.network.gc(&live) {
        tracing::warn!("CNI GC: {e}");
    }
}

/// Runs until the process ends: starts, keeps and stops pod workers as `desired` changes.
pub async fn run_manager(node: Arc<Node>, mut desired: watch::Receiver<Desired>) {
    let mut workers: HashMap<String, Handle> = HashMap::new();
    loop {
        let want = desired.borrow_and_update().clone();
        workers.retain(|_, h| !h.task.is_finished());
        for (uid, sp) in &want {
            // A pod being deleted from the apiserver: its worker gets the deletion's grace
            // period, then stops.
            if sp.pod.metadata.deletion_timestamp.is_some() {
                match workers.get(uid) {
                    Some(h) => {
                        send_if_changed(&h.pod, &sp.pod);
                        let _ = h.stop.send(true);
                    }
                    None if node.cfg.pod_run_dir(uid).exists() => {
                        tracing::info!(pod = %uid, "tearing down a pod being deleted");
                        workers.insert(uid.clone(), spawn(node.clone(), sp.pod.clone(), true));
                    }
                    None => {}
                }
                continue;
            }
            match workers.get(uid) {
                Some(h) => {
                    send_if_changed(&h.pod, &sp.pod);
                }
                None => {
                    workers.insert(uid.clone(), spawn(node.clone(), sp.pod.clone(), false));
                }
            }
        }
        for (uid, h) in &workers {
            if !want.contains_key(uid) {
                let _ = h.stop.send(true);
            }
        }
        // Only sandboxes nobody handles are read from disk.
        for uid in uids_on_disk(&node) {
            if !want.contains_key(&uid) && !workers.contains_key(&uid) {
                tracing::info!(pod = %uid, "tearing down a pod that is no longer wanted");
                let pod = pod_on_disk(&node, &uid);
                workers.insert(uid, spawn(node.clone(), pod, true));
            }
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

fn spawn(node: Arc<Node>, pod: Pod, stopping: bool) -> Handle {
    let (stop, rx) = watch::channel(stopping);
    let (pod_tx, pod_rx) = watch::channel(pod.clone());
    let task = tokio::spawn(worker::run(node, pod, rx, pod_rx));
    Handle {
        stop,
        pod: pod_tx,
        task,
    }
}
