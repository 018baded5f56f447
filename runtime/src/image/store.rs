//! The store's records and its on-disk layout: `images.json` (the index of names), blobs by
//! digest, unpacked layers by diff ID, under one lock; lookups, and removal of an image with
//! what only it used.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{format_err, io_at, reference, ImageError};

/// The parts of an image's config that shape the container process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// Normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// The image ID: digest of the config blob.
    pub id: String,
    pub manifest_digest: String,
    /// Layer blob digests, bottom first.
    pub layer_digests: Vec<String>,
    /// Uncompressed layer digests, bottom first; each names an unpacked layer directory.
    pub diff_ids: Vec<String>,
    /// Sum of the blob sizes.
    pub size: u64,
    pub config: ImageConfig,
    /// RFC 3339 time of import.
    pub imported: String,
    /// This platform's manifest, when the image is known by its index's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_manifest: Option<String>,
}

impl ImageRecord {
    /// Every blob the image keeps: layers, config, manifest (and index).
    pub fn blobs(&self) -> impl Iterator<Item = &String> {
        self.layer_digests
            .iter()
            .chain([&self.id, &self.manifest_digest])
            .chain(self.platform_manifest.iter())
    }

    /// The digest of the manifest that lists the layers (the platform's, for an index).
    pub fn manifest(&self) -> &str {
        self.platform_manifest
            .as_deref()
            .unwrap_or(&self.manifest_digest)
    }

    /// The image ID as the kubelet reports it in `imageID`.
    pub fn image_ref(&self) -> String {
        format!(
            "{}@{}",
            reference::repository(&self.name),
            self.manifest_digest
        )
    }
}

pub(super) fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format_err(digest, "only sha256 digests are supported"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format_err(digest, "malformed digest"));
    }
    Ok(hex)
}

/// The store. All paths live under `root`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(super) root: PathBuf,
}

/// Holds the store's write lock while alive (released when the file closes).
pub(super) type Lock = nix::fcntl::Flock<File>;

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn lock(&self) -> Result<Lock, ImageError> {
        let p = self.root.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_at(&p))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_at(&p)(e.into()))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    pub(super) fn read_index(&self) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format_err(p.display().to_string(), e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    pub(super) fn write_index(
        &self,
        index: &BTreeMap<String, ImageRecord>,
    ) -> Result<(), ImageError> {
        let p = self.index_path();
        let tmp = self.root.join("images.json.tmp");
        let data = serde_json::to_vec_pretty(index).expect("image index serialises");
        fs::write(&tmp, data).map_err(io_at(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_at(&p))
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers").join(digest_hex(diff_id)?))
    }

    /// All images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.read_index()?.into_values().collect())
    }

    /// Finds an image by reference (normalised), by ID or by a unique ID prefix.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let index = self.read_index()?;
        if let Ok(n) = reference::normalize(reference) {
            if let Some(r) = index.get(&n) {
                return Ok(r.clone());
            }
            if let Some((repo, digest)) = n.split_once('@') {
                let repo = reference::repository(repo);
                if let Some(r) = index
                    .values()
                    .find(|r| r.manifest_digest == digest && reference::repository(&r.name) == repo)
                {
                    return Ok(r.clone());
                }
            }
        }
        let id = reference.strip_prefix("sha256:").unwrap_or(reference);
        if id.len() >= 6 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = index
                .values()
                .filter(|r| r.id.trim_start_matches("sha256:").starts_with(id));
            if let Some(first) = found.next() {
                if found.all(|r| r.id == first.id) {
                    return Ok(first.clone());
                }
            }
        }
        Err(ImageError::NotFound(reference.to_string()))
    }

    /// Overlay lower directories for the image, topmost layer first.
    pub fn lowerdirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        image
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.layer_path(d))
            .collect()
    }

    /// Removes a name, then the blobs and layers that no remaining image uses. A layer mounted
    /// by a container (listed in `mountinfo`) is never deleted: the removal is refused instead.
    pub fn remove(&self, reference: &str, mountinfo: &Path) -> Result<ImageRecord, ImageError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let rec = self.resolve(reference)?;
        index.remove(&rec.name);
        let remaining: Vec<&ImageRecord> = index.values().collect();
        let mut doomed_layers = Vec::new();
        for d in &rec.diff_ids {
            if !remaining.iter().any(|o| o.diff_ids.contains(d)) {
                doomed_layers.push(self.layer_path(d)?);
            }
        }
        let mut doomed_blobs = Vec::new();
        for b in rec.blobs() {
            let used = remaining.iter().any(|o| o.blobs().any(|x| x == b));
            if !used {
                doomed_blobs.push(self.blob_path(b)?);
            }
        }
        let mounts = fs::read_to_string(mountinfo).unwrap_or_default();
        for l in &doomed_layers {
            let needle = l.display().to_string();
            if mounts
                .lines()
                .any(|m| m.contains(" overlay ") && m.contains(&needle))
            {
                return Err(ImageError::InUse {
                    name: rec.name.clone(),
                    layer: needle,
                });
            }
        }
        self.write_index(&index)?;
        for l in doomed_layers {
            let _ = make_writable_and_remove(&l);
        }
        for b in doomed_blobs {
            let _ = fs::remove_file(b);
        }
        Ok(rec)
    }
}

/// Removes a tree even where a layer made directories read-only.
pub fn make_writable_and_remove(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(_) => {
            let _ = std::process::Command::new("chmod")
                .args(["-R", "u+rwx"])
                .arg(path)
                .status();
            fs::remove_dir_all(path)
        }
    }
}

/// A temporary directory that removes itself; layers may contain read-only directories.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = make_writable_and_remove(&self.0);
    }
}

pub fn tempdir_in(parent: &Path) -> Result<TempDir, ImageError> {
    fs::create_dir_all(parent).map_err(io_at(parent))?;
    for _ in 0..16 {
        let p = parent.join(format!("import-{:016x}", rand::random::<u64>()));
        match fs::create_dir(&p) {
            Ok(()) => return Ok(TempDir(p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_at(&p)(e)),
        }
    }
    Err(format_err(
        parent.display().to_string(),
        "cannot create a temporary directory",
    ))
}
