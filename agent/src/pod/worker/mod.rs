//! One pod's worker: level-triggered, it reads the shim's state, starts what should run (with
//! Kubernetes' restart back-off), publishes the status, and sleeps until the shim reports a
//! change, a back-off expires, or the pod is to be stopped.

mod containers;
mod handlers;
mod images;
mod probes;
mod sandbox;
mod volumes;

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

use super::status::{self, ContainerView, WaitingReason};
use super::translate::{self, PodFields};
use super::{pod_cgroup, Refusal, Services};
use k8s_rules::qos::{qos_class, QosClass};

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
    svc: Arc<Services>,
    pod: Pod,
    spec: PodSpec,
    uid: String,
    name: String,
    namespace: String,
    qos: QosClass,
    run_dir: PathBuf,
    data_dir: PathBuf,
    log_dir: PathBuf,
    pod_cgroup: String,
    shim: Option<ShimState>,
    waiting: HashMap<String, WaitingReason>,
    backoff: HashMap<String, Backoff>,
    image_ids: HashMap<String, String>,
    sandbox_error: Option<sandbox::SandboxError>,
    sandbox_failures: u32,
    sandbox_not_before: Option<Instant>,
    conditions: Vec<PodCondition>,
    start_time: Option<Time>,
    /// Containers of a sandbox that died, so their successors continue the restart count.
    lost: HashMap<String, ContainerRecord>,
    /// The pod's addresses from CNI.
    pod_ips: Vec<std::net::IpAddr>,
    /// Set when the node refused the pod: it never starts.
    rejected: Option<Refusal>,
    /// `Infeasible` when a resize was refused (it would change the QoS class).
    resize: Option<String>,
    /// When config map, secret, projected and downward API volumes were last written.
    api_volumes_at: Option<Instant>,
    probes: probes::Probes,
}

pub async fn run(
    svc: Arc<Services>,
    pod: Pod,
    stop: watch::Receiver<bool>,
    updates: watch::Receiver<Pod>,
) {
    use tracing::Instrument;
    let w = Worker::new(svc, pod);
    let span =
        tracing::info_span!("pod", pod = %format!("{}/{}", w.namespace, w.name), uid = %w.uid);
    drive(w, stop, updates).instrument(span).await
}

