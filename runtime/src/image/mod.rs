//! A content-addressed image store: blobs by digest, each layer unpacked once (keyed by its
//! diff ID) in overlayfs form, and an index of image names. Images come from OCI image layouts,
//! OCI archives and docker-archive tarballs; every blob's digest is verified on the way in.

pub mod layer;
pub mod pull;
pub mod reference;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: {message}")]
    Format { file: String, message: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        index: usize,
        digest: String,
        #[source]
        source: layer::LayerError,
    },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image {name:?} is in use by a running container ({layer})")]
    InUse { name: String, layer: String },
    #[error("{0}")]
    Reference(String),
    #[error("{reference}: {message}")]
    Registry {
        reference: String,
        message: String,
        /// The registry refused the credentials (or their absence).
        auth: bool,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(file: impl Into<String>, message: impl Into<String>) -> ImageError {
    ImageError::Format {
        file: file.into(),
        message: message.into(),
    }
}

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

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    #[serde(rename = "mediaType")]
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    /// Off for content already verified: only counted.
    enabled: bool,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            enabled: true,
        }
    }
    fn finish(mut self) -> io::Result<(String, u64)> {
        // Drain what the consumer left (tar padding, trailing blocks) through the hasher.
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.enabled {
            self.hasher.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format_err(digest, "only sha256 digests are supported"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format_err(digest, "malformed digest"));
    }
    Ok(hex)
}

fn sha256_file(path: &Path) -> Result<(String, u64), ImageError> {
    let f = File::open(path).map_err(io_at(path))?;
    let mut h = Hashing::new(BufReader::new(f));
    io::copy(&mut h, &mut io::sink()).map_err(io_at(path))?;
    Ok((
        format!("sha256:{}", hex::encode(h.hasher.finalize())),
        h.count,
    ))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// Opens `path` and returns a reader that transparently decompresses gzip or zstd.
fn decompressing(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(io_at(path))?;
    f.rewind().map_err(io_at(path))?;
    let r = BufReader::with_capacity(256 * 1024, f);
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(io_at(path))?)
    } else {
        Box::new(r)
    })
}

/// An image found in an archive, before it is committed to the store.
struct Candidate {
    names: Vec<String>,
    manifest: Vec<u8>,
    manifest_digest: String,
    /// The digest the image is known by (its index's, when it came from one).
    record_digest: String,
    /// Other blobs to keep with it (the index it came from).
    extra_blobs: Vec<Vec<u8>>,
    /// The layer blobs are the store's own, verified on download: not hashed again.
    blobs_verified: bool,
    config_path: PathBuf,
    config_digest: String,
    /// (blob path, blob digest if known, diff id)
    layers: Vec<(PathBuf, Option<String>, String)>,
    config: ImageConfig,
}

