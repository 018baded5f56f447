//! The runtime side of CNI, as libcni does it: load the network configuration from a directory,
//! run a plugin chain (ADD in order with each result as the next prevResult, DEL in reverse with
//! the cached result), cache results under `<cacheDir>/results`, and GC stale attachments.
//! Any CNI plugin works; podlet's own are not special-cased.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::spec::{CniError, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("no CNI network configuration in {0}")]
    NoConfig(PathBuf),
    #[error("plugin {plugin:?} not found in {dirs:?}")]
    NotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("plugin {plugin} {command}: {error}")]
    Plugin {
        plugin: String,
        command: String,
        error: CniError,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A network: a conflist (a single `.conf` becomes a list of one).
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The configuration as read, cached with each attachment.
    pub bytes: Vec<u8>,
    pub source: PathBuf,
}

impl NetworkList {
    pub fn parse(bytes: &[u8], source: &Path) -> Result<Self, ClientError> {
        let err = |msg: String| ClientError::Config {
            path: source.to_path_buf(),
            msg,
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !crate::spec::valid_name(&name) {
            return Err(err(format!("invalid or missing network name {name:?}")));
        }
        let cni_version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_string();
        let plugins = match v.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p.clone(),
            Some(_) => return Err(err("'plugins' must be a non-empty list".into())),
            None => vec![v.clone()],
        };
        for (i, p) in plugins.iter().enumerate() {
            if p.get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                return Err(err(format!("plugins[{i}].type is missing")));
            }
        }
        Ok(Self {
            name,
            cni_version,
            plugins,
            bytes: bytes.to_vec(),
            source: source.to_path_buf(),
        })
    }
}

/// The first valid configuration in `dir` in lexical order (`.conf`, `.conflist`, `.json`), as
/// libcni picks it; invalid files are returned alongside so the caller can report them.
pub fn load_dir(dir: &Path) -> (Option<NetworkList>, Vec<ClientError>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read(&f)
            .map_err(ClientError::from)
            .and_then(|b| NetworkList::parse(&b, &f))
        {
            Ok(n) => return (Some(n), errors),
            Err(e) => errors.push(e),
        }
    }
    (None, errors)
}

/// One attachment of a container to a network.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, …), passed to plugins that declare them.
    pub capability_args: Map<String, Value>,
}

