//! The pod's volumes: bind mounts for emptyDir, hostPath and the volumes podlet writes, and
//! writing those: the files of configMap, secret, projected and downwardAPI volumes, kept
//! under the pod's data dir and bind-mounted read-only.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use k8s_openapi::api::core::v1::{KeyToPath, Volume};

use super::*;
use crate::pod::translate::ApiData;

/// Removes files below `dir` that `files` (paths relative to `root`) no longer has.
fn remove_stale(
    root: &std::path::Path,
    dir: &std::path::Path,
    files: &BTreeMap<String, (Vec<u8>, Option<i32>)>,
) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_stale(root, &p, files);
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .map(|r| r.to_string_lossy().into_owned());
        if rel.is_ok_and(|r| !files.contains_key(&r)) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl Worker {
    pub(super) fn volume_mounts(
        &self,
        c: &Container,
        field: &str,
    ) -> Result<Vec<BindMount>, String> {
        let mut out = Vec::new();
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let vol = self
                .spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .ok_or_else(|| {
                    format!("{field}.volumeMounts[{j}].name: Not found: {:?}", m.name)
                })?;
            let mut forced_ro = false;
            let mut source = if vol.empty_dir.is_some() {
                let d = self.data_dir.join("volumes/empty-dir").join(&vol.name);
                std::fs::create_dir_all(&d).map_err(|e| format!("volume {:?}: {e}", vol.name))?;
                use std::os::unix::fs::PermissionsExt;
                // fsGroup: the volume belongs to the group, setgid so new files do too.
                let fs_group = self
                    .spec
                    .security_context
                    .as_ref()
                    .and_then(|s| s.fs_group)
                    .and_then(|g| u32::try_from(g).ok());
                // In a user namespace, IDs are the pod's: the host sees them shifted.
                let shift = self.svc.userns.get(&self.uid).map_or(0, |r| r.host_id);
                if fs_group.is_some() || shift > 0 {
                    let g = fs_group.unwrap_or(0).saturating_add(shift);
                    std::os::unix::fs::chown(&d, Some(shift), Some(g))
                        .map_err(|e| format!("volume {:?}: {e}", vol.name))?;
                }
                let mode = if fs_group.is_some() { 0o2777 } else { 0o777 };
                let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode));
                d
            } else if let Some(hp) = &vol.host_path {
                let p = PathBuf::from(&hp.path);
                match hp.type_.as_deref().unwrap_or("") {
                    "DirectoryOrCreate" => std::fs::create_dir_all(&p)
                        .map_err(|e| format!("hostPath {:?}: {e}", hp.path))?,
                    "Directory" if !p.is_dir() => {
                        return Err(format!(
                            "hostPath type check failed: {} is not a directory",
                            hp.path
                        ))
                    }
                    "File" if !p.is_file() => {
                        return Err(format!(
                            "hostPath type check failed: {} is not a file",
                            hp.path
                        ))
                    }
                    "FileOrCreate" if !p.exists() => std::fs::write(&p, b"")
                        .map_err(|e| format!("hostPath {:?}: {e}", hp.path))?,
                    _ => {}
                }
                p
            } else if let Some(kind) = [
                (vol.config_map.is_some(), "configmap"),
                (vol.secret.is_some(), "secret"),
                (vol.projected.is_some(), "projected"),
                (vol.downward_api.is_some(), "downward-api"),
            ]
            .iter()
            .find_map(|(is, k)| is.then_some(*k))
            {
                // Written by write_api_volumes; always read-only, as the kubelet mounts them.
                forced_ro = true;
                self.data_dir.join("volumes").join(kind).join(&vol.name)
            } else {
                return Err(format!(
                    "volume {:?}: only emptyDir, hostPath, configMap, secret, projected and downwardAPI volumes are supported",
                    vol.name
                ));
            };
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                let sp = Path::new(sub);
                if sp.is_absolute()
                    || sp
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(format!(
                        "{field}.volumeMounts[{j}].subPath: Invalid value: {sub:?}"
                    ));
                }
                source = source.join(sp);
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .map_err(|e| format!("subPath {sub:?}: {e}"))?;
                }
            }
            out.push(BindMount {
                source,
                destination: m.mount_path.clone(),
                readonly: forced_ro || m.read_only.unwrap_or(false),
            });
        }
        Ok(out)
    }

    /// Fetches what the pod refers to from the apiserver.
    pub(super) async fn fetch_api_objects(&self) -> Result<ApiData, String> {
        self.svc
            .api
            .fetch(&self.spec, &self.namespace, &self.name, &self.uid)
            .await
    }

    /// Re-reads what the pod's volumes show from the apiserver every few minutes (the
    /// kubelet's periodic volume sync: config map and secret changes show up, tokens are
    /// renewed long before they expire). Returns when to look again.
    pub(super) async fn refresh_api_volumes(&mut self) -> Option<Duration> {
        const EVERY: Duration = Duration::from_secs(240);
        let at = self.api_volumes_at?;
        let left = EVERY.saturating_sub(at.elapsed());
        if !left.is_zero() {
            return Some(left);
        }
        match self.fetch_api_objects().await {
            Ok(data) => {
                if let Err(e) = self.write_api_volumes(&data) {
                    tracing::warn!("refreshing volumes: {e}");
                }
            }
            Err(e) => tracing::warn!("refreshing volumes: {e}"),
        }
        self.api_volumes_at = Some(Instant::now());
        Some(EVERY)
    }

    /// Writes the files of every configMap, secret, projected and downwardAPI volume. Files
    /// are replaced by rename inside the directory, which containers have bind-mounted, so a
    /// rewrite shows up in running containers.
    pub(super) fn write_api_volumes(&mut self, data: &ApiData) -> Result<(), String> {
        let mut any = false;
        for v in self.spec.volumes.iter().flatten() {
            let Some((kind, files, mode)) = self.volume_files(v, data)? else {
                continue;
            };
            any = true;
            let dir = self.data_dir.join("volumes").join(kind).join(&v.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("volume {:?}: {e}", v.name))?;
            // Files the objects no longer have go.
            remove_stale(&dir, &dir, &files);
            let shift = self.svc.userns.get(&self.uid).map_or(0, |r| r.host_id);
            let fs_group = self
                .spec
                .security_context
                .as_ref()
                .and_then(|s| s.fs_group)
                .and_then(|g| u32::try_from(g).ok());
            for (path, (content, file_mode)) in files {
                let p = dir.join(&path);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("volume {:?}: {e}", v.name))?;
                }
                let tmp = p.with_file_name(format!(
                    ".{}.tmp",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ));
                std::fs::write(&tmp, content).map_err(|e| format!("volume {:?}: {e}", v.name))?;
                let m = file_mode.unwrap_or(mode) as u32 & 0o777;
                let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m));
                if shift > 0 || fs_group.is_some() {
                    let _ = std::os::unix::fs::chown(
                        &tmp,
                        Some(shift),
                        Some(fs_group.unwrap_or(0).saturating_add(shift)),
                    );
                }
                std::fs::rename(&tmp, &p).map_err(|e| format!("volume {:?}: {e}", v.name))?;
            }
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        }
        if any {
            self.api_volumes_at = Some(Instant::now());
        }
        Ok(())
    }

    /// A volume's files (path -> content, mode) and default mode, for the kinds podlet writes.
    #[allow(clippy::type_complexity)]
    fn volume_files(
        &self,
        v: &Volume,
        data: &ApiData,
    ) -> Result<Option<(&'static str, BTreeMap<String, (Vec<u8>, Option<i32>)>, i32)>, String> {
        let mut files = BTreeMap::new();
        let items = |src: &BTreeMap<String, Vec<u8>>,
                     items: &Option<Vec<KeyToPath>>,
                     what: &str,
                     name: &str,
                     files: &mut BTreeMap<String, (Vec<u8>, Option<i32>)>|
         -> Result<(), String> {
            match items {
                None => {
                    for (k, c) in src {
                        files.insert(k.clone(), (c.clone(), None));
                    }
                }
                Some(list) => {
                    for it in list {
                        let c = src.get(&it.key).ok_or_else(|| {
                            let key_kind = if what == "secret" { "secret" } else { "config" };
                            format!(
                                "{what} {name:?} references non-existent {key_kind} key: {}",
                                it.key
                            )
                        })?;
                        files.insert(it.path.clone(), (c.clone(), it.mode));
                    }
                }
            }
            Ok(())
        };
        let missing = |what: &str, name: &str| format!("{what} {name:?} not found");
        if let Some(c) = &v.config_map {
            match data.config_maps.get(&c.name) {
                Some(src) => items(src, &c.items, "configmap", &c.name, &mut files)?,
                None if c.optional == Some(true) => {}
                None => return Err(missing("configmap", &c.name)),
            }
            return Ok(Some(("configmap", files, c.default_mode.unwrap_or(0o644))));
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match data.secrets.get(&name) {
                Some(src) => items(src, &s.items, "secret", &name, &mut files)?,
                None if s.optional == Some(true) => {}
                None => return Err(missing("secret", &name)),
            }
            return Ok(Some(("secret", files, s.default_mode.unwrap_or(0o644))));
        }
        if let Some(d) = &v.downward_api {
            for it in d.items.iter().flatten() {
                let value =
                    self.downward_value(it.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
                files.insert(it.path.clone(), (value.into_bytes(), it.mode));
            }
            return Ok(Some((
                "downward-api",
                files,
                d.default_mode.unwrap_or(0o644),
            )));
        }
        if let Some(p) = &v.projected {
            for s in p.sources.iter().flatten() {
                if let Some(c) = &s.config_map {
                    match data.config_maps.get(&c.name) {
                        Some(src) => items(src, &c.items, "configmap", &c.name, &mut files)?,
                        None if c.optional == Some(true) => {}
                        None => return Err(missing("configmap", &c.name)),
                    }
                }
                if let Some(x) = &s.secret {
                    match data.secrets.get(&x.name) {
                        Some(src) => items(src, &x.items, "secret", &x.name, &mut files)?,
                        None if x.optional == Some(true) => {}
                        None => return Err(missing("secret", &x.name)),
                    }
                }
                if let Some(d) = &s.downward_api {
                    for it in d.items.iter().flatten() {
                        let value = self
                            .downward_value(it.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
                        files.insert(it.path.clone(), (value.into_bytes(), it.mode));
                    }
                }
                if let Some(t) = &s.service_account_token {
                    let key = (
                        t.audience.clone().unwrap_or_default(),
                        t.expiration_seconds.unwrap_or(3600),
                    );
                    let token = data.tokens.get(&key).cloned().unwrap_or_default();
                    files.insert(t.path.clone(), (token.into_bytes(), None));
                }
            }
            return Ok(Some(("projected", files, p.default_mode.unwrap_or(0o644))));
        }
        Ok(None)
    }

    fn downward_value(&self, path: Option<&str>) -> Result<String, String> {
        let kv = |m: &Option<BTreeMap<String, String>>| {
            m.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect::<String>()
        };
        Ok(match path.unwrap_or_default() {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "metadata.labels" => kv(&self.pod.metadata.labels),
            "metadata.annotations" => kv(&self.pod.metadata.annotations),
            other
                if other.starts_with("metadata.labels[")
                    || other.starts_with("metadata.annotations[") =>
            {
                crate::pod::translate::subscripted_field(
                    other,
                    self.pod.metadata.labels.as_ref(),
                    self.pod.metadata.annotations.as_ref(),
                )
                .unwrap_or_default()
            }
            other => {
                return Err(format!(
                    "downwardAPI fieldPath: Unsupported value: {other:?}"
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_files_go_and_current_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        for f in ["keep", "old", "sub/keep", "sub/old"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let files: BTreeMap<String, (Vec<u8>, Option<i32>)> = ["keep", "sub/keep"]
            .iter()
            .map(|f| (f.to_string(), (Vec::new(), None)))
            .collect();
        remove_stale(d.path(), d.path(), &files);
        assert!(d.path().join("keep").exists() && d.path().join("sub/keep").exists());
        assert!(!d.path().join("old").exists() && !d.path().join("sub/old").exists());
    }
}
