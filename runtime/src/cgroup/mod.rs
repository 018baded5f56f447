//! The cgroup hierarchies of the node: their layout (one hierarchy per v1 controller, or the v2
//! unified one), limits podlet writes on pod and QoS cgroups, usage read back for stats, and
//! removal of a pod's subtree. Per-container cgroups are made by libcontainer (libcgroups).
//!
//! Writes go through a [`Host`](crate::host::Host); the mount points come from `mountinfo`
//! (a parameter), so tests run on a temporary tree.

mod limits;
mod stats;
mod tree;

use std::fs;
use std::path::{Path, PathBuf};

pub use limits::{apply, apply_on, shares_to_weight, Limits};
pub use stats::{cpu_usage_ns, memory_usage, memory_working_set, oom_killed};
pub use tree::{procs, remove_tree, remove_tree_on};

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

/// The cgroup layout of the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// One hierarchy per controller (hybrid hosts count as v1).
    V1 {
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

impl Layout {
    /// Reads the layout from `mountinfo`.
    pub fn detect(mountinfo: &Path) -> Self {
        let text = fs::read_to_string(mountinfo).unwrap_or_default();
        let (mut cpu, mut memory, mut pids, mut v2) = (None, None, None, None);
        for l in text.lines() {
            let Some((left, right)) = l.split_once(" - ") else {
                continue;
            };
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or_default();
            let opts = r.nth(1).unwrap_or_default();
            let Some(mp) = left.split(' ').nth(4).map(PathBuf::from) else {
                continue;
            };
            match fstype {
                "cgroup" => {
                    let has = |c: &str| opts.split(',').any(|o| o == c);
                    if has("cpu") {
                        cpu = Some(mp.clone());
                    }
                    if has("memory") {
                        memory = Some(mp.clone());
                    }
                    if has("pids") {
                        pids = Some(mp);
                    }
                }
                "cgroup2" => v2 = v2.or(Some(mp)),
                _ => {}
            }
        }
        match (&cpu, &memory, v2) {
            (None, None, Some(root)) => Layout::V2 { root },
            _ => Layout::V1 { cpu, memory, pids },
        }
    }
}

/// The controllers a cgroup v2 root offers (`cgroup.controllers`), or None where the file is
/// absent (a tree that is not a cgroup2 mount, as in tests).
pub fn available_v2(root: &Path) -> Option<Vec<String>> {
    let text = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    Some(text.split_whitespace().map(str::to_owned).collect())
}

/// Controllers podlet enforces limits with that this layout lacks (warned about at start).
pub fn missing_controllers(layout: &Layout) -> Vec<&'static str> {
    match layout {
        Layout::V1 { cpu, memory, pids } => [("cpu", cpu), ("memory", memory), ("pids", pids)]
            .into_iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| n)
            .collect(),
        Layout::V2 { root } => {
            let offered = available_v2(root);
            ["cpu", "memory", "pids"]
                .into_iter()
                .filter(|c| offered.as_ref().is_some_and(|o| !o.iter().any(|x| x == c)))
                .collect()
        }
    }
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

    #[test]
    fn detects_v1_hybrid_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        let mi = dir.path().join("mi");
        fs::write(&mi, "30 25 0:26 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw\n\
                        31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:11 - cgroup cgroup rw,cpu,cpuacct\n\
                        32 25 0:28 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory\n").unwrap();
        assert_eq!(
            Layout::detect(&mi),
            Layout::V1 {
                cpu: Some("/sys/fs/cgroup/cpu,cpuacct".into()),
                memory: Some("/sys/fs/cgroup/memory".into()),
                pids: None
            }
        );
        fs::write(
            &mi,
            "30 25 0:26 / /sys/fs/cgroup rw shared:10 - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        assert_eq!(
            Layout::detect(&mi),
            Layout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
    }
}
