//! The seam between podlet's runtime and the host: every operation that changes the host's
//! mounts, cgroups, processes or special files goes through [`Host`]. [`LinuxHost`] does it
//! (through `sys` and nix); [`RecordingHost`] only records it, so the code that decides *what*
//! to do (overlay options, idmapped lowers, cgroup files and values, clean-up order) is unit
//! tested without root, while the end-to-end tests check that it *was* done.
//!
//! Reads stay outside the seam: they take their roots (`mountinfo`, the cgroup mount points,
//! `/proc`) as parameters, so tests point them at a temporary tree.
//!
//! Mount namespaces, `pivot_root` and `setns` of containers are libcontainer's, behind its own
//! `Syscall` trait; the runtime itself never calls them, so they are not part of this trait.

mod linux;
mod recording;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;

pub use linux::LinuxHost;
pub use recording::RecordingHost;

/// Privileged operations on the host.
pub trait Host: Send + Sync {
    /// mount(2).
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), HostError>;

    /// Attaches at `target` a clone of the tree at `source` whose file owners are shifted
    /// through the user namespace at `userns` (`/proc/<pid>/ns/user`): an idmapped mount.
    fn mount_idmapped(&self, source: &Path, target: &Path, userns: &Path) -> Result<(), HostError>;

    /// umount2(2): removes the topmost mount at `target`.
    fn unmount(&self, target: &Path, flags: MntFlags) -> Result<(), HostError>;

    /// Creates a directory and its missing parents (a cgroup, a mount point).
    fn create_dir_all(&self, path: &Path) -> Result<(), HostError>;

    /// Removes an empty directory (a cgroup, a mount point).
    fn remove_dir(&self, path: &Path) -> Result<(), HostError>;

    /// Changes the owner of `path`, following a symlink.
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), HostError>;

    /// Changes the owner of `path` itself, never following a symlink.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), HostError>;

    /// Writes `value` to `path` (a cgroup control file) in one write, as `std::fs::write` does.
    fn write_file(&self, path: &Path, value: &str) -> Result<(), HostError>;

    /// Sends `signal` to process `pid`.
    fn kill(&self, pid: i32, signal: Signal) -> Result<(), HostError>;

    /// Creates an overlayfs whiteout (a 0/0 character device) at `path`.
    fn mknod_whiteout(&self, path: &Path) -> Result<(), HostError>;

    /// Sets an extended attribute on `path` itself (`trusted.*` needs privilege).
    fn set_xattr(&self, path: &Path, name: &str, value: &[u8]) -> Result<(), HostError>;
}

/// One operation on the host: what [`RecordingHost`] records and what a [`HostError`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MsFlags,
        data: Option<String>,
    },
    MountIdmapped {
        source: PathBuf,
        target: PathBuf,
        userns: PathBuf,
    },
    Unmount {
        target: PathBuf,
        flags: MntFlags,
    },
    CreateDirAll(PathBuf),
    RemoveDir(PathBuf),
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    Lchown {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    Write {
        path: PathBuf,
        value: String,
    },
    Kill {
        pid: i32,
        signal: Signal,
    },
    MknodWhiteout(PathBuf),
    SetXattr {
        path: PathBuf,
        name: String,
        value: Vec<u8>,
    },
}

impl Op {
    /// The file or mount point the operation acts on (none for a signal).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Op::Mount { target, .. }
            | Op::MountIdmapped { target, .. }
            | Op::Unmount { target, .. } => Some(target),
            Op::CreateDirAll(path)
            | Op::RemoveDir(path)
            | Op::MknodWhiteout(path)
            | Op::Chown { path, .. }
            | Op::Lchown { path, .. }
            | Op::Write { path, .. }
            | Op::SetXattr { path, .. } => Some(path),
            Op::Kill { .. } => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Mount { target, fstype, .. } => {
                write!(f, "mounting {fstype} at {}", target.display())
            }
            Op::MountIdmapped {
                source,
                target,
                userns,
            } => write!(
                f,
                "idmapped mount of {} at {} through {}",
                source.display(),
                target.display(),
                userns.display()
            ),
            Op::Unmount { target, .. } => write!(f, "unmounting {}", target.display()),
            Op::CreateDirAll(p) => write!(f, "creating {}", p.display()),
            Op::RemoveDir(p) => write!(f, "removing {}", p.display()),
            Op::Chown { path, uid, gid } | Op::Lchown { path, uid, gid } => {
                write!(f, "changing the owner of {} to {uid}:{gid}", path.display())
            }
            Op::Write { path, value } => write!(f, "writing {value:?} to {}", path.display()),
            Op::Kill { pid, signal } => write!(f, "sending {signal} to process {pid}"),
            Op::MknodWhiteout(p) => write!(f, "creating the whiteout {}", p.display()),
            Op::SetXattr { path, name, .. } => {
                write!(f, "setting {name} on {}", path.display())
            }
        }
    }
}

/// A failed host operation: what was tried, on which path, and the OS error.
///
/// The OS error is part of the message because callers report errors with `Display` alone;
/// it is not also given as `source()`, which would print it twice in a chain.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {error}")]
pub struct HostError {
    op: Box<Op>,
    error: io::Error,
}

impl HostError {
    pub fn new(op: Op, error: io::Error) -> Self {
        Self {
            op: Box::new(op),
            error,
        }
    }

    /// The operation that failed.
    pub fn op(&self) -> &Op {
        &self.op
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.error.kind()
    }

    /// The errno, when the error came from the kernel.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.error.raw_os_error()
    }

    /// The OS error alone, for callers whose errors carry the path themselves.
    pub fn into_io(self) -> io::Error {
        self.error
    }
}
