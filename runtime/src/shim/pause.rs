//! The pod's pause process: cloned by the shim into the pod's new namespaces, which it holds
//! open for the containers to join, and the reaper of orphans in a shared PID namespace.

use std::fs;
use std::path::PathBuf;

use libcgroups::common::{CgroupConfig, CgroupManager};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::SandboxConfig;
use crate::sys;

/// Clones the pause process into the namespaces `cfg` asks for and, in a new user namespace,
/// maps its IDs and places it in its cgroup. Returns its pid.
pub(super) fn spawn(cfg: &SandboxConfig) -> Result<i32, String> {
    let mut flags = 0;
    if cfg.new_net {
        flags |= libc::CLONE_NEWNET;
    }
    if cfg.new_ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if cfg.new_uts {
        flags |= libc::CLONE_NEWUTS;
    }
    if cfg.new_pid {
        flags |= libc::CLONE_NEWPID;
    }
    if cfg.userns.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    let pause_cfg = cfg.clone();
    let pause_pid = sys::clone_into(flags, &mut || pause_main(&pause_cfg))
        .map_err(|e| format!("creating the pause process: {e}"))?;
    if let Some(range) = &cfg.userns {
        // Written from outside (only a privileged parent may map a whole range); before any
        // container joins, since the agent waits for the sandbox to be ready.
        for f in ["uid_map", "gid_map"] {
            let path = format!("/proc/{pause_pid}/{f}");
            if let Err(e) = fs::write(&path, range.map_line()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pause_pid), Signal::SIGKILL);
                return Err(format!("{path}: {e}"));
            }
        }
        let placed = cgroup_manager(&cfg.pause_cgroup).and_then(|m| {
            m.add_task(Pid::from_raw(pause_pid))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = placed {
            let _ = nix::sys::signal::kill(Pid::from_raw(pause_pid), Signal::SIGKILL);
            return Err(format!("placing pause in {}: {e}", cfg.pause_cgroup));
        }
    }
    Ok(pause_pid)
}

/// Kills the pause process and collects it.
pub(super) fn stop(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

/// Removes the pause process's cgroup once it is gone.
pub(super) fn remove_cgroup(path: &str) {
    if let Ok(m) = cgroup_manager(path) {
        let _ = m.remove();
    }
}

fn pause_main(cfg: &SandboxConfig) -> i32 {
    sys::set_process_name("pause");
    sys::close_fds_from(3);
    if cfg.new_uts && nix::unistd::sethostname(&cfg.hostname).is_err() {
        return 2;
    }
    if cfg.new_net && sys::loopback_up().is_err() {
        return 3;
    }
    // Pause moves itself into its cgroup ("0" is the writer). A cgroup v1 migration waits for
    // an RCU grace period (~10 ms); done here it overlaps with the shim getting ready and the
    // agent preparing the first container, instead of delaying both.
    // In a new user namespace it may not create cgroups: the shim places it instead.
    if cfg.userns.is_some() {
        return pause_wait();
    }
    let placed = cgroup_manager(&cfg.pause_cgroup)
        .and_then(|m| m.add_task(Pid::from_raw(0)).map_err(|e| e.to_string()));
    if let Err(e) = placed {
        eprintln!("pause: joining cgroup {}: {e}", cfg.pause_cgroup);
        return 4;
    }
    pause_wait()
}

fn pause_wait() -> i32 {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if s == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return 0,
            _ => {}
        }
    }
}

fn cgroup_manager(path: &str) -> Result<libcgroups::common::AnyCgroupManager, String> {
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: PathBuf::from(path),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .map_err(|e| format!("cgroup {path}: {e}"))
}
