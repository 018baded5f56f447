//! What a pod takes from the apiserver when a container starts: the ConfigMaps and Secrets its
//! env, envFrom and volumes name, and service account tokens for projected
//! `serviceAccountToken` sources (a TokenRequest bound to the pod, as the kubelet makes them).
//! Volume files are written under the pod's data dir and bind-mounted read-only.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret, ServiceAccount, Volume};
use kube::api::{Api, PostParams};

use super::*;
use crate::pod::translate::ApiData;

/// Token requests a pod's projected volumes make: (audience, expirationSeconds).
type TokenKey = (String, i64);

fn referenced(spec: &PodSpec) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<TokenKey>) {
    let (mut cms, mut secrets, mut tokens) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &s.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(x) = &s.secret {
                secrets.insert(x.name.clone());
            }
            if let Some(t) = &s.service_account_token {
                tokens.insert((
                    t.audience.clone().unwrap_or_default(),
                    t.expiration_seconds.unwrap_or(3600),
                ));
            }
        }
    }
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in all {
        for e in c.env.iter().flatten() {
            if let Some(f) = &e.value_from {
                if let Some(r) = &f.config_map_key_ref {
                    cms.insert(r.name.clone());
                }
                if let Some(r) = &f.secret_key_ref {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets, tokens)
}

fn config_map_data(c: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = c
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    out.extend(
        c.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    out
}

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
    /// Fetches what the pod refers to (absent objects are left out; whoever needs them says
    /// so). Without an apiserver, only pods that refer to nothing can run.
    pub(super) async fn fetch_api_objects(&self) -> Result<ApiData, String> {
        let (cms, secrets, tokens) = referenced(&self.spec);
        let mut data = ApiData::default();
        if cms.is_empty() && secrets.is_empty() && tokens.is_empty() {
            return Ok(data);
        }
        let Some(client) = self.node.api.get().map(|c| c.borrow().clone()) else {
            return Err(
                "config maps, secrets and service account tokens need an apiserver".to_string(),
            );
        };
        let ns = &self.namespace;
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for name in cms {
            match cm_api.get_opt(&name).await {
                Ok(Some(c)) => {
                    data.config_maps.insert(name, config_map_data(c));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("getting configmap {name:?}: {e}")),
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
        for name in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(s)) => {
                    let mut m: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    m.extend(
                        s.string_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    );
                    data.secrets.insert(name, m);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("getting secret {name:?}: {e}")),
            }
        }
        let sa = self
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let sa_api: Api<ServiceAccount> = Api::namespaced(client, ns);
        for (audience, exp) in tokens {
            let req = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: if audience.is_empty() {
                        Vec::new()
                    } else {
                        vec![audience.clone()]
                    },
                    expiration_seconds: Some(exp),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(self.name.clone()),
                        uid: Some(self.uid.clone()),
                    }),
                },
                ..Default::default()
            };
            let got: TokenRequest = sa_api
                .create_subresource("token", &sa, &PostParams::default(), &req)
                .await
                .map_err(|e| format!("requesting a token for service account {sa:?}: {e}"))?;
            let token = got.status.map(|s| s.token).unwrap_or_default();
            data.tokens.insert((audience, exp), token);
        }
        Ok(data)
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
            let shift = self.node.userns.get(&self.uid).map_or(0, |r| r.host_id);
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
