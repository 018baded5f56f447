//! Builds the OCI runtime spec (`config.json`) of one container from a runtime-level description.
//! The runtime knows nothing of pods: the agent translates a pod into [`ContainerConfig`].

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Capabilities containerd gives a container by default.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from containers (as runc/containerd do).
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Paths made read-only inside containers.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// How a container gets a namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Ns {
    /// Share the host's.
    Host,
    /// A new one of its own.
    New,
    /// Join the namespace at this path (`/proc/<pid>/ns/<kind>`).
    Join(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// What the runtime needs to know to run one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub net: Ns,
    pub ipc: Ns,
    pub uts: Ns,
    pub pid: Ns,
    pub mounts: Vec<BindMount>,
    /// cgroup path relative to the cgroup root of each hierarchy, e.g. `/kubepods/pod<uid>/<id>`.
    pub cgroups_path: String,
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    pub privileged: bool,
    pub oom_score_adj: Option<i32>,
    /// CPU and memory limits of the container's cgroup (pids are limited per pod).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    #[serde(default)]
    pub cpu_period: Option<u64>,
    #[serde(default)]
    pub memory_limit: Option<i64>,
    /// The OCI seccomp section (None: unconfined).
    #[serde(default)]
    pub seccomp: Option<serde_json::Value>,
    /// AppArmor profile to exec into (None: unconfined).
    #[serde(default)]
    pub apparmor_profile: Option<String>,
    /// Sysctls set in the container's (the pod's) namespaces.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// `procMount: Unmasked`: no masked or read-only /proc paths.
    #[serde(default)]
    pub unmasked_proc: bool,
    /// Device nodes created in the container's /dev (privileged containers get the host's).
    #[serde(default)]
    pub devices: Vec<Device>,
    /// The pod's user namespace to join (`hostUsers: false`); None shares the host's.
    #[serde(default)]
    pub userns: Option<UserNs>,
    /// The process runs on a terminal (`tty: true`).
    #[serde(default)]
    pub terminal: bool,
}

/// A pod's user namespace: IDs 0..size inside are host IDs host_id.. (UIDs and GIDs alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdRange {
    pub host_id: u32,
    pub size: u32,
}

impl IdRange {
    /// The `uid_map`/`gid_map` line.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_id, self.size)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserNs {
    /// `/proc/<pause>/ns/user`.
    pub path: PathBuf,
    pub range: IdRange,
}

