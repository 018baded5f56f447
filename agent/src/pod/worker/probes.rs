//! Liveness, readiness and startup probes, as the kubelet's prober runs them: one task per probe
//! of each running container instance. Results reach the worker through a `Notify`; a failed
//! liveness or startup probe kills the instance, and the worker restarts it by its policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use super::handlers::{Action, Target, PROBE_AGENT};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

/// What the probes of one container instance say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Health {
    started: bool,
    ready: bool,
}

struct Instance {
    id: String,
    health: watch::Receiver<Health>,
    has_startup: bool,
    has_readiness: bool,
    tasks: Vec<AbortHandle>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Default)]
pub(super) struct Probes {
    /// Told whenever a probe result changes what the status says.
    pub wake: Arc<Notify>,
    instances: HashMap<String, Instance>,
}

impl Probes {
    /// `(started, ready)` of a running container instance: both true when it has no probes.
    pub fn health(&self, name: &str, id: &str) -> (bool, bool) {
        match self.instances.get(name).filter(|i| i.id == id) {
            None => (true, true),
            Some(i) => {
                let h = *i.health.borrow();
                let started = !i.has_startup || h.started;
                (started, started && (!i.has_readiness || h.ready))
            }
        }
    }

    /// Whether instance `id` of container `name` is probed already.
    pub fn watching(&self, name: &str, id: &str) -> bool {
        self.instances.get(name).is_some_and(|i| i.id == id)
    }

    /// Stops the probes of containers not in `running`, and starts those of the new instances
    /// in `new` (with how long each has run).
    pub fn sync(&mut self, running: &[String], new: Vec<(Target, Duration)>) {
        self.instances.retain(|n, _| running.contains(n));
        for (t, age) in new {
            let c = &t.container;
            let probes: Vec<(Kind, Probe)> = [
                (Kind::Startup, c.startup_probe.clone()),
                (Kind::Readiness, c.readiness_probe.clone()),
                (Kind::Liveness, c.liveness_probe.clone()),
            ]
            .into_iter()
            .filter_map(|(k, p)| Some((k, p?)))
            .collect();
            if probes.is_empty() {
                self.instances.remove(&c.name);
                continue;
            }
            let has_startup = c.startup_probe.is_some();
            let (tx, rx) = watch::channel(Health {
                started: !has_startup,
                ready: false,
            });
            let tx = Arc::new(tx);
            let tasks = probes
                .into_iter()
                .map(|(kind, probe)| {
                    let run = Run {
                        kind,
                        probe,
                        target: t.clone(),
                        health: tx.clone(),
                        wake: self.wake.clone(),
                        age,
                    };
                    tokio::spawn(run.probe_loop()).abort_handle()
                })
                .collect();
            self.instances.insert(
                c.name.clone(),
                Instance {
                    id: t.id.clone(),
                    health: rx,
                    has_startup,
                    has_readiness: c.readiness_probe.is_some(),
                    tasks,
                },
            );
        }
    }
}

struct Run {
    kind: Kind,
    probe: Probe,
    target: Target,
    health: Arc<watch::Sender<Health>>,
    wake: Arc<Notify>,
    /// How long the instance had run when the probes started (an adopted container's
    /// initial delay has passed already).
    age: Duration,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

impl Run {
    fn set(&self, f: impl FnOnce(&mut Health)) {
        let changed = self.health.send_if_modified(|h| {
            let before = *h;
            f(h);
            *h != before
        });
        if changed {
            self.wake.notify_one();
        }
    }

    async fn probe_loop(self) {
        let p = &self.probe;
        let period = secs(p.period_seconds, 10, 1);
        let timeout = secs(p.timeout_seconds, 1, 1);
        let success_threshold = p.success_threshold.unwrap_or(1).max(1) as u32;
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1) as u32;
        let delay = secs(p.initial_delay_seconds, 0, 0).saturating_sub(self.age);
        tokio::time::sleep(delay).await;
        let action = Action::from(p);
        let name = self.target.container.name.clone();
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut rx = self.health.subscribe();
        loop {
            if self.kind != Kind::Startup && !rx.borrow_and_update().started {
                // Liveness and readiness wait for the startup probe to pass.
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let result = self.target.run(&action, timeout, PROBE_AGENT).await;
            match &result {
                Ok(_) => {
                    successes += 1;
                    failures = 0;
                }
                Err(msg) => {
                    failures += 1;
                    successes = 0;
                    tracing::info!(container = %name, "{} probe failed: {msg}", self.kind.as_str());
                    self.target.events.warning(
                        &self.target.pod,
                        "Unhealthy",
                        format!("{} probe failed: {}", self.kind.as_str(), msg.trim_end()),
                    );
                }
            }
            match self.kind {
                Kind::Readiness => {
                    if successes >= success_threshold {
                        self.set(|h| h.ready = true);
                    } else if failures >= failure_threshold {
                        self.set(|h| h.ready = false);
                    }
                }
                Kind::Startup if successes >= 1 => {
                    self.set(|h| h.started = true);
                    return;
                }
                Kind::Startup | Kind::Liveness if failures >= failure_threshold => {
                    let what = self.kind.as_str().to_ascii_lowercase();
                    self.target.events.normal(
                        &self.target.pod,
                        "Killing",
                        format!("Container {name} failed {what} probe, will be restarted"),
                    );
                    let grace = p
                        .termination_grace_period_seconds
                        .or_else(|| {
                            self.target
                                .pod
                                .spec
                                .as_ref()
                                .and_then(|s| s.termination_grace_period_seconds)
                        })
                        .unwrap_or(30)
                        .max(2);
                    self.target.kill(Duration::from_secs(grace as u64)).await;
                    return;
                }
                _ => {}
            }
            tokio::time::sleep(period).await;
        }
    }
}
