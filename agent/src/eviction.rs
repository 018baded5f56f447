//! Node-pressure eviction like the kubelet's: hard thresholds on memory.available,
//! nodefs.available, nodefs.inodesFree, imagefs.available (and pid.available); under pressure the
//! matching node condition turns True and one pod per cycle is evicted: pods using more than
//! they requested first, then lower priority, then the largest usage above requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::config::{Amount, Config, Threshold};

/// Evictions asked for, and the node conditions the eviction signals drive.
pub struct Evictions {
    /// Evictions asked for and not finished yet: uid -> message.
    requests: Mutex<BTreeMap<String, String>>,
    /// Bumped on every eviction request, waking the pod workers.
    requested: watch::Sender<u64>,
    /// Condition type -> (status, last transition).
    conditions: RwLock<BTreeMap<&'static str, (bool, jiff::Timestamp)>>,
}

impl Default for Evictions {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            requested: watch::channel(0).0,
            conditions: RwLock::new(BTreeMap::new()),
        }
    }
}

impl Evictions {
    /// Wakes on every eviction request.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.requested.subscribe()
    }

    pub fn set_conditions(&self, now: &BTreeMap<&'static str, bool>) {
        let mut c = self.conditions.write().expect("conditions lock");
        for (k, v) in now {
            match c.get(k) {
                Some((old, _)) if old == v => {}
                _ => {
                    if *v {
                        tracing::warn!(condition = k, "node condition is now True");
                    }
                    c.insert(k, (*v, jiff::Timestamp::now()));
                }
            }
        }
    }

    /// A condition's status and last transition, once a signal has set it.
    pub fn condition(&self, type_: &str) -> Option<(bool, jiff::Timestamp)> {
        self.conditions
            .read()
            .expect("conditions lock")
            .get(type_)
            .copied()
    }

    /// Evictions asked for and not finished.
    pub fn in_progress(&self) -> usize {
        self.requests.lock().expect("evictions lock").len()
    }

    pub fn evict(&self, uid: &str, message: String) {
        self.requests
            .lock()
            .expect("evictions lock")
            .insert(uid.to_string(), message);
        self.requested.send_modify(|g| *g += 1);
    }

    /// The message of the eviction asked for the pod, if one was.
    pub fn requested(&self, uid: &str) -> Option<String> {
        self.requests
            .lock()
            .expect("evictions lock")
            .get(uid)
            .cloned()
    }

    pub fn done(&self, uid: &str) {
        self.requests.lock().expect("evictions lock").remove(uid);
    }
}

/// A pod the manager may evict.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub uid: String,
    /// `namespace/name`, for the log.
    pub name: String,
    /// Bytes.
    pub memory_usage: i64,
    /// Bytes.
    pub memory_request: i64,
    pub priority: i32,
}

/// The pod to evict next: pods using more memory than they requested first, then lower
/// priority, then the most memory above the request.
fn rank(mut candidates: Vec<Candidate>) -> Option<Candidate> {
    let key = |c: &Candidate| {
        (
            c.memory_usage > c.memory_request,
            c.priority,
            c.memory_usage - c.memory_request,
        )
    };
    candidates.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2))
    });
    candidates.into_iter().next()
}

/// The filesystems the nodefs and imagefs signals measure.
struct Filesystems {
    nodefs: PathBuf,
    imagefs: PathBuf,
}

/// (available, capacity) of a signal right now.
fn observe(signal: &str, fs: &Filesystems) -> Option<(f64, f64)> {
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
        "nodefs.available" => statvfs(&fs.nodefs).map(|s| {
            (
                (s.blocks_available() * s.fragment_size()) as f64,
                (s.blocks() * s.fragment_size()) as f64,
            )
        }),
        "nodefs.inodesFree" => {
            statvfs(&fs.nodefs).map(|s| (s.files_available() as f64, s.files() as f64))
        }
        "imagefs.available" => statvfs(&fs.imagefs).map(|s| {
            (
                (s.blocks_available() * s.fragment_size()) as f64,
                (s.blocks() * s.fragment_size()) as f64,
            )
        }),
        "imagefs.inodesFree" => {
            statvfs(&fs.imagefs).map(|s| (s.files_available() as f64, s.files() as f64))
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
/// `candidates` lists the pods that may be evicted, when one has to be.
pub fn run(
    cfg: &Config,
    evictions: Arc<Evictions>,
    candidates: impl Fn() -> Vec<Candidate> + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let period = cfg.eviction_interval;
    let thresholds: Arc<[Threshold]> = cfg.eviction_hard.clone().into();
    let fs = Arc::new(Filesystems {
        nodefs: cfg.root_dir.clone(),
        imagefs: cfg.images_dir(),
    });
    let candidates = Arc::new(candidates);
    async move {
        loop {
            tokio::time::sleep(period).await;
            let (e, t, f, c) = (
                evictions.clone(),
                thresholds.clone(),
                fs.clone(),
                candidates.clone(),
            );
            let _ = tokio::task::spawn_blocking(move || cycle(&e, &t, &f, &*c)).await;
        }
    }
}

fn cycle(
    evictions: &Evictions,
    thresholds: &[Threshold],
    fs: &Filesystems,
    candidates: &dyn Fn() -> Vec<Candidate>,
) {
    let mut pressure: Option<(&Threshold, f64)> = None;
    let mut conditions = BTreeMap::from([
        ("MemoryPressure", false),
        ("DiskPressure", false),
        ("PIDPressure", false),
    ]);
    for t in thresholds {
        let Some((available, capacity)) = observe(&t.signal, fs) else {
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
    evictions.set_conditions(&conditions);
    let Some((t, available)) = pressure else {
        return;
    };
    // One pod per cycle, and only when the previous eviction has finished.
    if evictions.in_progress() > 0 {
        return;
    }
    let Some(Candidate { uid, name, .. }) = rank(candidates()) else {
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
    evictions.evict(&uid, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_drive_their_conditions() {
        assert_eq!(condition_of("nodefs.inodesFree"), "DiskPressure");
    }

    #[test]
    fn over_request_then_low_priority_then_most_above_request() {
        let c = |uid: &str, usage: i64, request: i64, priority: i32| Candidate {
            uid: uid.into(),
            name: uid.into(),
            memory_usage: usage,
            memory_request: request,
            priority,
        };
        let pick = |v: Vec<Candidate>| rank(v).map(|c| c.uid);
        assert_eq!(pick(vec![]), None);
        // Over its request beats a lower priority within its request.
        assert_eq!(
            pick(vec![c("within", 10, 100, -5), c("over", 200, 100, 10)]),
            Some("over".into())
        );
        // Both over: the lower priority goes first.
        assert_eq!(
            pick(vec![c("high", 900, 100, 10), c("low", 200, 100, 0)]),
            Some("low".into())
        );
        // Same priority: the most above its request.
        assert_eq!(
            pick(vec![c("a", 200, 100, 0), c("b", 500, 100, 0)]),
            Some("b".into())
        );
    }
}
