//! The pod sandbox: the shim and its pause process, the pod network, and taking it all down
//! again (deletion, eviction, a sandbox that died), plus adoption and in-place resize.

use super::*;
use crate::network::NetworkError;
use crate::pod::userns::UsernsError;
use crate::util::chain;

/// Why a pod sandbox could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum SandboxError {
    /// Writing one of the sandbox's files or directories (named by what it is).
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Userns(#[from] UsernsError),
    #[error("pod cgroup {cgroup}")]
    Cgroup {
        cgroup: String,
        #[source]
        source: podlet_runtime::host::HostError,
    },
    #[error("{0}")]
    Hostname(String),
    #[error("starting the shim")]
    SpawnShim(#[source] std::io::Error),
    /// The shim exited at start; what it wrote on stderr.
    #[error("{stderr}")]
    ShimExited { stderr: String },
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error("failed to set up the pod network")]
    Network(#[source] NetworkError),
    #[error("failed to set up the pod network")]
    NetworkPolicy(#[source] crate::netpol::NetpolError),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Why the pod has no sandbox now.
pub(super) enum NoSandbox {
    /// Waiting out the back-off after the last failure (the worker's `sandbox_error`).
    BackingOff,
    Failed(SandboxError),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

const HOSTS_HEADER: &str = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n";

impl Worker {
    pub(super) async fn ensure_sandbox(&mut self) -> Result<(), NoSandbox> {
        match call(&self.run_dir, Request::State).await {
            Ok(s) if !s.pause_exited => {
                let adopting = self.shim.is_none();
                self.shim = Some(s);
                if adopting {
                    self.adopt().await;
                }
                if self.pod_ips.is_empty() && !self.spec.host_network.unwrap_or(false) {
                    self.pod_ips = self.svc.network.cached_ips(&self.uid);
                }
                if adopting && !self.spec.host_network.unwrap_or(false) {
                    // Running already: its rules are in the table from before; registered
                    // so that the next sync keeps its address (no wait).
                    let (uid, ips) = (&self.uid, &self.pod_ips);
                    if let Err(e) = self.svc.netpol.admit(uid, &self.pod, ips, false).await {
                        tracing::warn!("network policies: {}", chain(&e));
                    }
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
                return Err(NoSandbox::BackingOff);
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
                tracing::error!("creating the pod sandbox: {}", chain(&e));
                Err(NoSandbox::Failed(e))
            }
        }
    }

    /// Writes the pod's hosts and hostname files (again once the pod has its addresses).
    pub(super) fn write_hosts(&self) -> std::io::Result<()> {
        let etc = self.data_dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let (host, domain, kernel) = self.host_names().map_err(std::io::Error::other)?;
        let names = match domain {
            Some(d) => format!("{host}.{d}\t{host}"),
            None => host,
        };
        let host_network = self.spec.host_network.unwrap_or(false);
        let hosts = if host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| HOSTS_HEADER.to_string())
        } else {
            let mut h = HOSTS_HEADER.to_string();
            for ip in &self.pod_ips {
                h.push_str(&format!("{ip}\t{names}\n"));
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
        std::fs::write(etc.join("hostname"), format!("{kernel}\n"))?;
        self.chown_etc(&["hosts", "hostname"])
    }

    /// Writes the pod's resolv.conf (once per sandbox); returns the warnings forming its DNS
    /// configuration gave.
    fn write_resolv_conf(&self) -> std::io::Result<Vec<k8s_rules::dns::Warning>> {
        let etc = self.data_dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let (resolv, warnings) =
            crate::pod::dns::resolv_conf(&self.svc.info.cfg, self.svc.info.host_ip, &self.pod)?;
        std::fs::write(etc.join("resolv.conf"), resolv)?;
        self.chown_etc(&["resolv.conf"])?;
        Ok(warnings)
    }

    /// In a user namespace the pod's /etc files belong to its root, as the kubelet chowns them.
    fn chown_etc(&self, files: &[&str]) -> std::io::Result<()> {
        if let Some(r) = self.svc.userns.get(&self.uid) {
            for f in files {
                let path = self.data_dir.join("etc").join(f);
                std::os::unix::fs::chown(path, Some(r.host_id), Some(r.host_id))?;
            }
        }
        Ok(())
    }

    pub(super) async fn create_sandbox(&mut self) -> Result<(), SandboxError> {
        self.host_names().map_err(SandboxError::Hostname)?;
        std::fs::create_dir_all(&self.run_dir).map_err(io("run dir"))?;
        std::fs::create_dir_all(&self.data_dir).map_err(io("data dir"))?;
        let pod_json = serde_json::to_vec(&self.pod)?;
        std::fs::write(self.run_dir.join(POD_FILE), pod_json).map_err(io("pod file"))?;
        if self.start_time.is_none() {
            self.start_time = Some(status::now());
        }
        let userns = if self.spec.host_users == Some(false) {
            Some(self.svc.userns.allocate(&self.uid)?)
        } else {
            None
        };
        self.write_hosts().map_err(io("etc files"))?;
        for w in self.write_resolv_conf().map_err(io("etc files"))? {
            match w.subject {
                k8s_rules::dns::Subject::Pod => {
                    self.svc.events.warning(&self.pod, w.reason, w.message)
                }
                k8s_rules::dns::Subject::Node => tracing::warn!(reason = w.reason, "{}", w.message),
            }
        }
        let host_network = self.spec.host_network.unwrap_or(false);
        let sandbox = SandboxConfig {
            hostname: self.hostname(),
            new_net: !host_network,
            new_ipc: !self.spec.host_ipc.unwrap_or(false),
            new_uts: !host_network,
            new_pid: self.spec.share_process_namespace.unwrap_or(false)
                && !self.spec.host_pid.unwrap_or(false),
            pause_cgroup: format!("{}/pause", self.pod_cgroup),
            state_root: self.svc.info.cfg.container_state_root(),
            shim_oom_score_adj: Some((-999).max(self.svc.info.oom_floor)),
            userns,
        };
        std::fs::write(
            self.run_dir.join(shim::SANDBOX_FILE),
            serde_json::to_vec(&sandbox)?,
        )
        .map_err(io("sandbox file"))?;
        let limits = crate::pod::resources::pod_limits(
            &self.spec,
            self.qos,
            self.svc.info.cfg.pod_pids_limit,
        );
        podlet_runtime::cgroup::apply(&self.svc.info.cgroups, &self.pod_cgroup, &limits).map_err(
            |source| SandboxError::Cgroup {
                cgroup: self.pod_cgroup.clone(),
                source,
            },
        )?;
        self.svc.admission.update_qos_cgroups();
        let out = tokio::process::Command::new(&self.svc.info.exe)
            .arg("shim")
            .arg("--pod-dir")
            .arg(&self.run_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .map_err(SandboxError::SpawnShim)?;
        if !out.status.success() {
            return Err(SandboxError::ShimExited {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let s = call(&self.run_dir, Request::State).await?;
        let pause = s.pause_pid;
        self.shim = Some(s);
        if !host_network {
            let network = self.svc.network.clone();
            let (uid, spec) = (self.uid.clone(), self.spec.clone());
            let netns = format!("/proc/{pause}/ns/net");
            let ips = tokio::task::spawn_blocking(move || network.setup(&uid, &netns, &spec))
                .await?
                .map_err(SandboxError::Network)?;
            self.pod_ips = ips;
            // Its network policies cover its address before any container runs.
            self.svc
                .netpol
                .admit(&self.uid, &self.pod, &self.pod_ips, true)
                .await
                .map_err(SandboxError::NetworkPolicy)?;
            // /etc/hosts names the pod's own address now that it has one.
            self.write_hosts().map_err(io("etc files"))?;
        }
        tracing::info!(pause, ips = ?self.pod_ips, "sandbox created");
        Ok(())
    }

    /// Takes over a running sandbox after an agent restart. It was built from the spec recorded
    /// with it; if the manifest's resources changed meanwhile, that is a resize.
    pub(super) async fn adopt(&mut self) {
        let recorded = std::fs::read(self.run_dir.join(POD_FILE))
            .ok()
            .and_then(|d| serde_json::from_slice::<Pod>(&d).ok());
        let wanted = self.pod.clone();
        if let Some(old) = recorded.filter(|old| old.spec != wanted.spec) {
            self.spec = old.spec.clone().unwrap_or_default();
            self.qos = k8s_rules::qos::qos_class(&self.spec);
            self.pod_cgroup = pod_cgroup(&self.svc.info.cfg.cgroup_root, self.qos, &self.uid);
            self.pod = old;
            self.svc
                .admission
                .admit_running(&self.uid, &self.spec, self.qos);
            Box::pin(self.resize(wanted)).await;
        } else {
            self.svc
                .admission
                .admit_running(&self.uid, &self.spec, self.qos);
        }
    }

    /// Applies new container resources to the running pod without restarting anything, as
    /// Kubernetes' in-place resize does. A resize that would change the QoS class is refused.
    pub(super) async fn resize(&mut self, pod: Pod) {
        let spec = pod.spec.clone().unwrap_or_default();
        let qos = k8s_rules::qos::qos_class(&spec);
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
        let pod_limits =
            crate::pod::resources::pod_limits(&spec, qos, self.svc.info.cfg.pod_pids_limit);
        let layout = &self.svc.info.cgroups;
        // Growing needs the pod first, shrinking the containers first: pod, containers, pod.
        let mut result = podlet_runtime::cgroup::apply(layout, &self.pod_cgroup, &pod_limits);
        for c in &spec.containers {
            if let Some(rec) = self.record(&c.name).filter(|r| r.running()) {
                let r = podlet_runtime::cgroup::apply(
                    layout,
                    &rec.cgroup,
                    &crate::pod::resources::container_limits(c),
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
                self.svc
                    .admission
                    .admit_running(&self.uid, &self.spec, self.qos);
                self.svc.admission.update_qos_cgroups();
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
    pub(super) async fn evict(&mut self, message: String) {
        tracing::warn!("evicted: {message}");
        self.svc
            .events
            .warning(&self.pod, "Evicted", message.clone());
        if let Ok(state) = call(&self.run_dir, Request::State).await {
            if !self.spec.host_network.unwrap_or(false) {
                self.svc.netpol.forget(&self.uid);
                let network = self.svc.network.clone();
                let uid = self.uid.clone();
                let netns = format!("/proc/{}/ns/net", state.pause_pid);
                let _ = tokio::task::spawn_blocking(move || network.teardown(&uid, &netns)).await;
            }
            if let Ok(last) = call(&self.run_dir, Request::Shutdown).await {
                wait_gone(state.shim_pid).await;
                self.cleanup_runtime().await;
                self.shim = Some(last);
            }
        }
        self.rejected = Some(Refusal::Evicted(message));
        self.svc.admission.release(&self.uid);
        self.svc.userns.release(&self.uid);
        self.svc.admission.update_qos_cgroups();
        self.publish();
        self.svc.evictions.done(&self.uid);
    }

    pub(super) async fn teardown(&mut self) {
        let grace = Duration::from_secs(
            self.pod
                .metadata
                .deletion_grace_period_seconds
                .or(self.spec.termination_grace_period_seconds)
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
            // preStop hooks first, all at once, within the grace period.
            let hooks: Vec<_> = running
                .iter()
                .filter_map(|n| {
                    let c = self.spec.containers.iter().find(|c| &c.name == n)?;
                    let hook = c.lifecycle.as_ref()?.pre_stop.clone()?;
                    Some((self.target(c, &state.containers[n].id), hook))
                })
                .collect();
            if !hooks.is_empty() {
                let runs = hooks.iter().map(|(t, hook)| t.pre_stop(hook));
                let _ = tokio::time::timeout(grace, futures_util::future::join_all(runs)).await;
            }
            for name in &running {
                self.svc
                    .events
                    .normal(&self.pod, "Killing", format!("Stopping container {name}"));
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
            // The network goes while pause still holds the namespace, as the kubelet does it;
            // its address first stops being the pod's for its network policies.
            self.svc.netpol.forget(&self.uid);
            let network = self.svc.network.clone();
            let uid = self.uid.clone();
            let netns = if state.pause_exited {
                String::new()
            } else {
                format!("/proc/{}/ns/net", state.pause_pid)
            };
            if !self.spec.host_network.unwrap_or(false) {
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || network.teardown(&uid, &netns)).await
                {
                    tracing::warn!("tearing down the pod network: {}", chain(&e));
                }
            }
            let _ = call(&self.run_dir, Request::Shutdown).await;
            wait_gone(state.shim_pid).await;
        }
        self.cleanup_runtime().await;
        // Unlisted before its files go: a pod whose run dir is gone is never reported.
        self.svc.statuses.forget(&self.uid);
        let _ = make_writable_and_remove(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.log_dir);
        self.svc.admission.release(&self.uid);
        self.svc.userns.release(&self.uid);
        self.svc.admission.update_qos_cgroups();
        tracing::info!("pod stopped and cleaned up");
    }

    /// Removes whatever the runtime left of this pod: processes (through the pod's cgroups),
    /// container state, root filesystem mounts. Used after a shutdown and when a shim died.
    pub(super) async fn cleanup_runtime(&mut self) {
        self.svc.netpol.forget(&self.uid);
        let (info, network) = (self.svc.info.clone(), self.svc.network.clone());
        let state = shim::read_state(&self.run_dir);
        let data_dir = self.data_dir.clone();
        let run_dir = self.run_dir.clone();
        let uid = self.uid.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let cfg = &info.cfg;
            // The namespace is gone or going: DEL what the cache says is still attached.
            if network.attached(&uid) {
                if let Err(e) = network.teardown(&uid, "") {
                    tracing::warn!("releasing the pod network: {}", chain(&e));
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
            for qos in [
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ] {
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

pub(super) fn is_our_shim(pid: i32, run_dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let s = String::from_utf8_lossy(&c);
            s.contains("shim") && s.contains(&*run_dir.to_string_lossy())
        })
        .unwrap_or(false)
}

pub(super) async fn wait_gone(pid: i32) {
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
