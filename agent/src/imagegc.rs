//! Image garbage collection as the kubelet does it: every period, images no container of a
//! pod on the node uses are removed least recently used first — when the image filesystem is
//! above `--image-gc-high-threshold` percent, until it is below `--image-gc-low-threshold`;
//! and, with `--image-maximum-gc-age`, whenever one has gone unused that long. Images younger
//! than `--image-minimum-gc-age` stay. Removing an image removes the layers and blobs no other
//! image needs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ImageGcPolicy;
use crate::pod::Node;

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

pub async fn run(node: Arc<Node>, policy: ImageGcPolicy) {
    loop {
        tokio::time::sleep(policy.period).await;
        let n = node.clone();
        let p = policy.clone();
        match tokio::task::spawn_blocking(move || collect(&n, &p)).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(?removed, "image garbage collection");
            }
            Ok(Err(e)) => tracing::warn!("image garbage collection: {e}"),
            _ => {}
        }
    }
}

/// The images (by ID) the node's pods use.
fn in_use(node: &Node) -> BTreeSet<String> {
    let pods = node.pods.read().expect("pods lock").clone();
    pods.values()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .filter_map(|c| c.image.clone())
                .collect::<Vec<_>>()
        })
        .filter_map(|i| node.images.resolve(&i).ok())
        .map(|r| r.id)
        .collect()
}

/// One pass; returns the names removed.
pub fn collect(node: &Node, policy: &ImageGcPolicy) -> anyhow::Result<Vec<String>> {
    let images = node.images.list()?;
    let used = in_use(node);
    for id in &used {
        node.image_usage.used(id);
    }
    let now = Instant::now();
    // Unused images old enough, least recently used first; names sharing an ID go together.
    let mut by_id: HashMap<String, (Instant, u64, Vec<String>)> = HashMap::new();
    for i in &images {
        if used.contains(&i.id) {
            continue;
        }
        let (first, last) = node.image_usage.times(&i.id);
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
            match node.images.remove(n, &node.cfg.mountinfo) {
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
    let fs = nix::sys::statvfs::statvfs(&node.cfg.images_dir())?;
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
    node.images
        .prune_unreferenced(&node.cfg.mountinfo, Duration::from_secs(3600))?;
    Ok(removed)
}
