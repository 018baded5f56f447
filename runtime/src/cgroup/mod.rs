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

/// Values podlet writes on pod- and QoS-level cgroups (containers get theirs through the OCI
/// spec, applied by libcontainer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// cgroup v1 shares (2..262144); converted for cgroup v2's `cpu.weight`.
    pub cpu_shares: Option<u64>,
    /// CFS quota per `cpu_period` in µs.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory: Option<i64>,
    pub pids: Option<i64>,
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

/// The kubelet's (and runc's) mapping of cgroup v1 shares to cgroup v2 weight.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// Creates `rel` (and parents) and writes `limits` there.
pub fn apply(layout: &Layout, rel: &str, limits: &Limits) -> io::Result<()> {
    let rel = rel.trim_start_matches('/');
    match layout {
        Layout::V1 { cpu, memory, pids } => {
            if let Some(base) = cpu {
                let d = base.join(rel);
                fs::create_dir_all(&d)?;
                if let Some(s) = limits.cpu_shares {
                    write(&d, "cpu.shares", &s.to_string())?;
                }
                if let Some(p) = limits.cpu_period {
                    write(&d, "cpu.cfs_period_us", &p.to_string())?;
                }
                write(
                    &d,
                    "cpu.cfs_quota_us",
                    &limits.cpu_quota.unwrap_or(-1).to_string(),
                )?;
            }
            if let Some(base) = memory {
                let d = base.join(rel);
                fs::create_dir_all(&d)?;
                write(
                    &d,
                    "memory.limit_in_bytes",
                    &limits.memory.unwrap_or(-1).to_string(),
                )?;
            }
            if let Some(base) = pids {
                let d = base.join(rel);
                fs::create_dir_all(&d)?;
                let v = limits
                    .pids
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "max".into());
                write(&d, "pids.max", &v)?;
            }
        }
        Layout::V2 { root } => {
            // Only controllers the root offers can be delegated and written: on a hybrid host the
            // cpu/memory/pids controllers stay bound to v1, and a cgroup2 mount offers none of them.
            let offered = available_v2(root);
            let has = |c: &str| offered.as_ref().is_none_or(|o| o.iter().any(|x| x == c));
            let delegate = ["cpu", "memory", "pids"]
                .iter()
                .filter(|c| has(c))
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            // Each level must delegate the controllers to its children.
            let mut cur = root.clone();
            for part in Path::new(rel).components() {
                let ctl = cur.join("cgroup.subtree_control");
                if ctl.exists() && !delegate.is_empty() {
                    let _ = write(&cur, "cgroup.subtree_control", &delegate);
                }
                cur.push(part);
                fs::create_dir_all(&cur)?;
            }
            if has("cpu") {
                if let Some(s) = limits.cpu_shares {
                    write(&cur, "cpu.weight", &shares_to_weight(s).to_string())?;
                }
                let period = limits.cpu_period.unwrap_or(100_000);
                let quota = limits
                    .cpu_quota
                    .filter(|q| *q > 0)
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "max".into());
                write(&cur, "cpu.max", &format!("{quota} {period}"))?;
            }
            if has("memory") {
                write(
                    &cur,
                    "memory.max",
                    &limits
                        .memory
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "max".into()),
                )?;
            }
            if has("pids") {
                write(
                    &cur,
                    "pids.max",
                    &limits
                        .pids
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "max".into()),
                )?;
            }
        }
    }
    Ok(())
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

