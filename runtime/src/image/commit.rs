//! Adding images to the store: blobs verified against their digests (as they stream by),
//! layers unpacked side by side, and all of it rolled back when anything fails.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{format_err, io_at, layer, ImageConfig, ImageError, ImageRecord, ImageStore};

/// An image found in an archive, before it is committed to the store.
pub(super) struct Candidate {
    pub(super) names: Vec<String>,
    pub(super) manifest: Vec<u8>,
    pub(super) manifest_digest: String,
    /// The digest the image is known by (its index's, when it came from one).
    pub(super) record_digest: String,
    /// Other blobs to keep with it (the index it came from).
    pub(super) extra_blobs: Vec<Vec<u8>>,
    /// The layer blobs are the store's own, verified on download: not hashed again.
    pub(super) blobs_verified: bool,
    pub(super) config_path: PathBuf,
    pub(super) config_digest: String,
    /// (blob path, blob digest if known, diff id)
    pub(super) layers: Vec<(PathBuf, Option<String>, String)>,
    pub(super) config: ImageConfig,
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

pub(super) fn sha256_file(path: &Path) -> Result<(String, u64), ImageError> {
    let f = File::open(path).map_err(io_at(path))?;
    let mut h = Hashing::new(BufReader::new(f));
    io::copy(&mut h, &mut io::sink()).map_err(io_at(path))?;
    Ok((
        format!("sha256:{}", hex::encode(h.hasher.finalize())),
        h.count,
    ))
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

impl ImageStore {
    /// Adds verified candidates to the store under its lock; on error, what this added goes.
    pub(super) fn commit_all(
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
        let layer_err = |error| ImageError::Layer {
            index,
            digest: diff_id.to_string(),
            error,
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
}
