//! Image archives: OCI image layouts (a directory), OCI archives and docker-archive tarballs
//! (optionally compressed) read into candidates for `commit`; an image written back out as an
//! OCI archive.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::commit::{sha256_file, Candidate};
use super::format::{go_arch, ConfigFile, DockerManifestEntry, Index, Manifest};
use super::store::{digest_hex, tempdir_in};
use super::{format_err, io_at, layer, reference, ImageError, ImageRecord, ImageStore};

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

impl ImageStore {
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
}
