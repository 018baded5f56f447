//! Pulls from OCI-distribution registries (oci-client) into the store: image indexes resolved
//! to this platform, OCI and Docker schema-2 manifests, gzip/zstd/plain layers. Every blob is
//! checked against its digest and size before it becomes visible; a blob two pulls want is
//! downloaded once; an interrupted download resumes from what is on disk (`downloads/`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

mod credentials;

pub use credentials::Credentials;

use super::commit::{sha256_file, Candidate};
use super::format::{go_arch, ConfigFile, Descriptor, Manifest};
use super::store::digest_hex;
use super::{format_err, io_at, reference, tempdir_in, ImageError, ImageRecord, ImageStore};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Registry settings from podlet's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Mirrors by registry (`docker.io`), tried in order before the registry itself.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: ImageRecord,
    /// Bytes fetched from the registry (layers already present are not counted).
    pub downloaded: u64,
    pub duration: Duration,
}

pub struct Puller {
    store: ImageStore,
    /// One client per set of credentials: a client remembers the first credentials it used for
    /// a registry (and the tokens they got), which must never serve another pod's pull.
    clients: Mutex<HashMap<String, oci_client::Client>>,
    cfg: RegistryConfig,
    /// One download per blob at a time, whoever asks.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Layer downloads of all pulls together.
    slots: Arc<tokio::sync::Semaphore>,
}

