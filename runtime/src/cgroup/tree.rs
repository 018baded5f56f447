//! Clean-up of a pod's cgroup subtree: what still runs there is killed, then every cgroup is
//! removed, children first, in every hierarchy.

use std::fs;
use std::path::Path;

use nix::sys::signal::Signal;

use super::hierarchies;
use crate::host::{Host, HostError, LinuxHost};

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
pub fn remove_tree(mountinfo: &Path, rel: &str) -> Result<(), HostError> {
    remove_tree_on(&LinuxHost, mountinfo, rel)
}

/// [`remove_tree`] through `host`. A hierarchy whose removal fails does not stop the others;
/// the last failure is returned.
pub fn remove_tree_on(host: &dyn Host, mountinfo: &Path, rel: &str) -> Result<(), HostError> {
    for pid in procs(mountinfo, rel) {
        let _ = host.kill(pid, Signal::SIGKILL);
    }
    let mut last = Ok(());
    for h in hierarchies(mountinfo) {
        let base = h.join(rel.trim_start_matches('/'));
        if base.exists() {
            if let Err(e) = rmdir_tree(host, &base) {
                last = Err(e);
            }
        }
    }
    last
}

fn rmdir_tree(host: &dyn Host, dir: &Path) -> Result<(), HostError> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(host, &e.path())?;
            }
        }
    }
    // A killed process leaves its cgroup a moment after it dies.
    for _ in 0..100 {
        match host.remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => return Err(e),
        }
    }
    host.remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Op, RecordingHost};
    use nix::errno::Errno;
    use std::path::PathBuf;

    /// cpu and memory hierarchies under a temporary directory, listed in its `mountinfo`, each
    /// with a pod cgroup `kubepods/podx` holding `pause`, `app` and `app/sub`.
    fn pod_tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut mountinfo = String::new();
        for (i, h) in ["cpu", "memory"].iter().enumerate() {
            mountinfo.push_str(&format!(
                "{} 25 0:2{i} / {} rw - cgroup cgroup rw,{h}\n",
                30 + i,
                d.join(h).display()
            ));
            let pod = d.join(h).join("kubepods/podx");
            for (sub, procs) in [
                ("", ""),
                ("pause", "10\n"),
                ("app", "12\n13\n"),
                ("app/sub", "14\n"),
            ] {
                fs::create_dir_all(pod.join(sub)).unwrap();
                fs::write(pod.join(sub).join("cgroup.procs"), procs).unwrap();
            }
        }
        fs::write(d.join("mountinfo"), mountinfo).unwrap();
        let mi = d.join("mountinfo");
        (dir, mi)
    }

    fn removed(ops: &[Op]) -> Vec<PathBuf> {
        ops.iter()
            .filter_map(|op| match op {
                Op::RemoveDir(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn kills_first_then_removes_children_before_parents_in_every_hierarchy() {
        let (dir, mi) = pod_tree();
        let h = RecordingHost::new();
        remove_tree_on(&h, &mi, "/kubepods/podx").unwrap();
        let ops = h.ops();
        let kill = |pid| Op::Kill {
            pid,
            signal: Signal::SIGKILL,
        };
        assert_eq!(ops[..4], [kill(10), kill(12), kill(13), kill(14)]);
        let gone = removed(&ops[4..]);
        assert_eq!(gone.len(), ops.len() - 4, "only kills and removals");
        let at = |p: PathBuf| {
            gone.iter()
                .position(|g| *g == p)
                .unwrap_or_else(|| panic!("{} not removed", p.display()))
        };
        for h in ["cpu", "memory"] {
            let pod = dir.path().join(h).join("kubepods/podx");
            assert!(at(pod.join("app/sub")) < at(pod.join("app")));
            for child in ["app", "pause"] {
                assert!(at(pod.join(child)) < at(pod.clone()));
            }
        }
        let pods = |h: &str| at(dir.path().join(h).join("kubepods/podx"));
        assert_eq!(pods("cpu"), 3, "the cpu hierarchy is done first");
        assert_eq!(pods("memory"), gone.len() - 1);
    }

    #[test]
    fn a_busy_cgroup_is_retried_until_its_processes_have_left() {
        let (dir, mi) = pod_tree();
        let app = dir.path().join("cpu/kubepods/podx/app");
        let h = RecordingHost::new().failing(&app, Errno::EBUSY, 3);
        remove_tree_on(&h, &mi, "kubepods/podx").unwrap();
        assert_eq!(removed(&h.ops()).iter().filter(|p| **p == app).count(), 1);
    }

    #[test]
    fn a_cgroup_that_cannot_go_is_reported_and_the_other_hierarchies_still_go() {
        let (dir, mi) = pod_tree();
        let app = dir.path().join("cpu/kubepods/podx/app");
        let h = RecordingHost::new().failing(&app, Errno::EACCES, 1);
        let e = remove_tree_on(&h, &mi, "kubepods/podx").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        assert_eq!(e.op(), &Op::RemoveDir(app));
        let gone = removed(&h.ops());
        assert!(!gone.contains(&dir.path().join("cpu/kubepods/podx")));
        assert!(gone.contains(&dir.path().join("memory/kubepods/podx")));
    }

    #[test]
    fn a_pod_without_cgroups_is_nothing_to_do() {
        let (_dir, mi) = pod_tree();
        let h = RecordingHost::new();
        remove_tree_on(&h, &mi, "kubepods/pody").unwrap();
        assert!(h.ops().is_empty());
    }
}
