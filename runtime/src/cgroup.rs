//! The cgroup hierarchies of the node and removal of a pod's subtree. Per-container cgroups are
//! made by libcontainer (libcgroups); the agent removes what is left of a pod when it is gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Mount points of the cgroup hierarchies (v1 controllers and the v2 unified one) listed in
/// `mountinfo`.
pub fn hierarchies(mountinfo: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string(mountinfo).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| PathBuf::from(left.split(' ').nth(4).unwrap_or("")))
        })
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// Every process in `rel` (a path relative to each hierarchy root) and its descendants.
pub fn procs(mountinfo: &Path, rel: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for h in hierarchies(mountinfo) {
        let base = h.join(rel.trim_start_matches('/'));
        collect_procs(&base, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_procs(&e.path(), out);
            }
        }
    }
}

/// Kills whatever still runs in `rel` and removes it, children first, in every hierarchy.
pub fn remove_tree(mountinfo: &Path, rel: &str) -> io::Result<()> {
    for pid in procs(mountinfo, rel) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut last = Ok(());
    for h in hierarchies(mountinfo) {
        let base = h.join(rel.trim_start_matches('/'));
        if base.exists() {
            if let Err(e) = rmdir_tree(&base) {
                last = Err(io::Error::other(format!("{}: {e}", base.display())));
            }
        }
    }
    last
}

fn rmdir_tree(dir: &Path) -> io::Result<()> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path())?;
            }
        }
    }
    // A killed process leaves its cgroup a moment after it dies.
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => return Err(e),
        }
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_hierarchies() {
        let dir = tempfile::tempdir().unwrap();
        let mi = dir.path().join("mountinfo");
        fs::write(
            &mi,
            "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
             31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory\n\
             32 25 0:28 / /proc rw - proc proc rw\n",
        )
        .unwrap();
        assert_eq!(
            hierarchies(&mi),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
    }
}