impl Puller {
    pub fn new(store: ImageStore, cfg: RegistryConfig) -> Self {
        Self {
            store,
            clients: Mutex::new(HashMap::new()),
            cfg,
            inflight: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(6)),
        }
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    fn client(&self, auth: &RegistryAuth) -> oci_client::Client {
        let key = match auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Basic(u, p) => format!("basic:{u}:{}", sha256(p.as_bytes())),
            RegistryAuth::Bearer(t) => format!("bearer:{}", sha256(t.as_bytes())),
        };
        self.clients
            .lock()
            .expect("clients lock")
            .entry(key)
            .or_insert_with(|| {
                oci_client::Client::new(ClientConfig {
                    protocol: ClientProtocol::HttpsExcept(self.cfg.insecure.clone()),
                    connect_timeout: Some(Duration::from_secs(15)),
                    read_timeout: Some(Duration::from_secs(60)),
                    max_concurrent_download: 4,
                    user_agent: concat!("podlet/", env!("CARGO_PKG_VERSION")),
                    ..Default::default()
                })
            })
            .clone()
    }

    /// Where to fetch `image` from: its mirrors in order, then its own registry.
    fn sources(&self, image: &str) -> Result<Vec<Reference>, ImageError> {
        let r: Reference = image
            .parse()
            .map_err(|e| ImageError::Reference(format!("{image}: {e}")))?;
        let mut out = Vec::new();
        for m in self.cfg.mirrors.get(r.registry()).into_iter().flatten() {
            let m = m
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            out.push(match r.digest() {
                Some(d) => Reference::with_digest(m.to_string(), r.repository().into(), d.into()),
                None => Reference::with_tag(
                    m.to_string(),
                    r.repository().into(),
                    r.tag().unwrap_or("latest").into(),
                ),
            });
        }
        out.push(r);
        Ok(out)
    }

    /// Pulls `image` (any reference form) and records it in the store under its normalised name.
    pub async fn pull(&self, image: &str, creds: &Credentials) -> Result<Pulled, ImageError> {
        let started = Instant::now();
        let name = reference::normalize(image).map_err(ImageError::Reference)?;
        let mut last = None;
        for src in self.sources(&name)? {
            for auth in creds.all_for(src.registry()) {
                match self.pull_from(&name, &src, &auth).await {
                    Ok((image, downloaded)) => {
                        return Ok(Pulled {
                            image,
                            downloaded,
                            duration: started.elapsed(),
                        })
                    }
                    // Try the next credentials only when these were refused.
                    Err(e @ ImageError::Registry { auth: true, .. }) => last = Some(e),
                    Err(e @ ImageError::Registry { .. }) => {
                        last = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::NotFound(image.to_string())))
    }

    fn registry_err(
        &self,
        src: &Reference,
        e: oci_client::errors::OciDistributionError,
    ) -> ImageError {
        use oci_client::errors::OciDistributionError as E;
        let auth = matches!(e, E::AuthenticationFailure(_) | E::UnauthorizedError { .. })
            || matches!(
                &e,
                E::ServerError {
                    code: 401 | 403,
                    ..
                }
            )
            || matches!(&e, E::RegistryError { envelope, .. } if envelope.errors.iter().any(|x| {
                matches!(x.code, oci_client::errors::OciErrorCode::Unauthorized | oci_client::errors::OciErrorCode::Denied)
            }));
        ImageError::Registry {
            reference: src.whole(),
            message: e.to_string(),
            auth,
        }
    }

    async fn pull_from(
        &self,
        name: &str,
        src: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(ImageRecord, u64), ImageError> {
        let client = &self.client(auth);
        client
            .auth(src, auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| self.registry_err(src, e))?;
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
        let (top, _) = client
            .pull_manifest_raw(src, auth, &accept)
            .await
            .map_err(|e| self.registry_err(src, e))?;
        let top_digest = sha256(&top);
        if let Some(want) = src.digest() {
            if want != top_digest {
                return Err(ImageError::Digest {
                    what: format!("manifest of {}", src.whole()),
                    expected: want.to_string(),
                    actual: top_digest,
                });
            }
        }
        let top_json: serde_json::Value = serde_json::from_slice(&top)
            .map_err(|e| format_err(src.whole(), format!("manifest: {e}")))?;
        // An index: this platform's manifest, fetched by digest.
        let (manifest, manifest_digest, index) = if top_json.get("manifests").is_some() {
            let d = select_platform(&top_json).ok_or_else(|| {
                format_err(
                    src.whole(),
                    format!("no image for linux/{} in the index", go_arch()),
                )
            })?;
            let by_digest =
                Reference::with_digest(src.registry().into(), src.repository().into(), d.clone());
            let (m, _) = client
                .pull_manifest_raw(&by_digest, auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
                .await
                .map_err(|e| self.registry_err(src, e))?;
            let actual = sha256(&m);
            if actual != d {
                return Err(ImageError::Digest {
                    what: format!("manifest of {}", src.whole()),
                    expected: d,
                    actual,
                });
            }
            (m, actual, Some(top.clone()))
        } else {
            (top.clone(), top_digest.clone(), None)
        };
        let parsed: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| format_err(src.whole(), format!("manifest: {e}")))?;
        if !parsed.media_type.is_empty()
            && parsed.media_type != OCI_MANIFEST
            && parsed.media_type != DOCKER_MANIFEST
        {
            return Err(format_err(
                src.whole(),
                format!("unsupported manifest type {}", parsed.media_type),
            ));
        }
        // The config first: it names the layers' diff IDs.
        let config_path = self
            .fetch_blob(client, src, &descriptor(&parsed.config))
            .await?;
        let config_bytes = std::fs::read(&config_path.0).map_err(io_at(&config_path.0))?;
        let config: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| format_err(&parsed.config.digest, format!("image config: {e}")))?;
        if config.rootfs.diff_ids.len() != parsed.layers.len() {
            return Err(format_err(
                &parsed.config.digest,
                format!(
                    "image config has {} diff IDs for {} layers",
                    config.rootfs.diff_ids.len(),
                    parsed.layers.len()
                ),
            ));
        }
        let mut downloaded = config_path.1;
        let fetches = parsed
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, diff)| {
                let d = descriptor(l);
                async move {
                    // A layer unpacked before needs no blob download when its blob is kept too.
                    if self.store.layer_path(diff)?.exists()
                        && self.store.blob_path(&d.digest)?.exists()
                    {
                        return Ok((self.store.blob_path(&d.digest)?, 0));
                    }
                    let _slot = self.slots.clone().acquire_owned().await;
                    self.fetch_blob(client, src, &d).await
                }
            });
        let layers: Vec<(PathBuf, u64)> = futures_util::future::try_join_all(fetches).await?;
        downloaded += layers.iter().map(|l| l.1).sum::<u64>();
        let candidate = Candidate {
            names: vec![name.to_string()],
            manifest: manifest.clone(),
            manifest_digest: manifest_digest.clone(),
            record_digest: top_digest,
            extra_blobs: index.into_iter().collect(),
            blobs_verified: true,
            config_path: config_path.0,
            config_digest: parsed.config.digest.clone(),
            layers: layers
                .iter()
                .zip(&parsed.layers)
                .zip(&config.rootfs.diff_ids)
                .map(|(((p, _), l), diff)| (p.clone(), Some(l.digest.clone()), diff.clone()))
                .collect(),
            config: config.config.clone().unwrap_or_default(),
        };
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || {
            let work = tempdir_in(&store.root.join("tmp"))?;
            store.commit_all(vec![candidate], work.path())
        })
        .await
        .map_err(|e| format_err(name, e.to_string()))??;
        let image = records
            .into_iter()
            .next()
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        Ok((image, downloaded))
    }

    /// Downloads one blob into the store (verified), unless it is there. Returns its path and
    /// the bytes fetched.
    async fn fetch_blob(
        &self,
        client: &oci_client::Client,
        src: &Reference,
        d: &OciDescriptor,
    ) -> Result<(PathBuf, u64), ImageError> {
        let dest = self.store.blob_path(&d.digest)?;
        if dest.exists() {
            return Ok((dest, 0));
        }
        let lock = self
            .inflight
            .lock()
            .expect("inflight lock")
            .entry(d.digest.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let result = self.download(client, src, d, &dest).await;
        self.inflight
            .lock()
            .expect("inflight lock")
            .remove(&d.digest);
        result
    }

    async fn download(
        &self,
        client: &oci_client::Client,
        src: &Reference,
        d: &OciDescriptor,
        dest: &std::path::Path,
    ) -> Result<(PathBuf, u64), ImageError> {
        use futures_util::StreamExt;
        if dest.exists() {
            // Another pull finished it while this one waited.
            return Ok((dest.to_path_buf(), 0));
        }
        let dir = self.store.root.join("downloads");
        tokio::fs::create_dir_all(&dir).await.map_err(io_at(&dir))?;
        let partial = dir.join(format!("{}.partial", digest_hex(&d.digest)?));
        let mut have = tokio::fs::metadata(&partial)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if d.size >= 0 && have >= d.size as u64 {
            // Complete but not yet checked when the last pull stopped: check it now.
            if let Ok(done) = self.verify(src, d, &partial, dest).await {
                return Ok((done, 0));
            }
            have = 0;
        }
        let resp = client
            .pull_blob_stream_partial(src, d, have, None)
            .await
            .map_err(|e| self.registry_err(src, e))?;
        let (mut stream, append) = match resp {
            BlobResponse::Partial(s) if have > 0 => (s.stream, true),
            // A registry that ignores ranges sends it all again.
            BlobResponse::Partial(s) | BlobResponse::Full(s) => (s.stream, false),
        };
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&partial)
            .await
            .map_err(io_at(&partial))?;
        let mut fetched = 0u64;
        let mut len = if append { have } else { 0 };
        // Hashed as it arrives (what a resumed download had, first): no second read.
        let mut hasher = Sha256::new();
        if append {
            use tokio::io::AsyncReadExt;
            let mut r = tokio::fs::File::open(&partial)
                .await
                .map_err(io_at(&partial))?
                .take(have);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = r.read(&mut buf).await.map_err(io_at(&partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // What arrived stays for the next attempt to resume from, unless the
                    // client found it wrong.
                    let msg = e.to_string();
                    if msg.contains("digest") {
                        let _ = tokio::fs::remove_file(&partial).await;
                        return Err(ImageError::Digest {
                            what: format!("blob {} of {}", d.digest, src.whole()),
                            expected: d.digest.clone(),
                            actual: msg,
                        });
                    }
                    return Err(ImageError::Registry {
                        reference: src.whole(),
                        message: format!("downloading {}: {msg}", d.digest),
                        auth: false,
                    });
                }
            };
            len += chunk.len() as u64;
            if d.size >= 0 && len > d.size as u64 {
                drop(f);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(format_err(
                    &d.digest,
                    format!(
                        "the registry sent more than the {} bytes the manifest says",
                        d.size
                    ),
                ));
            }
            hasher.update(&chunk);
            f.write_all(&chunk).await.map_err(io_at(&partial))?;
            fetched += chunk.len() as u64;
        }
        f.sync_all().await.map_err(io_at(&partial))?;
        drop(f);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        let path = accept(src, d, &partial, dest, actual, len).await?;
        Ok((path, fetched))
    }

    /// Hashes a blob already on disk, then [`accept`]s it or removes it.
    async fn verify(
        &self,
        src: &Reference,
        d: &OciDescriptor,
        partial: &std::path::Path,
        dest: &std::path::Path,
    ) -> Result<PathBuf, ImageError> {
        let p = partial.to_path_buf();
        let (actual, size) = tokio::task::spawn_blocking(move || sha256_file(&p))
            .await
            .map_err(|e| format_err(&d.digest, e.to_string()))??;
        accept(src, d, partial, dest, actual, size).await
    }
}