/// Memory charged to cgroup `rel`, in bytes.
pub fn memory_usage(layout: &Layout, rel: &str) -> Option<u64> {
    let rel = rel.trim_start_matches('/');
    let file = match layout {
        Layout::V1 {
            memory: Some(m), ..
        } => m.join(rel).join("memory.usage_in_bytes"),
        Layout::V1 { memory: None, .. } => return None,
        Layout::V2 { root } => root.join(rel).join("memory.current"),
    };
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// CPU time used by cgroup `rel` and its descendants, in nanoseconds.
pub fn cpu_usage_ns(layout: &Layout, rel: &str) -> Option<u64> {
    let rel = rel.trim_start_matches('/');
    match layout {
        // cpuacct is co-mounted with cpu (`cpu,cpuacct`) or a sibling hierarchy.
        Layout::V1 { cpu: Some(c), .. } => [c.clone(), c.with_file_name("cpuacct")]
            .iter()
            .find_map(|h| fs::read_to_string(h.join(rel).join("cpuacct.usage")).ok())?
            .trim()
            .parse()
            .ok(),
        Layout::V1 { cpu: None, .. } => None,
        Layout::V2 { root } => fs::read_to_string(root.join(rel).join("cpu.stat"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us * 1000),
    }
}

/// The working set of cgroup `rel` (usage less inactive file pages), as the kubelet and
/// cAdvisor count it.
pub fn memory_working_set(layout: &Layout, rel: &str) -> Option<u64> {
    let usage = memory_usage(layout, rel)?;
    let r = rel.trim_start_matches('/');
    let (file, key) = match layout {
        Layout::V1 {
            memory: Some(m), ..
        } => (m.join(r).join("memory.stat"), "total_inactive_file "),
        Layout::V1 { memory: None, .. } => return None,
        Layout::V2 { root } => (root.join(r).join("memory.stat"), "inactive_file "),
    };
    let inactive = fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// Whether the kernel OOM-killed something in the memory cgroup `rel`.
pub fn oom_killed(layout: &Layout, rel: &str) -> bool {
    let rel = rel.trim_start_matches('/');
    let (file, key) = match layout {
        Layout::V1 {
            memory: Some(m), ..
        } => (m.join(rel).join("memory.oom_control"), "oom_kill "),
        Layout::V1 { memory: None, .. } => return false,
        Layout::V2 { root } => (root.join(rel).join("memory.events"), "oom_kill "),
    };
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(key))
        .any(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn weights_match_kubelet() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
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

    #[test]
    fn writes_v2_files_on_a_fake_tree() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let layout = Layout::V2 {
            root: root.path().into(),
        };
        let l = Limits {
            cpu_shares: Some(256),
            cpu_quota: Some(25_000),
            cpu_period: Some(100_000),
            memory: Some(64 << 20),
            pids: Some(100),
        };
        apply(&layout, "/kubepods/podabc", &l).unwrap();
        let d = root.path().join("kubepods/podabc");
        let read = |f: &str| fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read("cpu.weight"), "10");
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("pids.max"), "100");
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        apply(
            &layout,
            "/kubepods/besteffort",
            &Limits {
                cpu_shares: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("kubepods/besteffort/cpu.max")).unwrap(),
            "max 100000"
        );
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(oom_killed(&layout, "/kubepods/podabc"));
    }

    #[test]
    fn v2_writes_only_the_controllers_the_root_offers() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        fs::write(root.path().join("cgroup.controllers"), "hugetlb pids\n").unwrap();
        let layout = Layout::V2 {
            root: root.path().into(),
        };
        assert_eq!(missing_controllers(&layout), ["cpu", "memory"]);
        let l = Limits {
            cpu_shares: Some(256),
            memory: Some(64 << 20),
            pids: Some(100),
            ..Default::default()
        };
        apply(&layout, "/kubepods/podabc", &l).unwrap();
        let d = root.path().join("kubepods/podabc");
        assert!(!d.join("cpu.weight").exists() && !d.join("memory.max").exists());
        assert_eq!(fs::read_to_string(d.join("pids.max")).unwrap(), "100");
        assert_eq!(
            fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
    }

    #[test]
    fn writes_v1_files_on_a_fake_tree() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::V1 {
            cpu: Some(root.path().join("cpu")),
            memory: Some(root.path().join("memory")),
            pids: Some(root.path().join("pids")),
        };
        apply(
            &layout,
            "kubepods/burstable/podx",
            &Limits {
                cpu_shares: Some(102),
                memory: Some(1 << 27),
                ..Default::default()
            },
        )
        .unwrap();
        let r = |f: &str| fs::read_to_string(root.path().join(f)).unwrap();
        assert_eq!(r("cpu/kubepods/burstable/podx/cpu.shares"), "102");
        assert_eq!(r("cpu/kubepods/burstable/podx/cpu.cfs_quota_us"), "-1");
        assert_eq!(
            r("memory/kubepods/burstable/podx/memory.limit_in_bytes"),
            (1u64 << 27).to_string()
        );
        assert_eq!(r("pids/kubepods/burstable/podx/pids.max"), "max");
    }
}
