//! A container's lifecycle in the shim: created and started with libcontainer, its exit
//! recorded when it is reaped, signalled, and deleted.

use std::fs;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::server::Shim;
use super::stdio::{self, Stdio};
use super::ContainerRecord;
use crate::sys;

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl Shim {
    pub(super) fn start_container(
        &mut self,
        name: String,
        id: String,
        bundle: PathBuf,
        log_path: PathBuf,
        attempt: u32,
        stdio: Stdio,
    ) -> Result<(), String> {
        if self.state.pause_exited {
            return Err("the pod sandbox is gone (pause exited)".into());
        }
        let mut previous = None;
        if let Some(old) = self.state.containers.get(&name) {
            if old.running() {
                return Err(format!("container {name} is already running"));
            }
            delete_container(&self.cfg.state_root, &old.id);
            let mut old = old.clone();
            old.previous = None;
            previous = Some(Box::new(old));
        }
        let (theirs, mut ours) = stdio::open(&self.dir, &stdio, &log_path)?;
        let built = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(&self.cfg.state_root)
            .map_err(|e| format!("container root: {e}"))?
            .with_console_socket(theirs.console_socket)
            .with_stdin(theirs.stdin)
            .with_stdout(theirs.stdout)
            .with_stderr(theirs.stderr)
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        let master = ours.take_terminal();
        let mut container = match built {
            Ok(c) => c,
            Err(e) => {
                delete_container(&self.cfg.state_root, &id);
                return Err(format!(
                    "creating container {name}: {}{}",
                    error_chain(&e),
                    self.unreachable_rootfs(&bundle)
                ));
            }
        };
        // libcontainer writes the container's OOM score into its caller: take ours back, so
        // the shim is never killed in the container's place.
        if let Some(adj) = self.cfg.shim_oom_score_adj {
            let _ = sys::set_oom_score_adj(adj);
        }
        if let Err(e) = container.start() {
            let _ = container.delete(true);
            return Err(format!("starting container {name}: {}", error_chain(&e)));
        }
        let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
        self.connect_stdio(&name, ours, master, &stdio)?;
        tracing::info!(container = %name, pid, "started");
        self.state.containers.insert(
            name,
            ContainerRecord {
                id,
                pid,
                attempt,
                log_path,
                started_at: Some(now()),
                finished_at: None,
                exit_code: None,
                signal: None,
                reason: None,
                cgroup: cgroup_of(&bundle),
                previous,
            },
        );
        self.changed();
        Ok(())
    }

    fn record_exit(&mut self, pid: i32, status: WaitStatus) -> bool {
        let (code, signal) = match status {
            WaitStatus::Exited(_, c) => (c, None),
            WaitStatus::Signaled(_, s, _) => (128 + s as i32, Some(s as i32)),
            _ => return false,
        };
        if pid == self.state.pause_pid {
            self.state.pause_exited = true;
            tracing::warn!(code, "pause exited");
            return true;
        }
        for (name, rec) in self.state.containers.iter_mut() {
            if rec.pid == pid && rec.running() {
                rec.exit_code = Some(code);
                rec.signal = signal;
                rec.finished_at = Some(now());
                // As containerd: an OOM kill anywhere in the container's cgroup makes it OOMKilled.
                if crate::cgroup::oom_killed(&self.cgroups, &rec.cgroup) {
                    rec.reason = Some("OOMKilled".into());
                }
                tracing::info!(container = %name, pid, code, "exited");
                return true;
            }
        }
        false
    }

    pub(super) fn reap(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        let mut any = false;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => {
                    if let Some(pid) = s.pid() {
                        any |= self.record_exit(pid.as_raw(), s);
                    }
                }
            }
        }
        if any {
            self.end_attached();
            self.changed();
        }
    }

    pub(super) fn kill(&mut self, name: &str, signal: i32) -> Result<(), String> {
        let rec = self
            .state
            .containers
            .get(name)
            .ok_or_else(|| format!("no container {name}"))?;
        if !rec.running() {
            return Ok(());
        }
        let sig = Signal::try_from(signal).map_err(|e| e.to_string())?;
        nix::sys::signal::kill(Pid::from_raw(rec.pid), sig).map_err(|e| format!("kill {name}: {e}"))
    }

    /// Kills a running container and collects its exit synchronously.
    pub(super) fn kill_and_wait(&mut self, name: &str) {
        let Some(rec) = self.state.containers.get(name) else {
            return;
        };
        if !rec.running() {
            return;
        }
        let pid = Pid::from_raw(rec.pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        if let Ok(s) = waitpid(pid, None) {
            self.record_exit(pid.as_raw(), s);
        }
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.kill_and_wait(name);
        if let Some(rec) = self.state.containers.remove(name) {
            delete_container(&self.cfg.state_root, &rec.id);
            self.changed();
        }
    }
}

/// The cgroup a bundle's container lives in.
fn cgroup_of(bundle: &Path) -> String {
    fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| {
            v.pointer("/linux/cgroupsPath")
                .and_then(|p| p.as_str())
                .map(String::from)
        })
        .unwrap_or_default()
}

pub(super) fn delete_container(state_root: &Path, id: &str) {
    let dir = state_root.join(id);
    if !dir.exists() {
        return;
    }
    match Container::load(dir.clone()) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                tracing::warn!(container = id, "delete: {e}");
                let _ = fs::remove_dir_all(&dir);
            }
        }
        Err(_) => {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

impl Shim {
    /// Why the pod's user namespace may not reach the container's root filesystem, if that is
    /// so (`: <dir> (mode …) cannot be searched by …`), or "": a failed mount then says which
    /// directory is in the way, which libcontainer's errors do not.
    fn unreachable_rootfs(&self, bundle: &Path) -> String {
        let Some(range) = &self.cfg.userns else {
            return String::new();
        };
        let root = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|spec| spec["root"]["path"].as_str().map(PathBuf::from));
        match root.and_then(|r| crate::rootfs::untraversable_by(&r, range.host_id, range.host_id)) {
            Some(u) => format!(
                ": {u} by the pod's user namespace (its root is host uid {})",
                range.host_id
            ),
            None => String::new(),
        }
    }
}

/// An error with its sources (`outer: inner: …`), skipping a source whose text the message
/// already holds: libcontainer's errors keep the cause (path, errno) out of their own text.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
