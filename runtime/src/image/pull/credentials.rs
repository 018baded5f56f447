//! Registry credentials from Docker config files (`config.json`, `.dockerconfigjson`, the older
//! `.dockercfg`), by registry host.

use std::collections::BTreeMap;

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::image::{format_err, io_at, ImageError};

/// Registry credentials: `user:password` by registry host, from Docker config files
/// (`config.json`, `.dockerconfigjson`, the older `.dockercfg`).
#[derive(Debug, Clone, Default)]
pub struct Credentials(Vec<(String, String, String)>);

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The registry host a Docker config key names (`https://index.docker.io/v1/` is docker.io).
fn config_host(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

impl Credentials {
    /// Parses a Docker config (`{"auths": {...}}`) or a legacy `.dockercfg` (the map itself).
    pub fn parse(data: &[u8], what: &str) -> Result<Self, ImageError> {
        use base64::Engine;
        let v: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| format_err(what, e.to_string()))?;
        let map = v.get("auths").unwrap_or(&v);
        let map: BTreeMap<String, AuthEntry> = serde_json::from_value(map.clone())
            .map_err(|e| format_err(what, format!("auths: {e}")))?;
        let mut out = Vec::new();
        for (key, e) in map {
            let (user, pass) = match (e.auth, e.username, e.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|e| format_err(what, format!("auths.{key}.auth: {e}")))?;
                    let s = String::from_utf8(raw)
                        .map_err(|_| format_err(what, format!("auths.{key}.auth: not UTF-8")))?;
                    let (u, p) = s.split_once(':').ok_or_else(|| {
                        format_err(what, format!("auths.{key}.auth: not user:password"))
                    })?;
                    (u.to_string(), p.to_string())
                }
                (_, Some(u), Some(p)) => (u, p),
                _ => continue,
            };
            out.push((config_host(&key), user, pass));
        }
        Ok(Credentials(out))
    }

    /// Reads a Docker config file; a missing file is no credentials.
    pub fn load(path: &std::path::Path) -> Result<Self, ImageError> {
        match std::fs::read(path) {
            Ok(d) => Self::parse(&d, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(io_at(path)(e)),
        }
    }

    /// These credentials, then `other`'s.
    pub fn and(mut self, other: &Credentials) -> Self {
        self.0.extend(other.0.iter().cloned());
        self
    }

    pub(super) fn all_for(&self, registry: &str) -> Vec<RegistryAuth> {
        let mut v: Vec<RegistryAuth> = self
            .0
            .iter()
            .filter(|(h, _, _)| h == registry)
            .map(|(_, u, p)| RegistryAuth::Basic(u.clone(), p.clone()))
            .collect();
        v.push(RegistryAuth::Anonymous);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_configs_give_credentials_by_registry() {
        let c = Credentials::parse(
            br#"{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"}, "127.0.0.1:5000": {"username": "a", "password": "b:c"}}}"#,
            "config.json",
        )
        .unwrap();
        assert_eq!(c.all_for("docker.io").len(), 2);
        assert!(
            matches!(&c.all_for("docker.io")[0], RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        assert!(
            matches!(&c.all_for("127.0.0.1:5000")[0], RegistryAuth::Basic(u, p) if u == "a" && p == "b:c")
        );
        assert!(matches!(
            c.all_for("quay.io")[..],
            [RegistryAuth::Anonymous]
        ));
        // .dockercfg: the map itself.
        let old = Credentials::parse(br#"{"quay.io": {"auth": "eDp5"}}"#, ".dockercfg").unwrap();
        assert!(matches!(&old.all_for("quay.io")[0], RegistryAuth::Basic(u, _) if u == "x"));
        let bad = Credentials::parse(br#"{"auths": {"r": {"auth": "!!"}}}"#, "secret/pull");
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("secret/pull: auths.r.auth"));
    }
}
