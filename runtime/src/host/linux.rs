//! The host itself: each operation is one call into nix, std or `sys`.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;

use super::{Host, HostError, Op};
use crate::sys;

/// Does what it is asked on this machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxHost;

impl Host for LinuxHost {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), HostError> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
            HostError::new(
                Op::Mount {
                    source: source.into(),
                    target: target.into(),
                    fstype: fstype.into(),
                    flags,
                    data: data.map(Into::into),
                },
                e.into(),
            )
        })
    }

    fn mount_idmapped(&self, source: &Path, target: &Path, userns: &Path) -> Result<(), HostError> {
        let err = |e| {
            HostError::new(
                Op::MountIdmapped {
                    source: source.into(),
                    target: target.into(),
                    userns: userns.into(),
                },
                e,
            )
        };
        let ns = fs::File::open(userns).map_err(err)?;
        let tree = sys::idmapped_clone(source, ns.as_fd()).map_err(err)?;
        sys::attach_mount(tree.as_fd(), target).map_err(err)
    }

    fn unmount(&self, target: &Path, flags: MntFlags) -> Result<(), HostError> {
        nix::mount::umount2(target, flags).map_err(|e| {
            HostError::new(
                Op::Unmount {
                    target: target.into(),
                    flags,
                },
                e.into(),
            )
        })
    }

    fn create_dir_all(&self, path: &Path) -> Result<(), HostError> {
        fs::create_dir_all(path).map_err(|e| HostError::new(Op::CreateDirAll(path.into()), e))
    }

    fn remove_dir(&self, path: &Path) -> Result<(), HostError> {
        fs::remove_dir(path).map_err(|e| HostError::new(Op::RemoveDir(path.into()), e))
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), HostError> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
            HostError::new(
                Op::Chown {
                    path: path.into(),
                    uid,
                    gid,
                },
                e,
            )
        })
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), HostError> {
        sys::lchown(path, uid, gid).map_err(|e| {
            HostError::new(
                Op::Lchown {
                    path: path.into(),
                    uid,
                    gid,
                },
                e,
            )
        })
    }

    fn write_file(&self, path: &Path, value: &str) -> Result<(), HostError> {
        fs::write(path, value).map_err(|e| {
            HostError::new(
                Op::Write {
                    path: path.into(),
                    value: value.into(),
                },
                e,
            )
        })
    }

    fn kill(&self, pid: i32, signal: Signal) -> Result<(), HostError> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| HostError::new(Op::Kill { pid, signal }, e.into()))
    }

    fn mknod_whiteout(&self, path: &Path) -> Result<(), HostError> {
        sys::mknod_whiteout(path).map_err(|e| HostError::new(Op::MknodWhiteout(path.into()), e))
    }

    fn set_xattr(&self, path: &Path, name: &str, value: &[u8]) -> Result<(), HostError> {
        sys::lsetxattr(path, name, value).map_err(|e| {
            HostError::new(
                Op::SetXattr {
                    path: path.into(),
                    name: name.into(),
                    value: value.into(),
                },
                e,
            )
        })
    }
}
