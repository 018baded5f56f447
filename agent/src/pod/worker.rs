//! One pod's worker: level-triggered, it reads the shim's state, starts what should run (with
//! Kubernetes' restart back-off), publishes the status, and sleeps until the shim reports a
//! change, a back-off expires, or the pod is to be stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podlet_runtime::image::{make_writable_and_remove, ImageRecord};
use podlet_runtime::shim::{self, ContainerRecord, Request, SandboxConfig, ShimError, ShimState};
use podlet_runtime::spec::{BindMount, ContainerConfig, Ns};
use podlet_runtime::{cgroup, rootfs};
use tokio::sync::watch;

use super::status::{self, ContainerView, Waiting};
use super::translate::{self, PodFields, Qos};
use super::{pod_cgroup, Node};

pub const POD_FILE: &str = "pod.json";
const SHIM_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Backoff {
    /// Restarts since the container last ran long enough to reset the back-off.
    crashes: u32,
    /// The attempt whose exit has been accounted for.
    counted: Option<u32>,
    /// Failures to create/start, for pull and config errors.
    failures: u32,
    not_before: Option<Instant>,
}

fn backoff_delay(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(10)
        .saturating_mul(1 << (n - 1).min(6))
        .min(MAX_BACKOFF)
}

struct Worker {
    node: Arc<Node>,
    pod: Pod,
    spec: PodSpec,
    uid: String,
    name: String,
    namespace: String,
    qos: Qos,
    run_dir: PathBuf,
    data_dir: PathBuf,
    log_dir: PathBuf,
    pod_cgroup: String,
    shim: Option<ShimState>,
    waiting: HashMap<String, Waiting>,
    backoff: HashMap<String, Backoff>,
    image_ids: HashMap<String, String>,
    sandbox_error: Option<String>,
    sandbox_failures: u32,
    sandbox_not_before: Option<Instant>,
    conditions: Vec<PodCondition>,
    start_time: Option<Time>,
    /// Containers of a sandbox that died, so their successors continue the restart count.
    lost: HashMap<String, ContainerRecord>,
    /// The pod's addresses from CNI.
    pod_ips: Vec<std::net::IpAddr>,
    /// Set when the node refused the pod (reason, message): it never starts.
    rejected: Option<(String, String)>,
    /// `Infeasible` when a resize was refused (it would change the QoS class).
    resize: Option<String>,
}

pub async fn run(
    node: Arc<Node>,
    pod: Pod,
    stop: watch::Receiver<bool>,
    updates: watch::Receiver<Pod>,
) {
    use tracing::Instrument;
    let w = Worker::new(node, pod);
    let span =
        tracing::info_span!("pod", pod = %format!("{}/{}", w.namespace, w.name), uid = %w.uid);
    drive(w, stop, updates).instrument(span).await
}

async fn drive(mut w: Worker, mut stop: watch::Receiver<bool>, mut updates: watch::Receiver<Pod>) {
    let mut evictions = w.node.eviction_tx.subscribe();
    loop {
        if *stop.borrow() {
            w.teardown().await;
            return;
        }
        if let Some(message) = w.node.eviction_for(&w.uid) {
            w.evict(message).await;
        }
        let next = w.sync().await;
        let seq = w.shim.as_ref().map(|s| s.seq);
        tokio::select! {
            r = stop.changed() => if r.is_err() { return },
            _ = evictions.changed() => {}
            r = updates.changed() => if r.is_ok() {
                let pod = updates.borrow_and_update().clone();
                w.resize(pod).await;
            },
            _ = w.wait(seq, next) => {}
        }
    }
}

async fn call(dir: &Path, req: Request) -> Result<ShimState, ShimError> {
    let dir = dir.to_path_buf();
    let timeout = match &req {
        Request::Wait { timeout_ms, .. } => Duration::from_millis(timeout_ms + 5000),
        _ => SHIM_TIMEOUT,
    };
    tokio::task::spawn_blocking(move || shim::call(&dir, &req, timeout))
        .await
        .unwrap_or_else(|e| Err(ShimError::Protocol(e.to_string())))
}

const HOSTS_HEADER: &str = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";

impl Worker {
    fn new(node: Arc<Node>, pod: Pod) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let spec = pod.spec.clone().unwrap_or_default();
        let qos = translate::qos_class(&spec);
        let cfg = &node.cfg;
        let start_time = std::fs::metadata(cfg.pod_run_dir(&uid).join(POD_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| jiff::Timestamp::try_from(t).ok())
            .map(|t| Time(t.round(jiff::Unit::Second).unwrap_or(t)));
        Self {
            run_dir: cfg.pod_run_dir(&uid),
            data_dir: cfg.pod_data_dir(&uid),
            log_dir: cfg.log_dir.join(format!("{namespace}_{name}_{uid}")),
            pod_cgroup: pod_cgroup(&cfg.cgroup_root, qos, &uid),
            node,
            pod,
            spec,
            uid,
            name,
            namespace,
            qos,
            shim: None,
            waiting: HashMap::new(),
            backoff: HashMap::new(),
            image_ids: HashMap::new(),
            sandbox_error: None,
            sandbox_failures: 0,
            sandbox_not_before: None,
            conditions: Vec::new(),
            start_time,
            lost: HashMap::new(),
            pod_ips: Vec::new(),
            rejected: None,
            resize: None,
        }
    }

