//! The runtime's raw syscalls, kept in one place. Everything outside this module is safe Rust.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates an overlayfs whiteout (a 0/0 character device), which is how overlayfs itself records a
/// deleted lower file. Layers are unpacked in this form so they stack directly as lowerdirs.
pub fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) })
}

/// Sets an extended attribute on `path` itself (never following a symlink).
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cstr(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated and the value slice is valid for its length.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Sets owner of `path` itself (a symlink is not followed).
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Sets the modification time of `path` itself, without following a symlink.
pub fn lutimes(path: &Path, mtime_secs: i64) -> io::Result<()> {
    let p = cstr(path)?;
    let ts = [
        libc::timespec {
            tv_sec: mtime_secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime_secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: `p` is NUL-terminated and `ts` is an array of two timespecs as utimensat requires.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Brings the loopback interface of the current network namespace up. A new network namespace
/// starts with `lo` down, and a pod without working loopback breaks ordinary programs.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call; the returned fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a valid socket and req a valid ifreq for these ioctls.
    let res = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: fd was returned by socket(2) above and is closed exactly once.
    unsafe { libc::close(fd) };
    if res < 0 {
        Err(err)
    } else {
        Ok(())
    }
}

/// Makes this process the reaper of its orphaned descendants, so that a shim collects the exit
/// status of container processes even after intermediate processes are gone.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
}

/// A descriptor that turns readable when process `pid` exits, so a wait can have a deadline
/// (poll) without signals or a second thread.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; on success it returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Receives one descriptor passed over a unix socket (SCM_RIGHTS): how libcontainer hands over
/// a container terminal's master side.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel installed this descriptor in our table for us alone.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other("no descriptor in the message"))
}

/// Sets a terminal's window size (TIOCSWINSZ), which the process on it gets as SIGWINCH.
pub fn set_window_size(tty: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) })
}

/// Names the calling thread (what `ps` shows as comm), e.g. "pause".
pub fn set_process_name(name: &str) {
    if let Ok(n) = CString::new(name) {
        // SAFETY: PR_SET_NAME reads at most 16 bytes from a NUL-terminated string.
        unsafe { libc::prctl(libc::PR_SET_NAME, n.as_ptr(), 0, 0, 0) };
    }
}

/// Fails unless this process has one thread. A child forked from a multithreaded process gets
/// a copy of memory in which locks held by the other threads stay locked forever; with one
/// thread nothing can start another between this check and the fork.
fn require_one_thread() -> io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads == 1 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "refusing to fork a process with {threads} threads"
        )))
    }
}

/// Forks this (single-threaded) process: how the shim daemonises.
pub fn fork() -> io::Result<nix::unistd::ForkResult> {
    require_one_thread()?;
    // SAFETY: the process has a single thread (checked above), so the child's copy of memory is
    // consistent and it may go on running ordinary Rust code.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Clones a child into new namespaces (`flags` are `CLONE_NEW*`), running `child` there. Used for
/// the pause process, which must be PID 1 of a new PID namespace when the pod shares one.
pub fn clone_into(flags: libc::c_int, child: &mut dyn FnMut() -> i32) -> io::Result<i32> {
    require_one_thread()?;
    let mut stack = vec![0u8; 256 * 1024];
    let cb: nix::sched::CloneCb = Box::new(|| child() as isize);
    let clone_flags = nix::sched::CloneFlags::from_bits_truncate(flags);
    // SAFETY: the process has a single thread (checked above), so the child gets a consistent
    // copy of memory; the stack buffer outlives the call in the parent and is private to the
    // child afterwards.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, clone_flags, Some(libc::SIGCHLD)) }
        .map_err(io::Error::from)?;
    Ok(pid.as_raw())
}

/// Writes this process's OOM score adjustment.
pub fn set_oom_score_adj(value: i32) -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string())
}

/// Closes every descriptor from `first` up, so the pause process holds none of the shim's.
pub fn close_fds_from(first: u32) {
    // SAFETY: close_range only closes descriptors; the caller owns no Rust objects wrapping them
    // afterwards (it is the freshly cloned pause process).
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// A detached clone of the directory tree at `path` whose file owners are shifted through the
/// user namespace `userns` (an idmapped mount): on-disk ID 0 reads as the namespace's root.
/// Lower layers are shared between pods, so they are shifted this way instead of chowned.
pub fn idmapped_clone(path: &Path, userns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: `p` is NUL-terminated; open_tree returns a new descriptor we then own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: `attr` and `empty` outlive the call; the size passed is that of `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached mount (from `idmapped_clone`) at `target`.
pub fn attach_mount(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    let empty = c"";
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
