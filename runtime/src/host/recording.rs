//! A host that does nothing and records what it was asked to do, for unit tests that check the
//! operations (and their order) a piece of runtime code would perform, without root.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;

use super::{Host, HostError, Op};

/// Records every operation that succeeds, in order. It keeps a table of what is mounted where,
/// so unmounting stops (EINVAL) once nothing is left, as the kernel does; failures can be
/// injected by path. Failed operations are not recorded: [`ops`](Self::ops) is what was done.
#[derive(Debug, Default)]
pub struct RecordingHost {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    ops: Vec<Op>,
    mounted: Vec<PathBuf>,
    failures: Vec<Failure>,
}

struct Failure {
    matches: Box<dyn Fn(&Op) -> bool + Send>,
    errno: Errno,
    times: usize,
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Failure({}, {} more)", self.errno, self.times)
    }
}

impl RecordingHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Something is already mounted at `target` (once per call: mounts stack).
    pub fn with_mount(self, target: impl Into<PathBuf>) -> Self {
        self.lock().mounted.push(target.into());
        self
    }

    /// The next `times` operations on `path` fail with `errno`.
    pub fn failing(self, path: impl Into<PathBuf>, errno: Errno, times: usize) -> Self {
        let path = path.into();
        self.failing_when(move |op| op.path() == Some(&path), errno, times)
    }

    /// The next `times` operations that `matches` picks fail with `errno`.
    pub fn failing_when(
        self,
        matches: impl Fn(&Op) -> bool + Send + 'static,
        errno: Errno,
        times: usize,
    ) -> Self {
        self.lock().failures.push(Failure {
            matches: Box::new(matches),
            errno,
            times,
        });
        self
    }

    /// The operations done so far, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().ops.clone()
    }

    /// What is mounted now, in the order it was mounted.
    pub fn mounted(&self) -> Vec<PathBuf> {
        self.lock().mounted.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; its records still
        // serve the report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, op: Op) -> Result<(), HostError> {
        let mut s = self.lock();
        if let Some(f) = s
            .failures
            .iter_mut()
            .find(|f| f.times > 0 && (f.matches)(&op))
        {
            f.times -= 1;
            return Err(HostError::new(op, io::Error::from(f.errno)));
        }
        match &op {
            Op::Mount { target, .. } | Op::MountIdmapped { target, .. } => {
                s.mounted.push(target.clone())
            }
            Op::Unmount { target, .. } => match s.mounted.iter().rposition(|m| m == target) {
                Some(i) => {
                    s.mounted.remove(i);
                }
                None => return Err(HostError::new(op, io::Error::from(Errno::EINVAL))),
            },
            _ => {}
        }
        s.ops.push(op);
        Ok(())
    }
}

impl Host for RecordingHost {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), HostError> {
        self.record(Op::Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            flags,
            data: data.map(Into::into),
        })
    }

    fn mount_idmapped(&self, source: &Path, target: &Path, userns: &Path) -> Result<(), HostError> {
        self.record(Op::MountIdmapped {
            source: source.into(),
            target: target.into(),
            userns: userns.into(),
        })
    }

    fn unmount(&self, target: &Path, flags: MntFlags) -> Result<(), HostError> {
        self.record(Op::Unmount {
            target: target.into(),
            flags,
        })
    }

    fn create_dir_all(&self, path: &Path) -> Result<(), HostError> {
        self.record(Op::CreateDirAll(path.into()))
    }

    fn remove_dir(&self, path: &Path) -> Result<(), HostError> {
        self.record(Op::RemoveDir(path.into()))
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), HostError> {
        self.record(Op::Chown {
            path: path.into(),
            uid,
            gid,
        })
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), HostError> {
        self.record(Op::Lchown {
            path: path.into(),
            uid,
            gid,
        })
    }

    fn write_file(&self, path: &Path, value: &str) -> Result<(), HostError> {
        self.record(Op::Write {
            path: path.into(),
            value: value.into(),
        })
    }

    fn kill(&self, pid: i32, signal: Signal) -> Result<(), HostError> {
        self.record(Op::Kill { pid, signal })
    }

    fn mknod_whiteout(&self, path: &Path) -> Result<(), HostError> {
        self.record(Op::MknodWhiteout(path.into()))
    }

    fn set_xattr(&self, path: &Path, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.record(Op::SetXattr {
            path: path.into(),
            name: name.into(),
            value: value.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounting_follows_the_mount_table() {
        let h = RecordingHost::new().with_mount("/a");
        h.mount("tmpfs", Path::new("/a"), "tmpfs", MsFlags::empty(), None)
            .unwrap();
        for _ in 0..2 {
            h.unmount(Path::new("/a"), MntFlags::MNT_DETACH).unwrap();
        }
        let e = h
            .unmount(Path::new("/a"), MntFlags::MNT_DETACH)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(h.mounted().is_empty());
        assert_eq!(h.ops().len(), 3, "the refused unmount is not recorded");
    }

    #[test]
    fn injected_failures_run_out() {
        let h = RecordingHost::new().failing("/cg/x", Errno::EBUSY, 1);
        let e = h.remove_dir(Path::new("/cg/x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
        assert_eq!(
            e.to_string(),
            "removing /cg/x: Device or resource busy (os error 16)"
        );
        h.remove_dir(Path::new("/cg/x")).unwrap();
        h.kill(7, Signal::SIGKILL).unwrap();
        assert_eq!(
            h.ops(),
            [
                Op::RemoveDir("/cg/x".into()),
                Op::Kill {
                    pid: 7,
                    signal: Signal::SIGKILL
                }
            ]
        );
    }
}
