//! Image garbage collection as the kubelet does it: every period, images no container of a
//! pod on the node uses are removed least recently used first — when the image filesystem is
//! above `--image-gc-high-threshold` percent, until it is below `--image-gc-low-threshold`;
//! and, with `--image-maximum-gc-age`, whenever one has gone unused that long. Images younger
//! than `--image-minimum-gc-age` stay. Removing an image removes the layers and blobs no other
//! image needs.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podlet_runtime::image::{ImageError, ImageStore};

use crate::config::{Config, ImageGcPolicy};

/// When each image (by ID) was first seen and last used, as the kubelet keeps it: in memory,
/// starting over when the agent restarts.
#[derive(Default)]
pub struct Usage(Mutex<HashMap<String, (Instant, Instant)>>);

impl Usage {
    pub fn used(&self, id: &str) {
        let now = Instant::now();
        let mut m = self.0.lock().expect("image usage lock");
        m.entry(id.to_string()).or_insert((now, now)).1 = now;
    }

    fn times(&self, id: &str) -> (Instant, Instant) {
        let now = Instant::now();
        *self
            .0
            .lock()
            .expect("image usage lock")
            .entry(id.to_string())
            .or_insert((now, now))
    }
}

/// What garbage collection works on: the store and when its images were used, the policy, and
/// where the image filesystem and the mounts are.
pub struct Collector {
    store: ImageStore,
    usage: Arc<Usage>,
    policy: ImageGcPolicy,
    mountinfo: PathBuf,
    images_dir: PathBuf,
}

impl Collector {
    pub fn new(cfg: &Config, store: ImageStore, usage: Arc<Usage>) -> Self {
        Self {
            store,
            usage,
            policy: cfg.image_gc.clone(),
            mountinfo: cfg.mountinfo.clone(),
            images_dir: cfg.images_dir(),
        }
    }
}

/// Collects every period until the process ends; `in_use` names the images the node's pods
/// use.
pub async fn run(gc: Collector, in_use: impl Fn() -> Vec<String> + Send + Sync + 'static) {
    let gc = Arc::new(gc);
    let in_use = Arc::new(in_use);
    loop {
        tokio::time::sleep(gc.policy.period).await;
        let (gc, in_use) = (gc.clone(), in_use.clone());
        match tokio::task::spawn_blocking(move || gc.collect(&in_use())).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(?removed, "image garbage collection");
            }
            Ok(Err(e)) => tracing::warn!("image garbage collection: {}", crate::util::chain(&e)),
            _ => {}
        }
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing images")]
    List(#[source] ImageError),
    #[error("measuring {path}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("pruning unreferenced blobs and layers")]
    Prune(#[source] ImageError),
}

impl Collector {
    /// The images (by ID) of `refs`.
    fn ids(&self, refs: &[String]) -> BTreeSet<String> {
        refs.iter()
            .filter_map(|i| self.store.resolve(i).ok())
            .map(|r| r.id)
            .collect()
    }

    /// One pass, sparing the images `in_use` names; returns the names removed.
    pub fn collect(&self, in_use: &[String]) -> Result<Vec<String>, GcError> {
        let policy = &self.policy;
        let images = self.store.list().map_err(GcError::List)?;
        let used = self.ids(in_use);
        for id in &used {
            self.usage.used(id);
        }
        let now = Instant::now();
        // Unused images old enough, least recently used first; names sharing an ID go together.
        let mut by_id: HashMap<String, (Instant, u64, Vec<String>)> = HashMap::new();
        for i in &images {
            if used.contains(&i.id) {
                continue;
            }
            let (first, last) = self.usage.times(&i.id);
            if now.duration_since(first) < policy.min_age {
                continue;
            }
            let e = by_id
                .entry(i.id.clone())
                .or_insert((last, i.size, Vec::new()));
            e.2.push(i.name.clone());
        }
        let mut candidates: Vec<(String, Instant, u64, Vec<String>)> = by_id
            .into_iter()
            .map(|(id, (last, size, names))| (id, last, size, names))
            .collect();
        candidates.sort_by_key(|c| c.1);
        let mut removed = Vec::new();
        let mut remove = |names: &[String]| -> u64 {
            let mut freed = 0;
            for n in names {
                match self.store.remove(n, &self.mountinfo) {
                    Ok(r) => {
                        freed = freed.max(r.size);
                        removed.push(n.clone());
                    }
                    Err(e) => tracing::warn!(image = %n, "not removed: {e}"),
                }
            }
            freed
        };
        let mut rest = Vec::new();
        for c in candidates {
            if !policy.max_age.is_zero() && now.duration_since(c.1) > policy.max_age {
                remove(&c.3);
            } else {
                rest.push(c);
            }
        }
        let fs =
            nix::sys::statvfs::statvfs(&self.images_dir).map_err(|source| GcError::Statvfs {
                path: self.images_dir.clone(),
                source,
            })?;
        let total = fs.blocks() as u128 * fs.fragment_size() as u128;
        let avail = fs.blocks_available() as u128 * fs.fragment_size() as u128;
        if total > 0 {
            let used_bytes = total - avail;
            let usage = used_bytes * 100 / total;
            if usage >= policy.high as u128 {
                let target = total * policy.low as u128 / 100;
                let mut to_free = used_bytes.saturating_sub(target);
                tracing::info!(
                    usage,
                    high = policy.high,
                    "image filesystem above the threshold"
                );
                for c in rest {
                    if to_free == 0 {
                        break;
                    }
                    let f = remove(&c.3) as u128;
                    to_free = to_free.saturating_sub(f.max(1));
                }
            }
        }
        // What no image refers to any more (an interrupted pull's leftovers), once surely stale.
        self.store
            .prune_unreferenced(&self.mountinfo, Duration::from_secs(3600))
            .map_err(GcError::Prune)?;
        Ok(removed)
    }
}
