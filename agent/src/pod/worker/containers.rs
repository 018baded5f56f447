//! Containers of a pod: back-off, root filesystems, bundles, and the runtime configuration
//! translated from the pod spec.

use super::*;

impl Worker {
    /// Starts a container unless it is backing off; returns how long until it should be tried.
    pub(super) async fn try_start(
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
                let image = c.image.clone().unwrap_or_default();
                let w = match self.waiting.get(&c.name) {
                    Some(w) if w.is_pull_failure() => WaitingReason::ImagePullBackOff { image },
                    Some(w)
                        if prev.is_none()
                            || !matches!(w, WaitingReason::CrashLoopBackOff { .. })
                                && b.failures > 0 =>
                    {
                        w.clone()
                    }
                    _ => WaitingReason::CrashLoopBackOff {
                        back_off: backoff_delay(b.crashes.saturating_sub(1)).as_secs().max(10),
                        container: c.name.clone(),
                        pod: pod_ref.clone(),
                    },
                };
                if self.waiting.get(&c.name).map(WaitingReason::reason) != Some(w.reason()) {
                    let msg = match &w {
                        WaitingReason::ImagePullBackOff { image } => {
                            format!("Back-off pulling image {image:?}")
                        }
                        _ => format!(
                            "Back-off restarting failed container {} in pod {pod_ref}",
                            c.name
                        ),
                    };
                    self.svc.events.warning(&self.pod, "BackOff", msg);
                }
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
                self.post_start(c).await;
                None
            }
            Err(w) => {
                let message = w.message();
                tracing::warn!(container = %c.name, reason = w.reason(), "{}", message.clone().unwrap_or_default());
                self.svc.events.warning(
                    &self.pod,
                    "Failed",
                    format!(
                        "Error: {}",
                        message.unwrap_or_else(|| w.reason().to_string())
                    ),
                );
                let b = self.backoff.entry(c.name.clone()).or_default();
                b.failures += 1;
                let delay = backoff_delay(b.failures);
                b.not_before = Some(now + delay);
                self.waiting.insert(c.name.clone(), w);
                Some(delay)
            }
        }
    }

    /// Runs the postStart hook of a container just started, holding the pod's worker as the
    /// kubelet does; a failure kills the container, which restarts by the pod's policy.
    async fn post_start(&mut self, c: &Container) {
        let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return;
        };
        let Some(rec) = self.record(&c.name) else {
            return;
        };
        let target = self.target(c, &rec.id);
        let action = handlers::Action::from(hook);
        let r = target
            .run(
                &action,
                Duration::from_secs(3600),
                handlers::LIFECYCLE_AGENT,
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(container = %c.name, "postStart hook failed: {e}");
            self.svc.events.warning(
                &self.pod,
                "FailedPostStartHook",
                format!("PostStartHook failed: {}", e.trim_end()),
            );
            self.svc.events.normal(
                &self.pod,
                "Killing",
                format!("FailedPostStartHook: stopping container {}", c.name),
            );
            let grace = self
                .spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(2);
            target.kill(Duration::from_secs(grace as u64)).await;
            self.waiting.insert(
                c.name.clone(),
                WaitingReason::PostStartHookError(e.trim_end().to_string()),
            );
            if let Ok(s) = call(&self.run_dir, Request::State).await {
                self.shim = Some(s);
            }
        }
    }

    pub(super) fn instance_dir(&self, name: &str, attempt: u32) -> PathBuf {
        self.data_dir
            .join("containers")
            .join(name)
            .join(attempt.to_string())
    }

    pub(super) fn remove_instance(&self, dir: &Path) {
        for m in rootfs::mounts_below(&self.svc.info.cfg.mountinfo, dir) {
            let _ = rootfs::unmount(&m);
        }
        let _ = make_writable_and_remove(dir);
    }

    pub(super) async fn start_container(
        &mut self,
        c: &Container,
        field: &str,
        attempt: u32,
    ) -> Result<(), WaitingReason> {
        let image = self.ensure_image(c).await?;
        let inst = self.instance_dir(&c.name, attempt);
        if inst.exists() {
            self.remove_instance(&inst);
        }
        let root = inst.join("rootfs");
        let lowers = self
            .svc
            .images
            .store
            .lowerdirs(&image)
            .map_err(|e| WaitingReason::CreateContainerError(e.to_string()))?;
        let pause = self.shim.as_ref().map(|s| s.pause_pid).unwrap_or(0);
        match self.svc.userns.get(&self.uid) {
            Some(r) => rootfs::mount_overlay_idmapped(
                &lowers,
                &inst.join("upper"),
                &inst.join("work"),
                &root,
                Path::new(&format!("/proc/{pause}/ns/user")),
                (r.host_id, r.host_id),
                &inst.join("idmapped"),
            ),
            None => rootfs::mount_overlay(&lowers, &inst.join("upper"), &inst.join("work"), &root),
        }
        .map_err(|e| WaitingReason::CreateContainerError(e.to_string()))?;
        let id = hex::encode(rand_bytes());
        let data = match self.fetch_api_objects().await {
            Ok(d) => d,
            Err(e) => {
                self.remove_instance(&inst);
                return Err(WaitingReason::CreateContainerConfigError(e));
            }
        };
        if let Err(e) = self.write_api_volumes(&data) {
            self.svc.events.warning(
                &self.pod,
                "FailedMount",
                format!("MountVolume.SetUp failed: {e}"),
            );
            self.remove_instance(&inst);
            return Err(WaitingReason::CreateContainerConfigError(e));
        }
        let result = async {
            let config = self
                .container_config(c, field, &image, &root, &inst, &id, &data)
                .map_err(WaitingReason::CreateContainerConfigError)?;
            podlet_runtime::spec::write_bundle(&inst, &config)
                .map_err(|e| WaitingReason::CreateContainerError(e.to_string()))?;
            let log_path = self.log_dir.join(&c.name).join(format!("{attempt}.log"));
            let req = Request::Start {
                name: c.name.clone(),
                id: id.clone(),
                bundle: inst.clone(),
                log_path,
                attempt,
                stdin: c.stdin.unwrap_or(false),
                stdin_once: c.stdin_once.unwrap_or(false),
                tty: c.tty.unwrap_or(false),
            };
            call(&self.run_dir, req).await.map_err(|e| match &e {
                // The shim's own report of a container that was created but did not start.
                ShimError::Failed(m) if m.contains("starting container") => {
                    WaitingReason::RunContainerError(e.to_string())
                }
                _ => WaitingReason::CreateContainerError(e.to_string()),
            })
        }
        .await;
        match result {
            Ok(state) => {
                self.shim = Some(state);
                self.image_ids.insert(c.name.clone(), image.image_ref());
                tracing::info!(container = %c.name, attempt, "container started");
                let msg = |verb: &str| format!("{verb} container: {}", c.name);
                self.svc.events.normal(&self.pod, "Created", msg("Created"));
                self.svc.events.normal(&self.pod, "Started", msg("Started"));
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn container_config(
        &self,
        c: &Container,
        field: &str,
        image: &ImageRecord,
        root: &Path,
        inst: &Path,
        id: &str,
        data: &translate::ApiData,
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
            labels: self.pod.metadata.labels.as_ref(),
            annotations: self.pod.metadata.annotations.as_ref(),
            name: &self.name,
            namespace: &self.namespace,
            uid: &self.uid,
            node_name: &self.svc.info.cfg.node_name,
            host_ip: &host_ip,
            pod_ip: &pod_ip,
            service_account: self
                .spec
                .service_account_name
                .as_deref()
                .unwrap_or("default"),
        };
        let (env, env_map) =
            translate::environment(c, &image.config, &hostname, &fields, data, field)?;
        let args = translate::argv(c, &image.config, &env_map);
        if args.is_empty() {
            return Err(format!(
                "{field}: no command specified: the image has no ENTRYPOINT or CMD"
            ));
        }
        let (uid, gid, additional_gids) =
            translate::user(root, image.config.user.as_deref(), pod_sc, sc)?;
        let pause = self.shim.as_ref().map(|s| s.pause_pid).unwrap_or(0);
        let userns = self
            .svc
            .userns
            .get(&self.uid)
            .map(|range| podlet_runtime::spec::UserNs {
                path: PathBuf::from(format!("/proc/{pause}/ns/user")),
                range,
            });
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
        let limits = crate::pod::resources::container_limits(c);
        let has_cpu = !self.svc.info.missing_controllers.contains(&"cpu");
        let has_memory = !self.svc.info.missing_controllers.contains(&"memory");
        let capabilities = translate::capabilities(sc);
        let seccomp = crate::pod::security::seccomp(
            &self.pod,
            c,
            &capabilities,
            &self.svc.info.cfg.root_dir.join("seccomp"),
            self.svc.info.cfg.seccomp_default,
        )?;
        let apparmor_profile = crate::pod::security::apparmor(&self.pod, c, self.svc.info.apparmor)
            .map_err(|e| e.message())?;
        let sysctls =
            crate::pod::security::sysctls(&self.pod, &self.svc.info.cfg.allowed_unsafe_sysctls)
                .map_err(|e| e.message())?;
        let unmasked_proc = sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
        let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
        let devices = if privileged {
            podlet_runtime::spec::host_devices(Path::new("/dev"))
        } else {
            Vec::new()
        };
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
                translate::oom_score_adj(self.qos, c, self.svc.info.memory_capacity)
                    .max(self.svc.info.oom_floor),
            ),
            // libcontainer writes these itself; only where the controllers exist.
            cpu_shares: limits.cpu_shares.filter(|_| has_cpu),
            cpu_quota: limits.cpu_quota.filter(|_| has_cpu),
            cpu_period: limits.cpu_period.filter(|_| has_cpu),
            memory_limit: limits.memory.filter(|_| has_memory),
            seccomp,
            apparmor_profile,
            sysctls,
            unmasked_proc,
            terminal: c.tty.unwrap_or(false),
            devices,
            userns,
        })
    }
}

pub(super) fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b
}