/// The store. All paths live under `root`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// Holds the store's write lock while alive (released when the file closes).
type Lock = nix::fcntl::Flock<File>;

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

    fn lock(&self) -> Result<Lock, ImageError> {
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

    fn read_index(&self) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format_err(p.display().to_string(), e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    fn write_index(&self, index: &BTreeMap<String, ImageRecord>) -> Result<(), ImageError> {
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

    /// Imports every image in `source` (an OCI layout directory, an OCI archive or a docker
    /// archive; the tarballs may be gzip-compressed). `name` names the image when the archive
    /// holds one image and names none itself, or overrides its name. On error nothing is added.
    pub fn import(
        &self,
        source: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let work = tempdir_in(&self.root.join("tmp"))?;
        let result = self.import_in(source, name, work.path());
        drop(work);
        result
    }

    fn import_in(
        &self,
        source: &Path,
        name: Option<&str>,
        work: &Path,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let meta = fs::metadata(source).map_err(io_at(source))?;
        let layout = if meta.is_dir() {
            source.to_path_buf()
        } else {
            let dir = work.join("archive");
            fs::create_dir(&dir).map_err(io_at(&dir))?;
            let reader = decompressing(source)?;
            layer::unpack(reader, &dir, false).map_err(|e| {
                format_err(
                    source.display().to_string(),
                    format!("not a valid image archive: {e}"),
                )
            })?;
            dir
        };
        let src = source.display().to_string();
        let mut candidates = if layout.join("index.json").exists() {
            self.read_oci_layout(&layout, &src)?
        } else if layout.join("manifest.json").exists() {
            self.read_docker_archive(&layout, &src)?
        } else {
            return Err(format_err(
                src,
                "neither an OCI image layout (index.json) nor a docker archive (manifest.json)",
            ));
        };
        if let Some(n) = name {
            if candidates.len() != 1 {
                return Err(format_err(
                    src,
                    format!(
                        "--name needs an archive with one image, it has {}",
                        candidates.len()
                    ),
                ));
            }
            candidates[0].names = vec![reference::normalize(n).map_err(ImageError::Reference)?];
        }
        if candidates.is_empty() {
            return Err(format_err(src, "the archive holds no image"));
        }
        for c in &candidates {
            if c.names.is_empty() {
                return Err(format_err(
                    &src,
                    format!(
                        "image {} has no name; give one with --name",
                        c.config_digest
                    ),
                ));
            }
        }

        self.commit_all(candidates, work)
    }

    /// Adds verified candidates to the store under its lock; on error, what this added goes.
    fn commit_all(
        &self,
        candidates: Vec<Candidate>,
        work: &Path,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let _lock = self.lock()?;
        let mut created: Vec<PathBuf> = Vec::new();
        let out = self.commit(candidates, work, &mut created);
        if out.is_err() {
            for p in created.iter().rev() {
                let _ = if p.is_dir() {
                    fs::remove_dir_all(p)
                } else {
                    fs::remove_file(p)
                };
            }
        }
        out
    }

    fn commit(
        &self,
        candidates: Vec<Candidate>,
        work: &Path,
        created: &mut Vec<PathBuf>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let mut index = self.read_index()?;
        let mut records = Vec::new();
        let imported = jiff::Timestamp::now().to_string();
        for c in candidates {
            self.unpack_parallel(&c, work, created)?;
            let mut layer_digests = Vec::new();
            let mut size = 0u64;
            for (i, (path, digest, diff_id)) in c.layers.iter().enumerate() {
                let (blob_digest, blob_size) = self.add_layer(
                    i,
                    path,
                    digest.as_deref(),
                    diff_id,
                    work,
                    c.blobs_verified,
                    created,
                )?;
                layer_digests.push(blob_digest);
                size += blob_size;
            }
            self.add_blob_bytes(&c.manifest, &c.manifest_digest, created)?;
            for b in &c.extra_blobs {
                let d = format!("sha256:{}", hex::encode(Sha256::digest(b)));
                self.add_blob_bytes(b, &d, created)?;
            }
            let config_bytes = fs::read(&c.config_path).map_err(io_at(&c.config_path))?;
            size += config_bytes.len() as u64;
            self.add_blob_bytes(&config_bytes, &c.config_digest, created)?;
            for n in &c.names {
                let rec = ImageRecord {
                    name: n.clone(),
                    id: c.config_digest.clone(),
                    manifest_digest: c.record_digest.clone(),
                    layer_digests: layer_digests.clone(),
                    diff_ids: c.layers.iter().map(|l| l.2.clone()).collect(),
                    size,
                    config: c.config.clone(),
                    imported: imported.clone(),
                    platform_manifest: (c.manifest_digest != c.record_digest)
                        .then(|| c.manifest_digest.clone()),
                };
                index.insert(n.clone(), rec.clone());
                records.push(rec);
            }
        }
        self.write_index(&index)?;
        Ok(records)
    }

    fn add_blob_bytes(
        &self,
        data: &[u8],
        digest: &str,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), ImageError> {
        let p = self.blob_path(digest)?;
        if p.exists() {
            return Ok(());
        }
        let tmp = p.with_extension("tmp");
        fs::write(&tmp, data).map_err(io_at(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_at(&p))?;
        created.push(p);
        Ok(())
    }

    /// Unpacks the candidate's missing layers side by side (one thread per layer, as many as
    /// there are CPUs), before `commit` walks them in order.
    fn unpack_parallel(
        &self,
        c: &Candidate,
        work: &Path,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), ImageError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = Vec::new();
        for (i, (path, digest, diff)) in c.layers.iter().enumerate() {
            if seen.insert(diff.clone()) && !self.layer_path(diff)?.exists() {
                todo.push((i, path, digest, diff));
            }
        }
        if todo.len() < 2 {
            return Ok(());
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(todo.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<(Vec<PathBuf>, Option<ImageError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut made = Vec::new();
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let Some((i, path, digest, diff)) = todo.get(k) else {
                                return (made, None);
                            };
                            let r = self.add_layer(
                                *i,
                                path,
                                digest.as_deref(),
                                diff,
                                work,
                                c.blobs_verified,
                                &mut made,
                            );
                            if let Err(e) = r {
                                // What this thread made goes back to the caller for rollback.
                                return (made, Some(e));
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        (Vec::new(), Some(format_err("unpack", "a thread panicked")))
                    })
                })
                .collect()
        });
        let mut first_err = None;
        for (made, err) in results {
            created.extend(made);
            if let Some(e) = err {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Verifies a layer blob, unpacks it unless its diff ID is already present, and stores the
    /// blob. Returns the blob's digest and size.
    #[allow(clippy::too_many_arguments)]
    fn add_layer(
        &self,
        index: usize,
        blob: &Path,
        expected: Option<&str>,
        diff_id: &str,
        work: &Path,
        verified: bool,
        created: &mut Vec<PathBuf>,
    ) -> Result<(String, u64), ImageError> {
        let target = self.layer_path(diff_id)?;
        let layer_err = |source| ImageError::Layer {
            index,
            digest: diff_id.to_string(),
            source,
        };
        let (blob_digest, blob_size) = match (target.exists(), verified, expected) {
            (true, true, Some(e)) => (
                e.to_string(),
                fs::metadata(blob).map_err(io_at(blob))?.len(),
            ),
            (true, _, _) => sha256_file(blob)?,
            _ => {
                let tmp = work.join(format!("layer-{index}"));
                fs::create_dir(&tmp).map_err(io_at(&tmp))?;
                let f = File::open(blob).map_err(io_at(blob))?;
                let mut outer = Hashing::new(BufReader::with_capacity(256 * 1024, f));
                outer.enabled = !verified;
                let mut magic = [0u8; 4];
                let n = read_up_to(&mut outer, &mut magic).map_err(io_at(blob))?;
                let chained = io::Cursor::new(magic[..n].to_vec()).chain(&mut outer);
                let inner: Box<dyn Read + '_> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
                    Box::new(flate2::read::MultiGzDecoder::new(chained))
                } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
                    Box::new(zstd::stream::read::Decoder::new(chained).map_err(io_at(blob))?)
                } else {
                    Box::new(chained)
                };
                let mut diff = Hashing::new(inner);
                layer::unpack(&mut diff, &tmp, nix::unistd::geteuid().is_root())
                    .map_err(layer_err)?;
                let (actual_diff, _) = diff.finish().map_err(io_at(blob))?;
                let (d, s) = outer.finish().map_err(io_at(blob))?;
                // A verified blob was not hashed again: its digest is the expected one.
                let d = match (verified, expected) {
                    (true, Some(e)) => e.to_string(),
                    _ => d,
                };
                if actual_diff != diff_id {
                    return Err(ImageError::Digest {
                        what: format!("layer {index} (uncompressed)"),
                        expected: diff_id.to_string(),
                        actual: actual_diff,
                    });
                }
                if let Some(e) = expected {
                    if e != d {
                        return Err(ImageError::Digest {
                            what: format!("layer {index}"),
                            expected: e.to_string(),
                            actual: d,
                        });
                    }
                }
                fs::rename(&tmp, &target).map_err(io_at(&target))?;
                created.push(target);
                (d, s)
            }
        };
        if let Some(e) = expected {
            if e != blob_digest {
                return Err(ImageError::Digest {
                    what: format!("layer {index}"),
                    expected: e.to_string(),
                    actual: blob_digest,
                });
            }
        }
        let dest = self.blob_path(&blob_digest)?;
        if !dest.exists() {
            let tmp = dest.with_extension("tmp");
            fs::copy(blob, &tmp).map_err(io_at(&tmp))?;
            fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
            created.push(dest);
        }
        Ok((blob_digest, blob_size))
    }

    fn read_verified(
        &self,
        layout: &Path,
        digest: &str,
        what: &str,
    ) -> Result<(PathBuf, Vec<u8>), ImageError> {
        let p = layout.join("blobs/sha256").join(digest_hex(digest)?);
        let data = fs::read(&p).map_err(io_at(&p))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if actual != digest {
            return Err(ImageError::Digest {
                what: what.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok((p, data))
    }

    fn read_oci_layout(&self, layout: &Path, src: &str) -> Result<Vec<Candidate>, ImageError> {
        let index_path = layout.join("index.json");
        let index: Index =
            serde_json::from_slice(&fs::read(&index_path).map_err(io_at(&index_path))?)
                .map_err(|e| format_err(format!("{src}: index.json"), e.to_string()))?;
        let mut out = Vec::new();
        for desc in index.manifests {
            let names: Vec<String> = [
                "io.containerd.image.name",
                "org.opencontainers.image.ref.name",
            ]
            .iter()
            .filter_map(|k| desc.annotations.get(*k))
            .filter(|n| n.contains('/') || n.contains(':'))
            .filter_map(|n| reference::normalize(n).ok())
            .take(1)
            .collect();
            let manifest_desc =
                if desc.media_type.contains("index") || desc.media_type.contains("manifest.list") {
                    let (_, data) = self.read_verified(layout, &desc.digest, "image index")?;
                    let nested: Index = serde_json::from_slice(&data).map_err(|e| {
                        format_err(format!("{src}: index {}", desc.digest), e.to_string())
                    })?;
                    nested
                        .manifests
                        .into_iter()
                        .find(|m| {
                            m.platform
                                .as_ref()
                                .is_some_and(|p| p.os == "linux" && p.architecture == go_arch())
                        })
                        .ok_or_else(|| {
                            format_err(
                                src,
                                format!("index {} has no linux/{} image", desc.digest, go_arch()),
                            )
                        })?
                } else {
                    desc
                };
            let (_, manifest) = self.read_verified(layout, &manifest_desc.digest, "manifest")?;
            let m: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
                format_err(
                    format!("{src}: manifest {}", manifest_desc.digest),
                    e.to_string(),
                )
            })?;
            let _ = (&m.media_type, manifest_desc.size, m.config.size);
            let (config_path, config_data) =
                self.read_verified(layout, &m.config.digest, "image config")?;
            let cfg: ConfigFile = serde_json::from_slice(&config_data).map_err(|e| {
                format_err(format!("{src}: config {}", m.config.digest), e.to_string())
            })?;
            if cfg.rootfs.diff_ids.len() != m.layers.len() {
                return Err(format_err(
                    src,
                    format!(
                        "manifest has {} layers but config lists {} diff_ids",
                        m.layers.len(),
                        cfg.rootfs.diff_ids.len()
                    ),
                ));
            }
            let mut layers = Vec::new();
            for (l, diff) in m.layers.iter().zip(&cfg.rootfs.diff_ids) {
                digest_hex(diff)?;
                let p = layout.join("blobs/sha256").join(digest_hex(&l.digest)?);
                layers.push((p, Some(l.digest.clone()), diff.clone()));
            }
            out.push(Candidate {
                names,
                manifest,
                record_digest: manifest_desc.digest.clone(),
                extra_blobs: Vec::new(),
                blobs_verified: false,
                manifest_digest: manifest_desc.digest,
                config_path,
                config_digest: m.config.digest,
                layers,
                config: cfg.config.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn read_docker_archive(&self, dir: &Path, src: &str) -> Result<Vec<Candidate>, ImageError> {
        let mp = dir.join("manifest.json");
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(&fs::read(&mp).map_err(io_at(&mp))?)
                .map_err(|e| format_err(format!("{src}: manifest.json"), e.to_string()))?;
        let mut out = Vec::new();
        for e in entries {
            let rel = |p: &str| -> Result<PathBuf, ImageError> {
                let cleaned = Path::new(p);
                if cleaned
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(format_err(
                        format!("{src}: manifest.json"),
                        format!("bad path {p:?}"),
                    ));
                }
                Ok(dir.join(cleaned))
            };
            let config_path = rel(&e.config)?;
            let (config_digest, config_size) = sha256_file(&config_path)?;
            let base = config_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if base.len() == 64 && format!("sha256:{base}") != config_digest {
                return Err(ImageError::Digest {
                    what: format!("image config {}", e.config),
                    expected: format!("sha256:{base}"),
                    actual: config_digest,
                });
            }
            let config_data = fs::read(&config_path).map_err(io_at(&config_path))?;
            let cfg: ConfigFile = serde_json::from_slice(&config_data)
                .map_err(|er| format_err(format!("{src}: {}", e.config), er.to_string()))?;
            if cfg.rootfs.diff_ids.len() != e.layers.len() {
                return Err(format_err(
                    src,
                    "manifest.json and config disagree on layer count",
                ));
            }
            let mut layers = Vec::new();
            let mut descs = Vec::new();
            for (l, diff) in e.layers.iter().zip(&cfg.rootfs.diff_ids) {
                digest_hex(diff)?;
                let p = rel(l)?;
                let (d, s) = sha256_file(&p)?;
                descs.push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": d, "size": s}));
                layers.push((p, Some(d), diff.clone()));
            }
            // docker-archive carries no registry manifest: synthesise the OCI one it stands for.
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config_size},
                "layers": descs,
            }))
            .expect("manifest serialises");
            let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
            let names = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| reference::normalize(t).map_err(ImageError::Reference))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Candidate {
                names,
                manifest,
                record_digest: manifest_digest.clone(),
                extra_blobs: Vec::new(),
                blobs_verified: false,
                manifest_digest,
                config_path,
                config_digest,
                layers,
                config: cfg.config.unwrap_or_default(),
            });
        }
        Ok(out)
    }

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

    /// Writes `reference` as an OCI archive (an image layout in a tar) that `import` reads back.
    pub fn export(&self, reference: &str, out: &mut impl Write) -> Result<(), ImageError> {
        let rec = self.resolve(reference)?;
        let manifest = rec.manifest();
        let manifest_bytes =
            fs::read(self.blob_path(manifest)?).map_err(io_at(&self.blob_path(manifest)?))?;
        let tag = rec
            .name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or("latest");
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": media_type,
                "digest": manifest,
                "size": manifest_bytes.len(),
                "annotations": {
                    "io.containerd.image.name": rec.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        });
        let mut tar = tar::Builder::new(out);
        let mut add = |path: &str, data: &[u8]| -> io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, path, data)
        };
        let w = |e: io::Error| format_err("export", e.to_string());
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(w)?;
        add(
            "index.json",
            &serde_json::to_vec(&index).unwrap_or_default(),
        )
        .map_err(w)?;
        for d in rec
            .layer_digests
            .iter()
            .chain([&rec.id, &manifest.to_string()])
        {
            let p = self.blob_path(d)?;
            let f = File::open(&p).map_err(io_at(&p))?;
            let mut h = tar::Header::new_ustar();
            h.set_size(f.metadata().map_err(io_at(&p))?.len());
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            // Streamed: layers can be large.
            tar.append_data(&mut h, format!("blobs/sha256/{}", digest_hex(d)?), f)
                .map_err(w)?;
        }
        tar.into_inner().map_err(w)?.flush().map_err(w)?;
        Ok(())
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

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
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

/// Writes to stdout a human table of images.
pub fn write_table(images: &[ImageRecord], out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{:<50} {:<14} {:>10}", "IMAGE", "ID", "SIZE")?;
    for i in images {
        let id = i.id.trim_start_matches("sha256:");
        writeln!(
            out,
            "{:<50} {:<14} {:>10}",
            i.name,
            &id[..12.min(id.len())],
            human_size(i.size)
        )?;
    }
    Ok(())
}

pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
