//! Garbage collection of the store: what no image refers to (blobs, unpacked layers, stale
//! partial downloads) is swept, except layers a container has mounted.

use std::fs;
use std::path::{Path, PathBuf};

use super::store::make_writable_and_remove;
use super::{ImageError, ImageStore};

impl ImageStore {
    /// Removes blobs, unpacked layers and partial downloads no image refers to, when they are
    /// older than `min_age` (younger ones may belong to a pull in progress). Layers mounted by
    /// a container stay. Returns how many entries went.
    pub fn prune_unreferenced(
        &self,
        mountinfo: &Path,
        min_age: std::time::Duration,
    ) -> Result<usize, ImageError> {
        let _lock = self.lock()?;
        let index = self.read_index()?;
        let mut blobs = std::collections::BTreeSet::new();
        let mut layers = std::collections::BTreeSet::new();
        for r in index.values() {
            blobs.extend(
                r.blobs()
                    .map(|b| b.trim_start_matches("sha256:").to_string()),
            );
            layers.extend(
                r.diff_ids
                    .iter()
                    .map(|d| d.trim_start_matches("sha256:").to_string()),
            );
        }
        let mounts = fs::read_to_string(mountinfo).unwrap_or_default();
        let old = |p: &Path| {
            fs::symlink_metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= min_age)
        };
        let mut n = 0;
        let entries = |d: PathBuf| -> Vec<(String, PathBuf)> {
            fs::read_dir(d)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (name, p) in entries(self.root.join("blobs/sha256")) {
            if !blobs.contains(&name) && old(&p) && fs::remove_file(&p).is_ok() {
                n += 1;
            }
        }
        for (name, p) in entries(self.root.join("layers")) {
            let key = name.trim_start_matches("sha256:").to_string();
            let mounted = mounts.lines().any(|m| m.contains(&*p.to_string_lossy()));
            if !layers.contains(&key) && !mounted && old(&p) && make_writable_and_remove(&p).is_ok()
            {
                n += 1;
            }
        }
        for (_, p) in entries(self.root.join("downloads")) {
            if old(&p) && fs::remove_file(&p).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}
