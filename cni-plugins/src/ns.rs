//! The one way into a network namespace: a closure run on a short-lived thread that has joined
//! the namespace, so the calling thread (and process) never changes namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Opens a network namespace file, checking that it is one.
pub fn open(path: &Path) -> io::Result<File> {
    let f = File::open(path)?;
    let st = nix::sys::statfs::fstatfs(&f)?;
    // nsfs (and procfs for /proc/<pid>/ns/net links) are the only places a netns handle lives.
    let nsfs = nix::sys::statfs::FsType(0x6e73_6673);
    if st.filesystem_type() != nsfs && st.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a network namespace", path.display()),
        ));
    }
    Ok(f)
}

/// Runs `f` inside the network namespace at `path`.
pub fn with_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread inside the network namespace panicked"))?
    })
}

/// Writes a sysctl of the current thread's network namespace (`net.ipv4.ip_forward` as
/// `net/ipv4/ip_forward`), skipping the write when the value is already set.
pub fn sysctl(key: &str, value: &str) -> io::Result<()> {
    let p = Path::new("/proc/sys").join(key);
    if std::fs::read_to_string(&p)
        .map(|v| v.trim() == value)
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::write(&p, value)
}
