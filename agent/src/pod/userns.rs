//! Host ID ranges for pods with `hostUsers: false`. Each pod gets 65536 host IDs of its own (the
//! kubelet's length), never overlapping another pod's or the host's first 65536; the table lives
//! in `<root-dir>/userns.json` so a restarted agent gives running pods the same range, and an
//! entry is released once its pod is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use podlet_runtime::spec::IdRange;

/// Why a range cannot be had, or the table not read or kept.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("no free user namespace ID range on this node")]
    Exhausted,
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// IDs per pod, as the kubelet gives them.
pub const RANGE: u32 = 65_536;

pub struct Allocator {
    file: PathBuf,
    /// Pod UID → range index (host IDs `index × RANGE ..`).
    pods: Mutex<BTreeMap<String, u32>>,
    /// Highest index handed out (the last range ends below 2³²).
    max_index: u32,
}

impl Allocator {
    pub fn open(file: &Path) -> Result<Self, UsernsError> {
        let pods = match std::fs::read(file) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| UsernsError::Corrupt {
                path: file.to_path_buf(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(UsernsError::Io {
                    path: file.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Allocator {
            file: file.to_path_buf(),
            pods: Mutex::new(pods),
            max_index: u32::MAX / RANGE - 1,
        })
    }

    /// The pod's range: the one it has, or the lowest free one.
    pub fn allocate(&self, pod_uid: &str) -> Result<IdRange, UsernsError> {
        let mut pods = self.pods.lock().unwrap();
        if let Some(&i) = pods.get(pod_uid) {
            return Ok(range(i));
        }
        let used: std::collections::BTreeSet<u32> = pods.values().copied().collect();
        let index = (1..=self.max_index)
            .find(|i| !used.contains(i))
            .ok_or(UsernsError::Exhausted)?;
        pods.insert(pod_uid.to_string(), index);
        if let Err(e) = self.save(&pods) {
            pods.remove(pod_uid);
            return Err(e);
        }
        Ok(range(index))
    }

    /// The pod's range, if it has one.
    pub fn get(&self, pod_uid: &str) -> Option<IdRange> {
        self.pods.lock().unwrap().get(pod_uid).map(|&i| range(i))
    }

    pub fn release(&self, pod_uid: &str) {
        let mut pods = self.pods.lock().unwrap();
        if pods.remove(pod_uid).is_some() {
            if let Err(e) = self.save(&pods) {
                tracing::warn!("{}", crate::util::chain(&e));
            }
        }
    }

    /// Releases every range whose pod is not in `live` (pods that ended while the agent was
    /// down, or a reboot that took every sandbox).
    pub fn retain(&self, live: &[String]) {
        let mut pods = self.pods.lock().unwrap();
        let before = pods.len();
        pods.retain(|uid, _| live.contains(uid));
        if pods.len() != before {
            if let Err(e) = self.save(&pods) {
                tracing::warn!("{}", crate::util::chain(&e));
            }
        }
    }

    fn save(&self, pods: &BTreeMap<String, u32>) -> Result<(), UsernsError> {
        let tmp = self.file.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(pods).map_err(|source| UsernsError::Corrupt {
            path: self.file.clone(),
            source,
        })?;
        std::fs::write(&tmp, data)
            .and_then(|_| std::fs::rename(&tmp, &self.file))
            .map_err(|source| UsernsError::Io {
                path: self.file.clone(),
                source,
            })
    }
}

fn range(index: u32) -> IdRange {
    IdRange {
        host_id: index * RANGE,
        size: RANGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_do_not_overlap_persist_and_are_reused_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("userns.json");
        let a = Allocator::open(&file).unwrap();
        let r1 = a.allocate("pod-1").unwrap();
        let r2 = a.allocate("pod-2").unwrap();
        assert_eq!(r1.host_id, 65_536, "the host keeps the first 65536 IDs");
        assert_eq!(r2.host_id, 2 * 65_536);
        assert_eq!(a.allocate("pod-1").unwrap(), r1, "same pod, same range");

        let b = Allocator::open(&file).unwrap();
        assert_eq!(b.get("pod-2"), Some(r2), "kept across restarts");
        b.release("pod-1");
        assert_eq!(
            b.allocate("pod-3").unwrap(),
            r1,
            "a released range is reused"
        );
        b.retain(&["pod-3".to_string()]);
        assert_eq!(b.get("pod-2"), None);
        assert_eq!(Allocator::open(&file).unwrap().get("pod-2"), None);
    }

    #[test]
    fn a_corrupt_table_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("userns.json");
        std::fs::write(&file, b"{not json").unwrap();
        let err = Allocator::open(&file).err().unwrap().to_string();
        assert!(err.contains("userns.json"), "{err}");
    }

    #[test]
    fn the_last_range_fits_below_the_top_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = Allocator::open(&dir.path().join("u.json")).unwrap();
        let top = range(a.max_index);
        assert!(top.host_id as u64 + top.size as u64 <= u32::MAX as u64);
    }
}