/// Renames a downloaded blob into the store when its digest and size are the descriptor's;
/// removes it otherwise.
async fn accept(
    src: &Reference,
    d: &OciDescriptor,
    partial: &std::path::Path,
    dest: &std::path::Path,
    actual: String,
    size: u64,
) -> Result<PathBuf, ImageError> {
    if actual != d.digest || (d.size >= 0 && size != d.size as u64) {
        let _ = tokio::fs::remove_file(partial).await;
        return Err(ImageError::Digest {
            what: format!(
                "blob of {} ({size} bytes, {} expected)",
                src.whole(),
                d.size
            ),
            expected: d.digest.clone(),
            actual,
        });
    }
    tokio::fs::rename(partial, dest)
        .await
        .map_err(io_at(dest))?;
    Ok(dest.to_path_buf())
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        ..Default::default()
    }
}

/// The index entry for linux on this architecture (and variant, where one is asked for).
fn select_platform(index: &serde_json::Value) -> Option<String> {
    let want_variant = match go_arch() {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    let entries = index["manifests"].as_array()?;
    let matching: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == go_arch())
        .collect();
    let pick = matching
        .iter()
        .find(|m| m["platform"]["variant"].as_str() == want_variant)
        .or_else(|| matching.first())?;
    pick["digest"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_are_picked_by_platform() {
        let arch = go_arch();
        let idx = serde_json::json!({"manifests": [
            {"digest": "sha256:other", "platform": {"os": "linux", "architecture": "s390x-nope"}},
            {"digest": "sha256:win", "platform": {"os": "windows", "architecture": arch}},
            {"digest": "sha256:ours", "platform": {"os": "linux", "architecture": arch}},
        ]});
        assert_eq!(select_platform(&idx).as_deref(), Some("sha256:ours"));
        let none = serde_json::json!({"manifests": [{"digest": "sha256:x", "platform": {"os": "linux", "architecture": "nope"}}]});
        assert_eq!(select_platform(&none), None);
    }
}
