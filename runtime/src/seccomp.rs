//! Seccomp profiles in OCI form: podlet's RuntimeDefault, and loading Localhost profiles.
//!
//! RuntimeDefault lets ordinary programs do what they need and answers EPERM to what containers
//! have no business doing (kernel keyrings, modules, kexec, bpf, mounts, new namespaces, clock
//! changes, tracing other processes…). A container given the matching capability (CAP_SYS_ADMIN,
//! CAP_SYS_PTRACE, …) is allowed the matching calls, as containerd's default profile does.

use std::path::Path;

use serde_json::{json, Value};

const CLONE_NEW_FLAGS: [u64; 8] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
    0x0000_0080, // CLONE_NEWTIME
];

fn architectures() -> Value {
    match std::env::consts::ARCH {
        "x86_64" => json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        "aarch64" => json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        other => json!([format!("SCMP_ARCH_{}", other.to_uppercase())]),
    }
}

fn deny(names: &[&str]) -> Value {
    json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM})
}

/// podlet's RuntimeDefault profile for a container with capabilities `caps`.
pub fn runtime_default(caps: &[String]) -> Value {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut rules = vec![deny(&[
        "acct",
        "add_key",
        "bpf",
        "create_module",
        "delete_module",
        "finit_module",
        "get_kernel_syms",
        "init_module",
        "ioperm",
        "iopl",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "nfsservctl",
        "open_by_handle_at",
        "perf_event_open",
        "query_module",
        "request_key",
        "swapoff",
        "swapon",
        "_sysctl",
        "sysfs",
        "uselib",
        "userfaultfd",
        "ustat",
        "vm86",
        "vm86old",
    ])];
    if !has("CAP_SYS_ADMIN") {
        rules.push(deny(&[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "setns",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "name_to_handle_at",
            "quotactl",
            "lookup_dcookie",
        ]));
        // New namespaces, through unshare(2) and clone(2) flags.
        for flag in CLONE_NEW_FLAGS {
            for call in ["unshare", "clone"] {
                rules.push(json!({
                    "names": [call], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
                    "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
                }));
            }
        }
        // clone3 passes its flags in memory a filter cannot read: make libc fall back to clone.
        rules.push(
            json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
        );
    }
    if !has("CAP_SYS_PTRACE") {
        rules.push(deny(&["ptrace", "process_vm_readv", "process_vm_writev"]));
    }
    if !has("CAP_SYS_TIME") {
        rules.push(deny(&[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_adjtime",
        ]));
    }
    if !has("CAP_SYS_BOOT") {
        rules.push(deny(&["reboot"]));
    }
    if !has("CAP_SYS_NICE") {
        rules.push(deny(&["set_mempolicy", "mbind", "move_pages"]));
    }
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": architectures(), "syscalls": rules})
}

/// Loads a Localhost profile (OCI or Docker JSON form) from `dir/name`, refusing names that
/// leave the directory.
pub fn load_localhost(dir: &Path, name: &str) -> Result<Value, String> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "seccomp profile {name:?} must be a relative path inside {}",
            dir.display()
        ));
    }
    let path = dir.join(rel);
    let data = std::fs::read(&path)
        .map_err(|e| format!("failed to load seccomp profile {}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&data)
        .map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
    if v.get("defaultAction").and_then(Value::as_str).is_none() {
        return Err(format!(
            "seccomp profile {}: defaultAction is required",
            path.display()
        ));
    }
    let mut out = json!({"defaultAction": v["defaultAction"], "syscalls": v.get("syscalls").cloned().unwrap_or(json!([]))});
    out["architectures"] = v
        .get("architectures")
        .cloned()
        .unwrap_or_else(architectures);
    if let Some(e) = v.get("defaultErrnoRet") {
        out["defaultErrnoRet"] = e.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_default_follows_capabilities() {
        let plain = runtime_default(&[]);
        let text = plain.to_string();
        for call in ["keyctl", "bpf", "kexec_load", "mount", "unshare", "ptrace"] {
            assert!(
                text.contains(&format!("\"{call}\"")),
                "{call} must be restricted"
            );
        }
        let admin = runtime_default(&["CAP_SYS_ADMIN".to_string()]).to_string();
        assert!(!admin.contains("\"mount\"") && !admin.contains("\"unshare\""));
        assert!(admin.contains("\"keyctl\""));
        // the result must be a valid OCI seccomp section
        let spec: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(plain).unwrap();
        assert!(!spec.syscalls().as_ref().unwrap().is_empty());
    }

    #[test]
    fn localhost_profiles_stay_in_their_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("p.json"),
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[]}"#,
        )
        .unwrap();
        assert_eq!(
            load_localhost(d.path(), "p.json").unwrap()["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert!(load_localhost(d.path(), "../p.json").is_err());
        assert!(load_localhost(d.path(), "/etc/passwd").is_err());
        assert!(load_localhost(d.path(), "missing.json")
            .unwrap_err()
            .contains("failed to load"));
    }
}