    fn hostname(&self) -> String {
        let h = self
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.name.clone());
        let mut h: String = h.chars().take(63).collect();
        while h.ends_with('-') || h.ends_with('.') {
            h.pop();
        }
        h
    }

    fn restart_policy(&self) -> &str {
        self.spec.restart_policy.as_deref().unwrap_or("Always")
    }

    fn host_ip(&self) -> String {
        self.node.host_ip.map(|i| i.to_string()).unwrap_or_default()
    }

    async fn wait(&self, seq: Option<u64>, max: Duration) {
        let Some(seq) = seq else {
            tokio::time::sleep(max).await;
            return;
        };
        let ms = max.as_millis().clamp(1, 10_000) as u64;
        let started = Instant::now();
        if call(
            &self.run_dir,
            Request::Wait {
                after: seq,
                timeout_ms: ms,
            },
        )
        .await
        .is_err()
        {
            // The shim is gone: look again soon, not in a tight loop.
            tokio::time::sleep(Duration::from_millis(200).saturating_sub(started.elapsed())).await;
        }
    }

    // ----- sandbox -----

    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        match call(&self.run_dir, Request::State).await {
            Ok(s) if !s.pause_exited => {
                let adopting = self.shim.is_none();
                self.shim = Some(s);
                if adopting {
                    self.adopt().await;
                }
                if self.pod_ips.is_empty() && !self.spec.host_network.unwrap_or(false) {
                    self.pod_ips = self.node.network.cached_ips(&self.uid);
                }
                return Ok(());
            }
            Ok(s) => {
                tracing::warn!("pod sandbox died; recreating it");
                self.lost.extend(s.containers);
                let _ = call(&self.run_dir, Request::Shutdown).await;
                self.cleanup_runtime().await;
            }
            Err(_) if self.run_dir.join(shim::STATE_FILE).exists() => {
                tracing::warn!("pod shim is gone; recreating the sandbox");
                if let Some(s) = shim::read_state(&self.run_dir) {
                    self.lost.extend(s.containers);
                }
                self.cleanup_runtime().await;
            }
            Err(_) => {}
        }
        self.shim = None;
        if let Some(nb) = self.sandbox_not_before {
            if Instant::now() < nb {
                return Err(self.sandbox_error.clone().unwrap_or_default());
            }
        }
        match self.create_sandbox().await {
            Ok(()) => {
                self.sandbox_error = None;
                self.sandbox_failures = 0;
                self.sandbox_not_before = None;
                Ok(())
            }
            Err(e) => {
                self.sandbox_failures += 1;
                self.sandbox_not_before = Some(
                    Instant::now()
                        + backoff_delay(self.sandbox_failures).min(Duration::from_secs(60)),
                );
                self.cleanup_runtime().await;
                tracing::error!("creating the pod sandbox: {e}");
                Err(e)
            }
        }
    }

    fn write_etc_files(&self) -> std::io::Result<()> {
        let etc = self.data_dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let hostname = self.hostname();
        let host_network = self.spec.host_network.unwrap_or(false);
        let hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| HOSTS_HEADER.to_string())
        } else {
            let mut h = HOSTS_HEADER.to_string();
            for ip in &self.pod_ips {
                h.push_str(&format!("{ip}\t{hostname}\n"));
            }
            for a in self.spec.host_aliases.iter().flatten() {
                h.push_str(&format!(
                    "\n# Entries added by HostAliases.\n{}\t{}\n",
                    a.ip,
                    a.hostnames.clone().unwrap_or_default().join("\t")
                ));
            }
            h
        };
        std::fs::write(etc.join("hosts"), hosts)?;
        std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        std::fs::write(etc.join("resolv.conf"), resolv)
    }

    async fn create_sandbox(&mut self) -> Result<(), String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir_all(&self.run_dir).map_err(|e| io("run dir", e))?;
        std::fs::create_dir_all(&self.data_dir).map_err(|e| io("data dir", e))?;
        let pod_json = serde_json::to_vec(&self.pod).map_err(|e| e.to_string())?;
        std::fs::write(self.run_dir.join(POD_FILE), pod_json).map_err(|e| io("pod file", e))?;
        if self.start_time.is_none() {
            self.start_time = Some(status::now());
        }
        self.write_etc_files().map_err(|e| io("etc files", e))?;
        let host_network = self.spec.host_network.unwrap_or(false);
        let sandbox = SandboxConfig {
            hostname: self.hostname(),
            new_net: !host_network,
            new_ipc: !self.spec.host_ipc.unwrap_or(false),
            new_uts: !host_network,
            new_pid: self.spec.share_process_namespace.unwrap_or(false)
                && !self.spec.host_pid.unwrap_or(false),
            pause_cgroup: format!("{}/pause", self.pod_cgroup),
            state_root: self.node.cfg.container_state_root(),
            shim_oom_score_adj: Some((-999).max(self.node.oom_floor)),
        };
        std::fs::write(
            self.run_dir.join(shim::SANDBOX_FILE),
            serde_json::to_vec(&sandbox).map_err(|e| e.to_string())?,
        )
        .map_err(|e| io("sandbox file", e))?;
        let limits =
            super::resources::pod_limits(&self.spec, self.qos, self.node.cfg.pod_pids_limit);
        podlet_runtime::cgroup::apply(&self.node.cgroups, &self.pod_cgroup, &limits)
            .map_err(|e| format!("pod cgroup {}: {e}", self.pod_cgroup))?;
        self.node.update_qos_cgroups();
        let out = tokio::process::Command::new(&self.node.exe)
            .arg("shim")
            .arg("--pod-dir")
            .arg(&self.run_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .map_err(|e| format!("starting the shim: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let s = call(&self.run_dir, Request::State)
            .await
            .map_err(|e| e.to_string())?;
        let pause = s.pause_pid;
        self.shim = Some(s);
        if !host_network {
            let node = self.node.clone();
            let (uid, spec) = (self.uid.clone(), self.spec.clone());
            let netns = format!("/proc/{pause}/ns/net");
            let ips = tokio::task::spawn_blocking(move || node.network.setup(&uid, &netns, &spec))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("failed to set up the pod network: {e}"))?;
            self.pod_ips = ips;
            // /etc/hosts names the pod's own address now that it has one.
            self.write_etc_files().map_err(|e| io("etc files", e))?;
        }
        tracing::info!(pause, ips = ?self.pod_ips, "sandbox created");
        Ok(())
    }

    // ----- containers -----

    async fn sync(&mut self) -> Duration {
        let mut wake = Duration::from_secs(10);
        if self.rejected.is_some() {
            self.publish();
            return Duration::from_secs(3600);
        }
        if self.shim.is_none() && !self.run_dir.join(shim::STATE_FILE).exists() {
            let all = self
                .spec
                .init_containers
                .iter()
                .flatten()
                .chain(self.spec.containers.iter());
            let refused = all
                .filter_map(|c| super::security::apparmor(&self.pod, c, self.node.apparmor).err())
                .next()
                .or_else(|| {
                    super::security::sysctls(&self.pod, &self.node.cfg.allowed_unsafe_sysctls).err()
                });
            if let Some(r) =
                refused.or_else(|| self.node.admit(&self.uid, &self.spec, self.qos).err())
            {
                tracing::warn!(reason = %r.0, "{}", r.1);
                self.rejected = Some(r);
                self.publish();
                return Duration::from_secs(3600);
            }
        }
        if let Err(e) = self.ensure_sandbox().await {
            self.sandbox_error = Some(e);
            self.publish();
            return self
                .sandbox_not_before
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(wake)
                .max(Duration::from_millis(100));
        }
        let policy = self.restart_policy().to_string();
        let inits = self.spec.init_containers.clone().unwrap_or_default();
        let mut init_done = true;
        for (i, c) in inits.iter().enumerate() {
            let rec = self.record(&c.name);
            match rec {
                Some(r) if r.running() => {
                    self.waiting.remove(&c.name);
                    init_done = false;
                    break;
                }
                Some(r) if r.exit_code == Some(0) => {
                    self.waiting.remove(&c.name);
                    continue;
                }
                Some(r) => {
                    init_done = false;
                    if policy != "Never" {
                        if let Some(d) = self
                            .try_start(c, &format!("spec.initContainers[{i}]"), Some(&r))
                            .await
                        {
                            wake = wake.min(d);
                        }
                    }
                    break;
                }
                None => {
                    init_done = false;
                    if let Some(d) = self
                        .try_start(c, &format!("spec.initContainers[{i}]"), None)
                        .await
                    {
                        wake = wake.min(d);
                    }
                    break;
                }
            }
        }
        if init_done {
            for (i, c) in self.spec.containers.clone().iter().enumerate() {
                let field = format!("spec.containers[{i}]");
                match self.record(&c.name) {
                    Some(r) if r.running() => {
                        self.waiting.remove(&c.name);
                    }
                    Some(r) => {
                        let code = r.exit_code.unwrap_or(0);
                        let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                        if restart {
                            if let Some(d) = self.try_start(c, &field, Some(&r)).await {
                                wake = wake.min(d);
                            }
                        } else {
                            self.waiting.remove(&c.name);
                        }
                    }
                    None => {
                        if let Some(d) = self.try_start(c, &field, None).await {
                            wake = wake.min(d);
                        }
                    }
                }
            }
        }
        self.publish();
        wake
    }

    fn record(&self, name: &str) -> Option<ContainerRecord> {
        self.shim
            .as_ref()
            .and_then(|s| s.containers.get(name))
            .cloned()
    }

    /// Starts a container unless it is backing off; returns how long until it should be tried.
    async fn try_start(
        &mut self,
        c: &Container,
        field: &str,
        prev: Option<&ContainerRecord>,
    ) -> Option<Duration> {
        let now = Instant::now();
        let pod_ref = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let b = self.backoff.entry(c.name.clone()).or_default();
        if let Some(r) = prev {
            if b.counted != Some(r.attempt) {
                b.counted = Some(r.attempt);
                let ran = match (status::time(&r.started_at), status::time(&r.finished_at)) {
                    (Some(s), Some(f)) => f.0.duration_since(s.0).as_secs(),
                    _ => 0,
                };
                if ran as u64 >= BACKOFF_RESET.as_secs() {
                    b.crashes = 0;
                }
                let delay = backoff_delay(b.crashes);
                b.crashes += 1;
                b.not_before = (delay > Duration::ZERO).then(|| now + delay);
            }
        }
        if let Some(nb) = b.not_before {
            if now < nb {
                let left = nb - now;
                let w = match self.waiting.get(&c.name) {
                    Some(w) if w.reason == "ErrImagePull" || w.reason == "ImagePullBackOff" => {
                        Waiting {
                            reason: "ImagePullBackOff".into(),
                            message: Some(format!(
                                "Back-off pulling image {:?}",
                                c.image.clone().unwrap_or_default()
                            )),
                        }
                    }
                    Some(w)
                        if prev.is_none() || w.reason != "CrashLoopBackOff" && b.failures > 0 =>
                    {
                        w.clone()
                    }
                    _ => Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(format!(
                            "back-off {}s restarting failed container={} pod={pod_ref}",
                            backoff_delay(b.crashes.saturating_sub(1)).as_secs().max(10),
                            c.name
                        )),
                    },
                };
                self.waiting.insert(c.name.clone(), w);
                return Some(left);
            }
        }
        // Attempts keep counting across a re-created sandbox, as the kubelet's restartCount does.
        let attempt = prev
            .or_else(|| self.lost.get(&c.name))
            .map(|r| r.attempt + 1)
            .unwrap_or(0);
        match self.start_container(c, field, attempt).await {
            Ok(()) => {
                let b = self.backoff.entry(c.name.clone()).or_default();
                b.failures = 0;
                b.not_before = None;
                self.waiting.remove(&c.name);
                None
            }
            Err(w) => {
                tracing::warn!(container = %c.name, reason = %w.reason, "{}", w.message.clone().unwrap_or_default());
                let b = self.backoff.entry(c.name.clone()).or_default();
                b.failures += 1;
                let delay = backoff_delay(b.failures);
                b.not_before = Some(now + delay);
                self.waiting.insert(c.name.clone(), w);
                Some(delay)
            }
        }
    }

    fn instance_dir(&self, name: &str, attempt: u32) -> PathBuf {
        self.data_dir
            .join("containers")
            .join(name)
            .join(attempt.to_string())
    }

    fn remove_instance(&self, dir: &Path) {
        for m in rootfs::mounts_below(&self.node.cfg.mountinfo, dir) {
            let _ = rootfs::unmount(&m);
        }
        let _ = make_writable_and_remove(dir);
    }

    async fn start_container(
        &mut self,
        c: &Container,
        field: &str,
        attempt: u32,
    ) -> Result<(), Waiting> {
        let fail = |reason: &str, message: String| Waiting {
            reason: reason.into(),
            message: Some(message),
        };
        let image_name = c.image.clone().unwrap_or_default();
        let image = self.node.images.resolve(&image_name).map_err(|_| {
            fail(
                "ErrImagePull",
                format!("image {image_name:?} is not present on this node; import it with `podlet image import`"),
            )
        })?;
        let inst = self.instance_dir(&c.name, attempt);
        if inst.exists() {
            self.remove_instance(&inst);
        }
        let root = inst.join("rootfs");
        let lowers = self
            .node
            .images
            .lowerdirs(&image)
            .map_err(|e| fail("CreateContainerError", e.to_string()))?;
        rootfs::mount_overlay(&lowers, &inst.join("upper"), &inst.join("work"), &root)
            .map_err(|e| fail("CreateContainerError", e.to_string()))?;
        let id = hex::encode(rand_bytes());
        let result = async {
            let config = self
                .container_config(c, field, &image, &root, &inst, &id)
                .map_err(|e| fail("CreateContainerConfigError", e))?;
            podlet_runtime::spec::write_bundle(&inst, &config)
                .map_err(|e| fail("CreateContainerError", e.to_string()))?;
            let log_path = self.log_dir.join(&c.name).join(format!("{attempt}.log"));
            let req = Request::Start {
                name: c.name.clone(),
                id: id.clone(),
                bundle: inst.clone(),
                log_path,
                attempt,
            };
            call(&self.run_dir, req).await.map_err(|e| {
                let msg = e.to_string();
                let reason = if msg.contains("starting container") {
                    "RunContainerError"
                } else {
                    "CreateContainerError"
                };
                fail(reason, msg)
            })
        }
        .await;
        match result {
            Ok(state) => {
                self.shim = Some(state);
                self.image_ids.insert(c.name.clone(), image.image_ref());
                tracing::info!(container = %c.name, attempt, "container started");
                // Earlier instances are dead; their logs stay in the log directory.
                for old in 0..attempt {
                    let d = self.instance_dir(&c.name, old);
                    if d.exists() {
                        self.remove_instance(&d);
                    }
                }
                Ok(())
            }
            Err(w) => {
                self.remove_instance(&inst);
                Err(w)
            }
        }
    }

    fn volume_mounts(&self, c: &Container, field: &str) -> Result<Vec<BindMount>, String> {
        let mut out = Vec::new();
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let vol = self
                .spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .ok_or_else(|| {
                    format!("{field}.volumeMounts[{j}].name: Not found: {:?}", m.name)
                })?;
            let mut source = if vol.empty_dir.is_some() {
                let d = self.data_dir.join("volumes/empty-dir").join(&vol.name);
                std::fs::create_dir_all(&d).map_err(|e| format!("volume {:?}: {e}", vol.name))?;
                use std::os::unix::fs::PermissionsExt;
                // fsGroup: the volume belongs to the group, setgid so new files do too.
                let fs_group = self
                    .spec
                    .security_context
                    .as_ref()
                    .and_then(|s| s.fs_group)
                    .and_then(|g| u32::try_from(g).ok());
                let mode = if let Some(g) = fs_group {
                    std::os::unix::fs::chown(&d, None, Some(g))
                        .map_err(|e| format!("volume {:?}: {e}", vol.name))?;
                    0o2777
                } else {
                    0o777
                };
                let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode));
                d
            } else if let Some(hp) = &vol.host_path {
                let p = PathBuf::from(&hp.path);
                match hp.type_.as_deref().unwrap_or("") {
                    "DirectoryOrCreate" => std::fs::create_dir_all(&p)
                        .map_err(|e| format!("hostPath {:?}: {e}", hp.path))?,
                    "Directory" if !p.is_dir() => {
                        return Err(format!(
                            "hostPath type check failed: {} is not a directory",
                            hp.path
                        ))
                    }
                    "File" if !p.is_file() => {
                        return Err(format!(
                            "hostPath type check failed: {} is not a file",
                            hp.path
                        ))
                    }
                    "FileOrCreate" if !p.exists() => std::fs::write(&p, b"")
                        .map_err(|e| format!("hostPath {:?}: {e}", hp.path))?,
                    _ => {}
                }
                p
            } else {
                return Err(format!(
                    "volume {:?}: only emptyDir and hostPath volumes can be used without an apiserver",
                    vol.name
                ));
            };
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                let sp = Path::new(sub);
                if sp.is_absolute()
                    || sp
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(format!(
                        "{field}.volumeMounts[{j}].subPath: Invalid value: {sub:?}"
                    ));
                }
                source = source.join(sp);
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .map_err(|e| format!("subPath {sub:?}: {e}"))?;
                }
            }
            out.push(BindMount {
                source,
                destination: m.mount_path.clone(),
                readonly: m.read_only.unwrap_or(false),
            });
        }
        Ok(out)
    }

    fn container_config(
        &self,
        c: &Container,
        field: &str,
        image: &ImageRecord,
        root: &Path,
        inst: &Path,
        id: &str,
    ) -> Result<ContainerConfig, String> {
        let sc = c.security_context.as_ref();
        let pod_sc = self.spec.security_context.as_ref();
        let hostname = self.hostname();
        let host_ip = self.host_ip();
        let host_network = self.spec.host_network.unwrap_or(false);
        let pod_ip = if host_network {
            host_ip.clone()
        } else {
            self.pod_ips
                .first()
                .map(|i| i.to_string())
                .unwrap_or_default()
        };
        let fields = PodFields {
            name: &self.name,
            namespace: &self.namespace,
            uid: &self.uid,
            node_name: &self.node.cfg.node_name,
            host_ip: &host_ip,
            pod_ip: &pod_ip,
            service_account: self
                .spec
                .service_account_name
                .as_deref()
                .unwrap_or("default"),
        };
        let (env, env_map) = translate::environment(c, &image.config, &hostname, &fields, field)?;
        let args = translate::argv(c, &image.config, &env_map);
        if args.is_empty() {
            return Err(format!(
                "{field}: no command specified: the image has no ENTRYPOINT or CMD"
            ));
        }
        let (uid, gid, additional_gids) =
            translate::user(root, image.config.user.as_deref(), pod_sc, sc)?;
        let pause = self.shim.as_ref().map(|s| s.pause_pid).unwrap_or(0);
        let join = |kind: &str| Ns::Join(PathBuf::from(format!("/proc/{pause}/ns/{kind}")));
        let etc = self.data_dir.join("etc");
        let mut mounts = vec![
            BindMount {
                source: etc.join("hosts"),
                destination: "/etc/hosts".into(),
                readonly: false,
            },
            BindMount {
                source: etc.join("hostname"),
                destination: "/etc/hostname".into(),
                readonly: false,
            },
            BindMount {
                source: etc.join("resolv.conf"),
                destination: "/etc/resolv.conf".into(),
                readonly: false,
            },
        ];
        let term = inst.join("termination-log");
        std::fs::write(&term, b"").map_err(|e| format!("termination log: {e}"))?;
        mounts.push(BindMount {
            source: term,
            destination: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
            readonly: false,
        });
        mounts.extend(self.volume_mounts(c, field)?);
        let cwd = c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or_else(|| image.config.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        let limits = super::resources::container_limits(c);
        let capabilities = translate::capabilities(sc);
        let seccomp = super::security::seccomp(
            &self.pod,
            c,
            &capabilities,
            &self.node.cfg.root_dir.join("seccomp"),
            self.node.cfg.seccomp_default,
        )?;
        let apparmor_profile =
            super::security::apparmor(&self.pod, c, self.node.apparmor).map_err(|e| e.1)?;
        let sysctls = super::security::sysctls(&self.pod, &self.node.cfg.allowed_unsafe_sysctls)
            .map_err(|e| e.1)?;
        let unmasked_proc = sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
        Ok(ContainerConfig {
            args,
            env,
            cwd,
            uid,
            gid,
            additional_gids,
            rootfs: root.to_path_buf(),
            readonly_rootfs: sc
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            net: if host_network { Ns::Host } else { join("net") },
            ipc: if self.spec.host_ipc.unwrap_or(false) {
                Ns::Host
            } else {
                join("ipc")
            },
            uts: if host_network { Ns::Host } else { join("uts") },
            pid: if self.spec.host_pid.unwrap_or(false) {
                Ns::Host
            } else if self.spec.share_process_namespace.unwrap_or(false) {
                join("pid")
            } else {
                Ns::New
            },
            mounts,
            cgroups_path: format!("{}/{id}", self.pod_cgroup),
            capabilities,
            no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
            privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
            oom_score_adj: Some(
                translate::oom_score_adj(self.qos, c, self.node.memory_capacity)
                    .max(self.node.oom_floor),
            ),
            cpu_shares: limits.cpu_shares,
            cpu_quota: limits.cpu_quota,
            cpu_period: limits.cpu_period,
            memory_limit: limits.memory,
            seccomp,
            apparmor_profile,
            sysctls,
            unmasked_proc,
        })
    }

    // ----- status -----

    fn phase(&self) -> &'static str {
        if self.rejected.is_some() {
            return "Failed";
        }
        let policy = self.restart_policy();
        let recs: Vec<Option<ContainerRecord>> = self
            .spec
            .containers
            .iter()
            .map(|c| self.record(&c.name))
            .collect();
        let init_failed = self.spec.init_containers.iter().flatten().any(|c| {
            self.record(&c.name)
                .is_some_and(|r| !r.running() && r.exit_code.unwrap_or(0) != 0)
        });
        if init_failed && policy == "Never" {
            return "Failed";
        }
        if recs.iter().any(|r| r.is_none()) {
            return "Pending";
        }
        let recs: Vec<ContainerRecord> = recs.into_iter().flatten().collect();
        if recs.iter().any(|r| r.running()) || policy == "Always" {
            return "Running";
        }
        let all_ok = recs.iter().all(|r| r.exit_code == Some(0));
        match (all_ok, policy) {
            (true, _) => "Succeeded",
            (false, "Never") => "Failed",
            _ => "Running",
        }
    }

    fn publish(&mut self) {
        let statuses = |list: &[Container]| -> Vec<_> {
            list.iter()
                .map(|c| {
                    let rec = self.shim.as_ref().and_then(|s| s.containers.get(&c.name));
                    status::container_status(ContainerView {
                        name: &c.name,
                        image: c.image.as_deref().unwrap_or_default(),
                        image_id: self.image_ids.get(&c.name).cloned().or_else(|| {
                            c.image
                                .as_deref()
                                .and_then(|i| self.node.images.resolve(i).ok())
                                .map(|i| i.image_ref())
                        }),
                        record: rec,
                        waiting: self.waiting.get(&c.name),
                        resources: c.resources.clone(),
                    })
                })
                .collect()
        };
        let inits = statuses(self.spec.init_containers.as_deref().unwrap_or(&[]));
        let apps = statuses(&self.spec.containers);
        let sandbox_ok = self.shim.is_some();
        let initialized = inits.iter().all(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        });
        let ready = initialized && apps.iter().all(|s| s.ready);
        let prev = std::mem::take(&mut self.conditions);
        let conditions = vec![
            status::condition(&prev, "PodReadyToStartContainers", sandbox_ok, None),
            status::condition(
                &prev,
                "Initialized",
                initialized,
                Some("ContainersNotInitialized"),
            ),
            status::condition(&prev, "Ready", ready, Some("ContainersNotReady")),
            status::condition(&prev, "ContainersReady", ready, Some("ContainersNotReady")),
            status::condition(&prev, "PodScheduled", true, None),
        ];
        self.conditions = conditions.clone();
        let host_ip = self.node.host_ip.map(|i| i.to_string());
        let host_network = self.spec.host_network.unwrap_or(false);
        let pod_ips: Vec<String> = if host_network {
            host_ip.iter().cloned().collect()
        } else {
            self.pod_ips.iter().map(|i| i.to_string()).collect()
        };
        let mut pod = self.pod.clone();
        pod.status = Some(PodStatus {
            phase: Some(self.phase().into()),
            conditions: Some(conditions),
            message: self
                .rejected
                .as_ref()
                .map(|r| r.1.clone())
                .or_else(|| self.sandbox_error.clone()),
            reason: self.rejected.as_ref().map(|r| r.0.clone()).or_else(|| {
                self.sandbox_error
                    .as_ref()
                    .map(|_| "FailedCreatePodSandBox".to_string())
            }),
            host_ip: host_ip.clone(),
            host_ips: host_ip.clone().map(|ip| vec![HostIP { ip }]),
            pod_ip: pod_ips.first().cloned(),
            pod_ips: (!pod_ips.is_empty())
                .then(|| pod_ips.into_iter().map(|ip| PodIP { ip }).collect()),
            qos_class: Some(self.qos.as_str().into()),
            start_time: self.start_time.clone(),
            resize: self.resize.clone(),
            init_container_statuses: (!inits.is_empty()).then_some(inits),
            container_statuses: Some(apps),
            ..Default::default()
        });
        self.node.publish(&self.uid, pod);
    }

    // ----- teardown -----

    /// Takes over a running sandbox after an agent restart. It was built from the spec recorded
    /// with it; if the manifest's resources changed meanwhile, that is a resize.
    async fn adopt(&mut self) {
        let recorded = std::fs::read(self.run_dir.join(POD_FILE))
            .ok()
            .and_then(|d| serde_json::from_slice::<Pod>(&d).ok());
        let wanted = self.pod.clone();
        if let Some(old) = recorded.filter(|old| old.spec != wanted.spec) {
            self.spec = old.spec.clone().unwrap_or_default();
            self.qos = translate::qos_class(&self.spec);
            self.pod_cgroup = pod_cgroup(&self.node.cfg.cgroup_root, self.qos, &self.uid);
            self.pod = old;
            self.node.admit_running(&self.uid, &self.spec, self.qos);
            Box::pin(self.resize(wanted)).await;
        } else {
            self.node.admit_running(&self.uid, &self.spec, self.qos);
        }
    }

    /// Applies new container resources to the running pod without restarting anything, as
    /// Kubernetes' in-place resize does. A resize that would change the QoS class is refused.
    async fn resize(&mut self, pod: Pod) {
        let spec = pod.spec.clone().unwrap_or_default();
        let qos = translate::qos_class(&spec);
        if qos != self.qos {
            tracing::warn!(
                from = self.qos.as_str(),
                to = qos.as_str(),
                "resize refused: it would change the QoS class"
            );
            self.resize = Some("Infeasible".into());
            self.publish();
            return;
        }
        let pod_limits = super::resources::pod_limits(&spec, qos, self.node.cfg.pod_pids_limit);
        let layout = &self.node.cgroups;
        // Growing needs the pod first, shrinking the containers first: pod, containers, pod.
        let mut result = podlet_runtime::cgroup::apply(layout, &self.pod_cgroup, &pod_limits);
        for c in &spec.containers {
            if let Some(rec) = self.record(&c.name).filter(|r| r.running()) {
                let r = podlet_runtime::cgroup::apply(
                    layout,
                    &rec.cgroup,
                    &super::resources::container_limits(c),
                );
                result = result.and(r);
            }
        }
        result = podlet_runtime::cgroup::apply(layout, &self.pod_cgroup, &pod_limits).and(result);
        match result {
            Ok(()) => {
                tracing::info!("resized in place");
                self.resize = None;
                self.spec = spec;
                self.pod = pod;
                self.node.admit_running(&self.uid, &self.spec, self.qos);
                self.node.update_qos_cgroups();
                if let Ok(data) = serde_json::to_vec(&self.pod) {
                    let _ = std::fs::write(self.run_dir.join(POD_FILE), data);
                }
            }
            Err(e) => {
                tracing::warn!("resize failed: {e}");
                self.resize = Some("Infeasible".into());
            }
        }
        self.publish();
    }

    /// Stops the pod for the eviction manager: containers killed, network and sandbox gone, the
    /// pod kept as Failed with reason Evicted until its manifest goes.
    async fn evict(&mut self, message: String) {
        tracing::warn!("evicted: {message}");
        if let Ok(state) = call(&self.run_dir, Request::State).await {
            if !self.spec.host_network.unwrap_or(false) {
                let node = self.node.clone();
                let uid = self.uid.clone();
                let netns = format!("/proc/{}/ns/net", state.pause_pid);
                let _ =
                    tokio::task::spawn_blocking(move || node.network.teardown(&uid, &netns)).await;
            }
            if let Ok(last) = call(&self.run_dir, Request::Shutdown).await {
                wait_gone(state.shim_pid).await;
                self.cleanup_runtime().await;
                self.shim = Some(last);
            }
        }
        self.rejected = Some(("Evicted".into(), message));
        self.node.release(&self.uid);
        self.node.update_qos_cgroups();
        self.publish();
        self.node.eviction_done(&self.uid);
    }

    async fn teardown(&mut self) {
        let grace = Duration::from_secs(
            self.spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64,
        );
        tracing::info!(grace = grace.as_secs(), "stopping pod");
        if let Ok(state) = call(&self.run_dir, Request::State).await {
            let running: Vec<String> = state
                .containers
                .iter()
                .filter(|(_, r)| r.running())
                .map(|(n, _)| n.clone())
                .collect();
            for name in &running {
                let _ = call(
                    &self.run_dir,
                    Request::Kill {
                        name: name.clone(),
                        signal: libc::SIGTERM,
                    },
                )
                .await;
            }
            let deadline = Instant::now() + grace;
            let mut seq = state.seq;
            while !running.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match call(
                    &self.run_dir,
                    Request::Wait {
                        after: seq,
                        timeout_ms: left.as_millis() as u64,
                    },
                )
                .await
                {
                    Ok(s) if s.containers.values().all(|r| !r.running()) => break,
                    Ok(s) => seq = s.seq,
                    Err(_) => break,
                }
            }
            // The network goes while pause still holds the namespace, as the kubelet does it.
            let node = self.node.clone();
            let uid = self.uid.clone();
            let netns = if state.pause_exited {
                String::new()
            } else {
                format!("/proc/{}/ns/net", state.pause_pid)
            };
            if !self.spec.host_network.unwrap_or(false) {
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || node.network.teardown(&uid, &netns)).await
                {
                    tracing::warn!("tearing down the pod network: {e}");
                }
            }
            let _ = call(&self.run_dir, Request::Shutdown).await;
            wait_gone(state.shim_pid).await;
        }
        self.cleanup_runtime().await;
        let _ = make_writable_and_remove(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.log_dir);
        self.node.forget(&self.uid);
        self.node.release(&self.uid);
        self.node.update_qos_cgroups();
        tracing::info!("pod stopped and cleaned up");
    }

    /// Removes whatever the runtime left of this pod: processes (through the pod's cgroups),
    /// container state, root filesystem mounts. Used after a shutdown and when a shim died.
    async fn cleanup_runtime(&mut self) {
        let node = self.node.clone();
        let state = shim::read_state(&self.run_dir);
        let data_dir = self.data_dir.clone();
        let run_dir = self.run_dir.clone();
        let uid = self.uid.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let cfg = &node.cfg;
            // The namespace is gone or going: DEL what the cache says is still attached.
            if node.network.attached(&uid) {
                if let Err(e) = node.network.teardown(&uid, "") {
                    tracing::warn!("releasing the pod network: {e}");
                }
            }
            if let Some(s) = &state {
                // A shim that stopped answering is ended; the pod's processes die with its cgroups.
                if is_our_shim(s.shim_pid, &run_dir) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(s.shim_pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
                let cg = pod_cgroup(&cfg.cgroup_root, qos, &uid);
                if let Err(e) = cgroup::remove_tree(&cfg.mountinfo, &cg) {
                    tracing::warn!("removing cgroup {cg}: {e}");
                }
            }
            if let Some(s) = &state {
                for r in s.containers.values() {
                    for id in std::iter::once(&r.id).chain(r.previous.as_ref().map(|p| &p.id)) {
                        let _ = std::fs::remove_dir_all(cfg.container_state_root().join(id));
                    }
                }
            }
            for m in rootfs::mounts_below(&cfg.mountinfo, &data_dir) {
                if let Err(e) = rootfs::unmount(&m) {
                    tracing::warn!("{e}");
                }
            }
            let _ = make_writable_and_remove(&data_dir.join("containers"));
            for f in [shim::STATE_FILE, shim::SOCKET_FILE] {
                let _ = std::fs::remove_file(run_dir.join(f));
            }
        })
        .await;
        self.shim = None;
        self.pod_ips.clear();
    }
}

fn is_our_shim(pid: i32, run_dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let s = String::from_utf8_lossy(&c);
            s.contains("shim") && s.contains(&*run_dir.to_string_lossy())
        })
        .unwrap_or(false)
}

async fn wait_gone(pid: i32) {
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        // The shim is not our child (it daemonised), so it is reaped by its new parent.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b
}
