//! Limits podlet writes on pod- and QoS-level cgroups, in the files of either layout.

use std::path::Path;

use super::{available_v2, Layout};
use crate::host::{Host, HostError, LinuxHost};

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

/// cgroup v1 shares as cgroup v2 `cpu.weight`, by the conversion the kubelet (through
/// opencontainers/cgroups, since 2025) and runc >= 1.3.2, crun >= 1.23 and youki's libcontainer
/// share: `⌈10^((L² + 125·L)/612 − 7/34)⌉` with `L = log2(shares)`. It maps the v1 range onto
/// [1, 10000] as the old linear formula did, but also the v1 default 1024 onto the v2 default
/// 100 (the old one gave 39, ranking pods below every unlimited system service). Containers get
/// theirs from libcontainer, so pod and container cgroups must agree on it.
pub fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        262_144.. => 10_000,
        _ => {
            let l = (shares as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
        }
    }
}

/// Creates `rel` (and parents) and writes `limits` there.
pub fn apply(layout: &Layout, rel: &str, limits: &Limits) -> Result<(), HostError> {
    apply_on(&LinuxHost, layout, rel, limits)
}

/// [`apply`] through `host`.
pub fn apply_on(
    host: &dyn Host,
    layout: &Layout,
    rel: &str,
    limits: &Limits,
) -> Result<(), HostError> {
    let write = |dir: &Path, file: &str, value: &str| host.write_file(&dir.join(file), value);
    let rel = rel.trim_start_matches('/');
    match layout {
        Layout::V1 { cpu, memory, pids } => {
            if let Some(base) = cpu {
                let d = base.join(rel);
                host.create_dir_all(&d)?;
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
                host.create_dir_all(&d)?;
                write(
                    &d,
                    "memory.limit_in_bytes",
                    &limits.memory.unwrap_or(-1).to_string(),
                )?;
            }
            if let Some(base) = pids {
                let d = base.join(rel);
                host.create_dir_all(&d)?;
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
                host.create_dir_all(&cur)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{missing_controllers, oom_killed};
    use std::fs;

    #[test]
    fn weights_match_kubelet() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        // 250m: what youki's libcontainer writes for a container (seen in the Vagrant lab).
        assert_eq!(shares_to_weight(256), 35);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1_000_000), 10_000);
        // Monotonic over the whole range, as the scheduler of the kernel needs it to be.
        let w: Vec<u64> = (2..=262_144).map(shares_to_weight).collect();
        assert!(w.windows(2).all(|p| p[0] <= p[1]));
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
        assert_eq!(read("cpu.weight"), "35");
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

    use crate::host::{Op, RecordingHost};
    use nix::errno::Errno;
    use std::path::PathBuf;

    fn written(path: PathBuf, value: &str) -> Op {
        Op::Write {
            path,
            value: value.into(),
        }
    }

    #[test]
    fn v1_limits_go_to_each_controllers_hierarchy() {
        let h = RecordingHost::new();
        let layout = Layout::V1 {
            cpu: Some("/cg/cpu,cpuacct".into()),
            memory: Some("/cg/memory".into()),
            pids: Some("/cg/pids".into()),
        };
        let l = Limits {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory: Some(128 << 20),
            pids: Some(64),
        };
        apply_on(&h, &layout, "/kubepods/podx", &l).unwrap();
        let cpu = PathBuf::from("/cg/cpu,cpuacct/kubepods/podx");
        let mem = PathBuf::from("/cg/memory/kubepods/podx");
        let pids = PathBuf::from("/cg/pids/kubepods/podx");
        assert_eq!(
            h.ops(),
            [
                Op::CreateDirAll(cpu.clone()),
                written(cpu.join("cpu.shares"), "512"),
                written(cpu.join("cpu.cfs_period_us"), "100000"),
                written(cpu.join("cpu.cfs_quota_us"), "50000"),
                Op::CreateDirAll(mem.clone()),
                written(mem.join("memory.limit_in_bytes"), "134217728"),
                Op::CreateDirAll(pids.clone()),
                written(pids.join("pids.max"), "64"),
            ]
        );
    }

    #[test]
    fn v1_lifts_unset_limits_and_skips_missing_hierarchies() {
        let h = RecordingHost::new();
        let layout = Layout::V1 {
            cpu: Some("/cg/cpu".into()),
            memory: Some("/cg/memory".into()),
            pids: None,
        };
        apply_on(&h, &layout, "kubepods", &Limits::default()).unwrap();
        assert_eq!(
            h.ops(),
            [
                Op::CreateDirAll("/cg/cpu/kubepods".into()),
                written("/cg/cpu/kubepods/cpu.cfs_quota_us".into(), "-1"),
                Op::CreateDirAll("/cg/memory/kubepods".into()),
                written("/cg/memory/kubepods/memory.limit_in_bytes".into(), "-1"),
            ]
        );
    }

    /// A cgroup2 root whose existing levels below it have their own `cgroup.subtree_control`,
    /// as on a real cgroup2 mount.
    fn v2_tree(controllers: &str, levels: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        for l in levels {
            fs::create_dir_all(root.path().join(l)).unwrap();
            fs::write(root.path().join(l).join("cgroup.subtree_control"), "").unwrap();
        }
        root
    }

    #[test]
    fn v2_delegates_down_each_level_then_writes_the_leaf() {
        let root = v2_tree(
            "cpuset cpu io memory pids\n",
            &["kubepods", "kubepods/burstable"],
        );
        let r = root.path();
        let h = RecordingHost::new();
        let l = Limits {
            cpu_shares: Some(1024),
            cpu_quota: Some(0),
            pids: Some(1024),
            ..Default::default()
        };
        let layout = Layout::V2 { root: r.into() };
        apply_on(&h, &layout, "/kubepods/burstable/podx", &l).unwrap();
        let all = "+cpu +memory +pids";
        let leaf = r.join("kubepods/burstable/podx");
        assert_eq!(
            h.ops(),
            [
                written(r.join("cgroup.subtree_control"), all),
                Op::CreateDirAll(r.join("kubepods")),
                written(r.join("kubepods/cgroup.subtree_control"), all),
                Op::CreateDirAll(r.join("kubepods/burstable")),
                written(r.join("kubepods/burstable/cgroup.subtree_control"), all),
                Op::CreateDirAll(leaf.clone()),
                written(leaf.join("cpu.weight"), "100"),
                // A zero quota is no quota.
                written(leaf.join("cpu.max"), "max 100000"),
                written(leaf.join("memory.max"), "max"),
                written(leaf.join("pids.max"), "1024"),
            ]
        );
    }

    #[test]
    fn v2_without_controllers_only_makes_the_directories() {
        // A hybrid host: the cgroup2 mount offers no controller podlet limits with.
        let root = v2_tree("\n", &["kubepods"]);
        let r = root.path();
        let h = RecordingHost::new();
        let l = Limits {
            cpu_shares: Some(2),
            memory: Some(1 << 30),
            pids: Some(10),
            ..Default::default()
        };
        apply_on(
            &h,
            &Layout::V2 { root: r.into() },
            "kubepods/besteffort",
            &l,
        )
        .unwrap();
        assert_eq!(
            h.ops(),
            [
                Op::CreateDirAll(r.join("kubepods")),
                Op::CreateDirAll(r.join("kubepods/besteffort")),
            ]
        );
    }

    #[test]
    fn a_refused_delegation_is_not_fatal_but_a_refused_limit_is() {
        let root = v2_tree("cpu memory pids\n", &[]);
        let r = root.path();
        let leaf = r.join("podx");
        let h = RecordingHost::new()
            .failing(r.join("cgroup.subtree_control"), Errno::EBUSY, 1)
            .failing(leaf.join("memory.max"), Errno::EINVAL, 1);
        let l = Limits {
            memory: Some(1),
            ..Default::default()
        };
        let e = apply_on(&h, &Layout::V2 { root: r.into() }, "podx", &l).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "writing \"1\" to {}: Invalid argument (os error 22)",
                leaf.join("memory.max").display()
            )
        );
        assert_eq!(
            h.ops(),
            [
                Op::CreateDirAll(leaf.clone()),
                written(leaf.join("cpu.max"), "max 100000"),
            ],
            "nothing is written after the refused limit"
        );
    }
}
