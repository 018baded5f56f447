//! Node-pressure eviction like the kubelet's: hard thresholds on memory.available,
//! nodefs.available, nodefs.inodesFree, imagefs.available (and pid.available); under pressure the
//! matching node condition turns True and one pod per cycle is evicted: pods using more than
//! they requested first, then lower priority, then the largest usage above requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Amount, Threshold};
use crate::pod::Node;

/// (available, capacity) of a signal right now.
fn observe(signal: &str, node: &Node) -> Option<(f64, f64)> {
    let statvfs = |p: &Path| nix::sys::statvfs::statvfs(p).ok();
    match signal {
        "memory.available" => {
            let text = std::fs::read_to_string("/proc/meminfo").ok()?;
            let kb = |k: &str| {
                text.lines()
                    .find(|l| l.starts_with(k))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            Some((kb("MemAvailable:")? * 1024.0, kb("MemTotal:")? * 1024.0))
        }
        "nodefs.available" => statvfs(&node.cfg.root_dir).map(|s| {
            (
                (s.blocks_available() * s.fragment_size()) as f64,
                (s.blocks() * s.fragment_size()) as f64,
            )
        }),
        "nodefs.inodesFree" => {
            statvfs(&node.cfg.root_dir).map(|s| (s.files_available() as f64, s.files() as f64))
        }
        "imagefs.available" => statvfs(&node.cfg.images_dir()).map(|s| {
            (
                (s.blocks_available() * s.fragment_size()) as f64,
                (s.blocks() * s.fragment_size()) as f64,
            )
        }),
        "imagefs.inodesFree" => {
            statvfs(&node.cfg.images_dir()).map(|s| (s.files_available() as f64, s.files() as f64))
        }
        "pid.available" => {
            let max: f64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let used = std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as f64;
            Some((max - used, max))
        }
        _ => None,
    }
}

/// The condition a signal drives.
pub fn condition_of(signal: &str) -> &'static str {
    match signal {
        "memory.available" => "MemoryPressure",
        "pid.available" => "PIDPressure",
        _ => "DiskPressure",
    }
}

fn human(bytes: f64) -> String {
    let mi = bytes / (1024.0 * 1024.0);
    if mi >= 1.0 {
        format!("{}Mi", mi.round() as i64)
    } else {
        format!("{}Ki", (bytes / 1024.0).round() as i64)
    }
}

/// Runs the eviction manager until the process ends.
pub async fn run(node: Arc<Node>, thresholds: Vec<Threshold>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let n = node.clone();
        let t = thresholds.clone();
        let _ = tokio::task::spawn_blocking(move || cycle(&n, &t)).await;
    }
}

fn cycle(node: &Node, thresholds: &[Threshold]) {
    let mut pressure: Option<(&Threshold, f64)> = None;
    let mut conditions = std::collections::BTreeMap::from([
        ("MemoryPressure", false),
        ("DiskPressure", false),
        ("PIDPressure", false),
    ]);
    for t in thresholds {
        let Some((available, capacity)) = observe(&t.signal, node) else {
            continue;
        };
        let limit = match t.amount {
            Amount::Quantity(q) => q,
            Amount::Percent(p) => p * capacity,
        };
        if available < limit {
            conditions.insert(condition_of(&t.signal), true);
            pressure.get_or_insert((t, available));
        }
    }
    node.set_conditions(&conditions);
    let Some((t, available)) = pressure else {
        return;
    };
    // One pod per cycle, and only when the previous eviction has finished.
    if node.eviction_in_progress() {
        return;
    }
    let Some((uid, name)) = node.eviction_candidate() else {
        return;
    };
    let resource = if t.signal.starts_with("memory") {
        "memory"
    } else if t.signal.starts_with("pid") {
        "pids"
    } else {
        "ephemeral-storage"
    };
    let shown = if t.signal.contains("inodes") || t.signal.starts_with("pid") {
        format!("{}", available as i64)
    } else {
        human(available)
    };
    let message = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {shown}. ",
        t.raw
    );
    tracing::warn!(pod = %name, signal = %t.signal, "evicting: {message}");
    node.evict(&uid, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_drive_their_conditions() {
        assert_eq!(condition_of("nodefs.inodesFree"), "DiskPressure");
    }
}