/// A device node for the container's /dev.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub path: String,
    /// "c" or "b".
    pub kind: String,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The device nodes below `dev_root` (the host's `/dev`), as containerd gives them to privileged
/// containers: character and block devices, without the per-container pseudo filesystems.
pub fn host_devices(dev_root: &Path) -> Vec<Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    const SKIP: [&str; 6] = ["pts", "shm", "mqueue", "fd", ".lxc", ".udev"];
    let mut out = Vec::new();
    let mut stack = vec![dev_root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = meta.file_type();
            let rel = p
                .strip_prefix(dev_root)
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            if ft.is_dir() {
                if !SKIP.contains(&rel.as_str()) {
                    stack.push(p);
                }
                continue;
            }
            let kind = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                continue;
            };
            let rdev = meta.rdev();
            out.push(Device {
                path: format!("/dev/{rel}"),
                kind: kind.into(),
                major: libc::major(rdev) as i64,
                minor: libc::minor(rdev) as i64,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn namespace(kind: &str, ns: &Ns) -> Option<serde_json::Value> {
    match ns {
        Ns::Host => None,
        Ns::New => Some(json!({"type": kind})),
        Ns::Join(p) => Some(json!({"type": kind, "path": p})),
    }
}

/// Builds and validates the spec.
pub fn build(c: &ContainerConfig) -> Result<Spec, serde_json::Error> {
    // The user namespace first: the others are owned by it.
    let mut namespaces = vec![];
    if let Some(u) = &c.userns {
        namespaces.push(json!({"type": "user", "path": u.path}));
    }
    namespaces.push(json!({"type": "mount"}));
    namespaces.extend(namespace("network", &c.net));
    namespaces.extend(namespace("ipc", &c.ipc));
    namespaces.extend(namespace("uts", &c.uts));
    namespaces.extend(namespace("pid", &c.pid));
    if !c.privileged {
        namespaces.push(json!({"type": "cgroup"}));
    }
    let sys_opts = if c.privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
    ];
    // sysfs can only be mounted by the owner of the network namespace; with the host's network
    // namespace (hostNetwork), the host's /sys is bind-mounted instead, as runc does.
    if c.net == Ns::Host {
        mounts.push(json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}));
    } else {
        mounts.push(
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        );
        mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
    }
    for m in &c.mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if m.readonly {
            opts.push("ro");
        }
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": opts}));
    }
    let caps = if c.privileged {
        all_capabilities()
    } else {
        c.capabilities.clone()
    };
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": c.cgroups_path,
        "resources": {"devices": device_rules(c.privileged)},
    });
    if let Some(u) = &c.userns {
        let m = json!([{"containerID": 0, "hostID": u.range.host_id, "size": u.range.size}]);
        linux["uidMappings"] = m.clone();
        linux["gidMappings"] = m;
    }
    let mut cpu = serde_json::Map::new();
    if let Some(s) = c.cpu_shares {
        cpu.insert("shares".into(), json!(s));
    }
    if let Some(q) = c.cpu_quota {
        cpu.insert("quota".into(), json!(q));
        cpu.insert("period".into(), json!(c.cpu_period.unwrap_or(100_000)));
    }
    if !cpu.is_empty() {
        linux["resources"]["cpu"] = serde_json::Value::Object(cpu);
    }
    if let Some(m) = c.memory_limit {
        linux["resources"]["memory"] = json!({"limit": m});
    }
    if let Some(sc) = c.seccomp.as_ref().filter(|_| !c.privileged) {
        linux["seccomp"] = sc.clone();
    }
    if !c.privileged && !c.unmasked_proc {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if !c.devices.is_empty() {
        linux["devices"] = json!(c
            .devices
            .iter()
            .map(
                |d| json!({"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor,
                            "fileMode": d.mode, "uid": d.uid, "gid": d.gid})
            )
            .collect::<Vec<_>>());
    }
    if !c.sysctls.is_empty() {
        linux["sysctl"] = json!(c
            .sysctls
            .iter()
            .cloned()
            .collect::<std::collections::BTreeMap<_, _>>());
    }
    let mut process = json!({
        "terminal": c.terminal,
        "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.additional_gids},
        "args": c.args,
        "env": c.env,
        "cwd": c.cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
    });
    // Only written when true: libcontainer loads seccomp before dropping capabilities only when
    // the field is absent (it tests for presence, not value). With `false` written, the filter
    // would be loaded without privileges or no_new_privs, and the kernel would refuse it.
    if c.no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }
    if let Some(adj) = c.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }
    if let Some(p) = c.apparmor_profile.as_ref().filter(|_| !c.privileged) {
        process["apparmorProfile"] = json!(p);
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": c.rootfs, "readonly": c.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(spec)
}

/// The device cgroup: everything denied but the devices every container has (runc's and
/// containerd's defaults), or everything allowed for privileged containers.
fn device_rules(privileged: bool) -> serde_json::Value {
    if privileged {
        return json!([{"allow": true, "access": "rwm"}]);
    }
    let mut rules = vec![
        json!({"allow": false, "access": "rwm"}),
        json!({"allow": true, "type": "c", "access": "m"}),
        json!({"allow": true, "type": "b", "access": "m"}),
    ];
    // null, random, full, tty, zero, urandom, console, pts, ptmx, tun
    for (major, minor) in [
        (1, Some(3)),
        (1, Some(8)),
        (1, Some(7)),
        (5, Some(0)),
        (1, Some(5)),
        (1, Some(9)),
        (5, Some(1)),
        (136, None),
        (5, Some(2)),
        (10, Some(200)),
    ] {
        let mut r = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
        if let Some(m) = minor {
            r["minor"] = json!(m);
        }
        rules.push(r);
    }
    json!(rules)
}

