//! Runs OCI bundles and execs into containers with libcontainer, from a single-threaded process
//! (the shim, `podlet exec`, or `podlet oci run` for side-by-side benchmarks with crun and runc).

use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};

fn exit_code(s: WaitStatus) -> i32 {
    match s {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    }
}

/// Creates, starts, waits for and deletes a container, like `crun run`. Returns its exit code.
pub fn run_bundle(state_root: &Path, id: &str, bundle: &Path) -> Result<i32, String> {
    let mut c = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(|e| e.to_string())?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("create: {e}"))?;
    if let Err(e) = c.start() {
        let _ = c.delete(true);
        return Err(format!("start: {e}"));
    }
    let pid = c.pid().ok_or("container has no pid")?;
    let status = waitpid(pid, None).map_err(|e| e.to_string())?;
    c.delete(true).map_err(|e| format!("delete: {e}"))?;
    Ok(exit_code(status))
}

/// Runs `args` inside a running container (its namespaces, cgroup and root), with this
/// process's stdio. Returns the exit code; past `timeout` the command is killed and the exit code
/// is [`TIMED_OUT`].
pub fn exec(
    state_root: &Path,
    id: &str,
    args: Vec<String>,
    timeout: Option<std::time::Duration>,
) -> Result<i32, String> {
    // As the container's own process: its user, group and supplementary groups.
    let container = libcontainer::container::Container::load(state_root.join(id))
        .map_err(|e| format!("container {id}: {e}"))?;
    let spec = oci_spec::runtime::Spec::load(container.bundle().join("config.json"))
        .map_err(|e| format!("container {id}: {e}"))?;
    let user = spec
        .process()
        .as_ref()
        .map(|p| p.user().clone())
        .unwrap_or_default();
    // Under the container's AppArmor profile too, as runc and crun run exec processes:
    // libcontainer's tenant builder takes it only when told.
    let apparmor = spec
        .process()
        .as_ref()
        .and_then(|p| p.apparmor_profile().clone());
    let pid = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(|e| e.to_string())?
        .as_tenant()
        .with_user(Some(user.uid()))
        .with_group(Some(user.gid()))
        .with_additional_gids(user.additional_gids().clone().unwrap_or_default())
        .with_apparmor(apparmor)
        .with_container_args(args)
        .with_detach(true)
        .build()
        .map_err(|e| format!("exec: {e}"))?;
    if let Some(t) = timeout {
        if !exited_within(pid.as_raw(), t)? {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Ok(TIMED_OUT);
        }
    }
    let status = waitpid(pid, None).map_err(|e| e.to_string())?;
    Ok(exit_code(status))
}

/// The exit code of an exec killed at its deadline (timeout(1)'s).
pub const TIMED_OUT: i32 = 124;

fn exited_within(pid: i32, t: std::time::Duration) -> Result<bool, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let fd = crate::sys::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    let deadline = std::time::Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}
