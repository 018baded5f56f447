//! Usage of a cgroup read back from its files: memory, CPU time, the working set, OOM kills.

use std::fs;

use super::Layout;

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