/// Writes `config.json` into `bundle`.
pub fn write_bundle(bundle: &Path, c: &ContainerConfig) -> std::io::Result<()> {
    let spec = build(c).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(bundle)?;
    let data = serde_json::to_vec(&spec).map_err(std::io::Error::other)?;
    let tmp = bundle.join("config.json.tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, bundle.join("config.json"))
}

/// Every capability this process can hand on: privileged containers get all of them (a
/// runtime cannot grant what its own bounding set lacks).
fn all_capabilities() -> Vec<String> {
    let mut v: Vec<String> = caps::read(None, caps::CapSet::Bounding)
        .unwrap_or_else(|_| caps::all())
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ContainerConfig {
        ContainerConfig {
            args: vec!["sh".into()],
            env: vec!["A=B".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
            rootfs: "/r".into(),
            readonly_rootfs: false,
            net: Ns::Join("/proc/7/ns/net".into()),
            ipc: Ns::Join("/proc/7/ns/ipc".into()),
            uts: Ns::Join("/proc/7/ns/uts".into()),
            pid: Ns::New,
            mounts: vec![BindMount {
                source: "/x/hosts".into(),
                destination: "/etc/hosts".into(),
                readonly: false,
            }],
            cgroups_path: "/kubepods/besteffort/podu/c".into(),
            capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            no_new_privileges: false,
            privileged: false,
            oom_score_adj: Some(1000),
            cpu_shares: Some(256),
            cpu_quota: Some(25_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            seccomp: None,
            apparmor_profile: None,
            sysctls: vec![],
            unmasked_proc: false,
            terminal: false,
            devices: vec![],
            userns: None,
        }
    }

    #[test]
    fn a_pod_user_namespace_comes_first_with_its_mappings() {
        let mut c = sample();
        c.userns = Some(UserNs {
            path: "/proc/7/ns/user".into(),
            range: IdRange {
                host_id: 131_072,
                size: 65_536,
            },
        });
        let v = serde_json::to_value(build(&c).unwrap()).unwrap();
        assert_eq!(
            v["linux"]["namespaces"][0],
            json!({"type": "user", "path": "/proc/7/ns/user"})
        );
        let m = json!([{"containerID": 0, "hostID": 131_072, "size": 65_536}]);
        assert_eq!(v["linux"]["uidMappings"], m);
        assert_eq!(v["linux"]["gidMappings"], m);
        assert_eq!(c.userns.unwrap().range.map_line(), "0 131072 65536\n");
        assert!(build(&sample())
            .unwrap()
            .linux()
            .as_ref()
            .unwrap()
            .uid_mappings()
            .is_none());
    }

    #[test]
    fn joins_sandbox_namespaces_and_owns_mnt_pid() {
        let spec = build(&sample()).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        let find = |t: &str| ns.iter().find(|n| n["type"] == t).cloned();
        assert_eq!(find("network").unwrap()["path"], "/proc/7/ns/net");
        assert_eq!(find("ipc").unwrap()["path"], "/proc/7/ns/ipc");
        assert!(find("mount").unwrap().get("path").is_none());
        assert!(find("pid").unwrap().get("path").is_none());
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn host_devices_are_read_from_a_tree() {
        let devs = host_devices(Path::new("/dev"));
        assert!(devs
            .iter()
            .any(|d| d.path == "/dev/null" && d.kind == "c" && d.major == 1 && d.minor == 3));
        assert!(!devs.iter().any(|d| d.path.starts_with("/dev/pts/")));
    }

    #[test]
    fn host_namespaces_are_left_out() {
        let mut c = sample();
        c.net = Ns::Host;
        c.pid = Ns::Host;
        let v = serde_json::to_value(build(&c).unwrap()).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns
            .iter()
            .any(|n| n["type"] == "network" || n["type"] == "pid"));
    }
}