pub struct Client {
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Client {
    fn find(&self, plugin: &str) -> Result<PathBuf, ClientError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| ClientError::NotFound {
                plugin: plugin.to_string(),
                dirs: self.bin_dirs.clone(),
            })
    }

    fn cache_path(&self, net: &str, a: &Attachment) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{net}-{}-{}", a.container_id, a.ifname))
    }

    /// The configuration one plugin of the chain receives.
    fn plugin_conf(
        net: &NetworkList,
        plugin: &Value,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(net.name);
        conf["cniVersion"] = json!(net.cni_version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            let mut rc = Map::new();
            for (k, enabled) in caps {
                if enabled.as_bool() == Some(true) {
                    if let Some(v) = a.capability_args.get(k) {
                        rc.insert(k.clone(), v.clone());
                    }
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        conf
    }

    fn exec(
        &self,
        plugin: &str,
        command: &str,
        a: &Attachment,
        conf: &Value,
    ) -> Result<Option<Value>, ClientError> {
        let bin = self.find(plugin)?;
        let path = std::env::join_paths(&self.bin_dirs).map_err(io::Error::other)?;
        let args = a
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let stdin = serde_json::to_vec(conf).expect("config serialises");
        let mut attempts = 0;
        let out = loop {
            let spawned = Command::new(&bin)
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", &args)
                .env("CNI_PATH", &path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match spawned {
                // A plugin binary being replaced: try again, like libcni.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 5 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
                Ok(mut child) => {
                    child.stdin.take().expect("piped").write_all(&stdin)?;
                    break child.wait_with_output()?;
                }
            }
        };
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let error = match &parsed {
                Some(v) if v.get("code").is_some() => CniError::with_details(
                    v["code"].as_u64().unwrap_or(999) as u32,
                    v["msg"].as_str().unwrap_or_default(),
                    v.get("details").and_then(Value::as_str).unwrap_or_default(),
                ),
                _ => CniError::internal(format!(
                    "exit {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            };
            return Err(ClientError::Plugin {
                plugin: plugin.to_string(),
                command: command.to_string(),
                error,
            });
        }
        Ok(parsed)
    }

    /// ADD through the chain; returns the final result, cached for DEL. On error nothing is
    /// cached and the caller runs [`Client::del`] to undo what the plugins made.
    pub fn add(&self, net: &NetworkList, a: &Attachment) -> Result<Outcome, ClientError> {
        let mut prev: Option<Value> = None;
        for p in &net.plugins {
            let plugin = p["type"].as_str().unwrap_or_default();
            let conf = Self::plugin_conf(net, p, a, prev.as_ref());
            let r = self
                .exec(plugin, "ADD", a, &conf)?
                .ok_or_else(|| ClientError::Plugin {
                    plugin: plugin.to_string(),
                    command: "ADD".into(),
                    error: CniError::new(crate::spec::code::DECODE, "plugin printed no result"),
                })?;
            prev = Some(r);
        }
        let result = prev.unwrap_or(Value::Null);
        self.write_cache(net, a, &result)?;
        Outcome::parse(&result).map_err(|error| ClientError::Plugin {
            plugin: "chain".into(),
            command: "ADD".into(),
            error,
        })
    }

    fn write_cache(&self, net: &NetworkList, a: &Attachment, result: &Value) -> io::Result<()> {
        let p = self.cache_path(&net.name, a);
        std::fs::create_dir_all(p.parent().expect("has parent"))?;
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": a.container_id,
            "config": base64::engine::general_purpose::STANDARD.encode(&net.bytes),
            "ifName": a.ifname,
            "networkName": net.name,
            "netns": a.netns,
            "cniArgs": a.args.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "capabilityArgs": a.capability_args,
            "result": result,
        });
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&entry).expect("cache entry"))?;
        std::fs::rename(tmp, p)
    }

    /// The cached result of an attachment, if any.
    pub fn cached_result(&self, net: &str, a: &Attachment) -> Option<Outcome> {
        let data = std::fs::read(self.cache_path(net, a)).ok()?;
        let v: Value = serde_json::from_slice(&data).ok()?;
        Outcome::parse(&v["result"]).ok()
    }

    /// DEL through the chain in reverse, with the cached result as prevResult; the cache entry
    /// goes once every plugin succeeded. Safe to repeat.
    pub fn del(&self, net: &NetworkList, a: &Attachment) -> Result<(), ClientError> {
        let cache = self.cache_path(&net.name, a);
        let cached: Option<Value> = std::fs::read(&cache)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        let prev = cached
            .as_ref()
            .map(|c| c["result"].clone())
            .filter(|r| !r.is_null());
        for p in net.plugins.iter().rev() {
            let plugin = p["type"].as_str().unwrap_or_default();
            let conf = Self::plugin_conf(net, p, a, prev.as_ref());
            self.exec(plugin, "DEL", a, &conf)?;
        }
        match std::fs::remove_file(&cache) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Attachments cached for `net`: (container id, ifname).
    pub fn cached_attachments(&self, net: &str) -> Vec<Attachment> {
        let dir = self.cache_dir.join("results");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                (v["networkName"] == net).then(|| Attachment {
                    container_id: v["containerId"].as_str().unwrap_or_default().to_string(),
                    ifname: v["ifName"].as_str().unwrap_or_default().to_string(),
                    netns: String::new(),
                    args: Vec::new(),
                    capability_args: v["capabilityArgs"].as_object().cloned().unwrap_or_default(),
                })
            })
            .collect()
    }

    /// GC as libcni does: DEL every cached attachment not in `valid` (their namespaces are
    /// presumed gone), then GC on each plugin with `cni.dev/valid-attachments`.
    pub fn gc(&self, net: &NetworkList, valid: &[(String, String)]) -> Result<(), ClientError> {
        let mut first_error = None;
        for a in self.cached_attachments(&net.name) {
            if !valid
                .iter()
                .any(|(c, i)| *c == a.container_id && *i == a.ifname)
            {
                if let Err(e) = self.del(net, &a) {
                    first_error.get_or_insert(e);
                }
            }
        }
        if crate::spec::at_least(&net.cni_version, "1.1.0") {
            let list: Vec<Value> = valid
                .iter()
                .map(|(c, i)| json!({"containerID": c, "ifname": i}))
                .collect();
            for p in &net.plugins {
                let plugin = p["type"].as_str().unwrap_or_default();
                let mut conf = Self::plugin_conf(net, p, &Attachment::default(), None);
                conf["cni.dev/valid-attachments"] = json!(list);
                conf["cni.dev/attachments"] = json!(list);
                if let Err(e) = self.exec(plugin, "GC", &Attachment::default(), &conf) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_first_valid_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("00-broken.conflist"), "{nope").unwrap();
        std::fs::write(
            d.path().join("10-a.conf"),
            r#"{"cniVersion":"1.0.0","name":"a","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.1.0","name":"b","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("05-ignored.txt"), "x").unwrap();
        let (net, errors) = load_dir(d.path());
        let net = net.unwrap();
        assert_eq!(net.name, "a");
        assert_eq!(net.plugins.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("00-broken.conflist"));
    }

    #[test]
    fn capabilities_become_runtime_config() {
        let net = NetworkList::parse(
            br#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            Path::new("x"),
        )
        .unwrap();
        let mut a = Attachment::default();
        a.capability_args.insert(
            "portMappings".into(),
            json!([{"hostPort": 80, "containerPort": 8080}]),
        );
        let c0 = Client::plugin_conf(&net, &net.plugins[0], &a, None);
        assert!(c0.get("runtimeConfig").is_none());
        let c1 = Client::plugin_conf(&net, &net.plugins[1], &a, Some(&json!({"ips": []})));
        assert_eq!(c1["runtimeConfig"]["portMappings"][0]["hostPort"], 80);
        assert_eq!(c1["name"], "n");
        assert!(c1.get("prevResult").is_some());
    }
}