async fn drive(mut w: Worker, mut stop: watch::Receiver<bool>, mut updates: watch::Receiver<Pod>) {
    let mut evictions = w.svc.evictions.subscribe();
    loop {
        if *stop.borrow() {
            // The deletion's grace period, when the apiserver's pod is being deleted.
            let latest = updates.borrow().clone();
            if latest.metadata.deletion_grace_period_seconds.is_some() {
                w.pod.metadata.deletion_grace_period_seconds =
                    latest.metadata.deletion_grace_period_seconds;
            }
            w.teardown().await;
            return;
        }
        if let Some(message) = w.svc.evictions.requested(&w.uid) {
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
            _ = w.probes.wake.notified() => {}
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

impl Worker {
    fn new(svc: Arc<Services>, pod: Pod) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let spec = pod.spec.clone().unwrap_or_default();
        let qos = qos_class(&spec);
        let cfg = &svc.info.cfg;
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
            svc,
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
            api_volumes_at: None,
            probes: probes::Probes::default(),
        }
    }

    /// The pod's host name, its domain (with `spec.subdomain`) and the kernel's host name, by
    /// the kubelet's rules; an invalid `hostname`/`subdomain` or too long an FQDN is an error.
    fn host_names(&self) -> Result<(String, Option<String>, String), String> {
        let (h, d) = k8s_rules::dns::pod_hostname(&self.pod, &self.svc.info.cfg.cluster_domain)?;
        let k = k8s_rules::dns::kernel_hostname(&self.pod, &h, d.as_deref())?;
        Ok((h, d, k))
    }

    /// The kernel's host name (the sandbox refuses to start when [`Self::host_names`] fails).
    fn hostname(&self) -> String {
        self.host_names()
            .map(|n| n.2)
            .unwrap_or_else(|_| self.name.clone())
    }

    fn restart_policy(&self) -> &str {
        self.spec.restart_policy.as_deref().unwrap_or("Always")
    }

    fn host_ip(&self) -> String {
        self.svc
            .info
            .host_ip
            .map(|i| i.to_string())
            .unwrap_or_default()
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
            let mut refused = all
                .filter_map(|c| {
                    crate::pod::security::apparmor(&self.pod, c, self.svc.info.apparmor).err()
                })
                .next()
                .or_else(|| {
                    crate::pod::security::sysctls(
                        &self.pod,
                        &self.svc.info.cfg.allowed_unsafe_sysctls,
                    )
                    .err()
                });
            if refused.is_none() {
                refused = self.svc.admission.placement(&self.pod).await.err();
            }
            if let Some(r) = refused.or_else(|| {
                self.svc
                    .admission
                    .admit(&self.uid, &self.spec, self.qos)
                    .err()
            }) {
                // The kubelet's `rejectPod`: a Warning event with the admission's reason and
                // message, and the pod Failed for good (its status says "Pod was rejected: ").
                tracing::warn!(reason = r.reason(), "{r}");
                self.svc.events.warning(&self.pod, r.reason(), r.message());
                self.rejected = Some(r);
                self.publish();
                return Duration::from_secs(3600);
            }
        }
        if let Err(no) = self.ensure_sandbox().await {
            if let sandbox::NoSandbox::Failed(e) = no {
                // The same failure again, word for word, is not a new event.
                let message = crate::util::chain(&e);
                if self.sandbox_error.as_ref().map(|e| crate::util::chain(e))
                    != Some(message.clone())
                {
                    self.svc.events.warning(
                        &self.pod,
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {message}"),
                    );
                }
                self.sandbox_error = Some(e);
            }
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
        if let Some(d) = self.refresh_api_volumes().await {
            wake = wake.min(d);
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
        self.sync_probes();
        self.publish();
        wake
    }

    /// The address probes and hooks reach the pod at.
    fn pod_host(&self) -> String {
        if self.spec.host_network.unwrap_or(false) {
            return self.host_ip();
        }
        self.pod_ips
            .first()
            .map(|i| i.to_string())
            .unwrap_or_else(|| self.host_ip())
    }

    fn target(&self, c: &Container, id: &str) -> handlers::Target {
        handlers::Target {
            info: self.svc.info.clone(),
            events: self.svc.events.clone(),
            pod: self.pod.clone(),
            container: c.clone(),
            id: id.to_string(),
            host: self.pod_host(),
            run_dir: self.run_dir.clone(),
        }
    }

    fn sync_probes(&mut self) {
        let now = jiff::Timestamp::now();
        let mut running = Vec::new();
        let mut new = Vec::new();
        for c in &self.spec.containers {
            let Some(r) = self.record(&c.name).filter(|r| r.running()) else {
                continue;
            };
            running.push(c.name.clone());
            let probed = c.startup_probe.is_some()
                || c.readiness_probe.is_some()
                || c.liveness_probe.is_some();
            // A target (with its copy of the pod) only for an instance not probed yet.
            if !probed || self.probes.watching(&c.name, &r.id) {
                continue;
            }
            let age = status::time(&r.started_at)
                .map(|t| {
                    now.duration_since(t.0)
                        .max(jiff::SignedDuration::ZERO)
                        .unsigned_abs()
                })
                .unwrap_or_default();
            new.push((self.target(c, &r.id), age));
        }
        self.probes.sync(&running, new);
    }

    fn record(&self, name: &str) -> Option<ContainerRecord> {
        self.shim
            .as_ref()
            .and_then(|s| s.containers.get(name))
            .cloned()
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
        // Image IDs of adopted containers come from the store once, not on every status.
        let all = self
            .spec
            .init_containers
            .iter()
            .flatten()
            .chain(self.spec.containers.iter());
        for c in all {
            if !self.image_ids.contains_key(&c.name) {
                if let Some(i) = c
                    .image
                    .as_deref()
                    .and_then(|i| self.svc.images.store.resolve(i).ok())
                {
                    self.image_ids.insert(c.name.clone(), i.image_ref());
                }
            }
        }
        let statuses = |list: &[Container]| -> Vec<_> {
            list.iter()
                .map(|c| {
                    let rec = self.shim.as_ref().and_then(|s| s.containers.get(&c.name));
                    let (started, ready) = rec
                        .map(|r| self.probes.health(&c.name, &r.id))
                        .unwrap_or((false, false));
                    status::container_status(ContainerView {
                        started,
                        ready,
                        name: &c.name,
                        image: c.image.as_deref().unwrap_or_default(),
                        image_id: self.image_ids.get(&c.name).cloned(),
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
        let host_ip = self.svc.info.host_ip.map(|i| i.to_string());
        let host_network = self.spec.host_network.unwrap_or(false);
        let pod_ips: Vec<String> = if host_network {
            host_ip.iter().cloned().collect()
        } else {
            self.pod_ips.iter().map(|i| i.to_string()).collect()
        };
        // A pod refused at admission reports no containers, as the kubelet's `rejectPod`: none
        // was ever created, and a waiting ContainerCreating would hide the refusal (kubectl's
        // STATUS shows a waiting container's reason before the pod's).
        let refused = self.rejected.as_ref().is_some_and(Refusal::at_admission);
        let mut pod = self.pod.clone();
        pod.status = Some(PodStatus {
            phase: Some(self.phase().into()),
            conditions: Some(conditions),
            message: self
                .rejected
                .as_ref()
                .map(Refusal::status_message)
                .or_else(|| self.sandbox_error.as_ref().map(|e| crate::util::chain(e))),
            reason: self
                .rejected
                .as_ref()
                .map(|r| r.reason().to_string())
                .or_else(|| {
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
            init_container_statuses: (!refused && !inits.is_empty()).then_some(inits),
            container_statuses: (!refused).then_some(apps),
            ..Default::default()
        });
        self.svc.statuses.publish(&self.uid, pod);
    }
}
