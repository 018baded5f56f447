//! The agent as an ordinary CNI runtime: it reads the network from `--cni-conf-dir` (writing a
//! default `podlet` network when there is none), runs whatever plugins it names from
//! `--cni-bin-dir`, and always sets up `lo` with the loopback plugin.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::PodSpec;
use podlet_cni::client::{self, Attachment, Client, ClientError, NetworkList};
use serde_json::{json, Map, Value};

use crate::config::Config;

const PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];
const DEFAULT_FILE: &str = "10-podlet.conflist";
pub const IFNAME: &str = "eth0";

/// Why the CNI setup cannot be prepared at start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("--cni-bin-dir is empty")]
    NoBinDir,
    #[error("creating {}", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("the CNI plugins {missing:?} are not in {dirs:?} and podlet's own are not beside {}", exe.display())]
    MissingPlugins {
        missing: Vec<&'static str>,
        dirs: Vec<PathBuf>,
        exe: PathBuf,
    },
    #[error("installing {0}")]
    Install(&'static str, #[source] std::io::Error),
    #[error("writing {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("the built-in loopback network")]
    Loopback(#[source] ClientError),
}

/// Why a pod's network could not be set up, torn down or collected.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No network configuration could be loaded; the first invalid file's error.
    #[error(transparent)]
    Config(ClientError),
    #[error("no CNI network configuration in {}", .0.display())]
    NoConfig(PathBuf),
    #[error("no pod network yet: waiting for spec.podCIDR of Node {0} (set by the node IPAM controller) to write 10-podlet.conflist")]
    WaitingForPodCidr(String),
    /// A plugin failed (or could not be run): its message.
    #[error(transparent)]
    Plugin(#[from] ClientError),
}

pub struct Network {
    client: Client,
    conf_dir: PathBuf,
    cache_dir: PathBuf,
    loopback: NetworkList,
    /// The Node whose podCIDR the default network waits for, until it is written.
    waiting: std::sync::Mutex<Option<String>>,
    /// Whose family comes first in a pod's addresses.
    node_ip: Option<IpAddr>,
}

/// Where podlet's own plugin binaries are: beside the podlet binary, or in
/// `<prefix>/lib/podlet/cni` for an installed podlet.
fn own_plugins(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    [dir.to_path_buf(), dir.join("../lib/podlet/cni")]
        .into_iter()
        .find(|d| PLUGINS.iter().all(|p| d.join(p).is_file()))
}

/// podlet's default network: one host-local range per pod CIDR (a Node's `spec.podCIDRs`, one
/// of each family for dual-stack pods) and a default route per family. No `ipMasq`: the bridge
/// plugin's rule would masquerade pod traffic to other nodes' pods too; the agent's own rule
/// spares the cluster (see `overlay`).
fn default_network(pod_cidrs: &[IpNetwork], cache_dir: &Path, mtu: Option<u32>) -> Value {
    let ranges: Vec<Value> = pod_cidrs
        .iter()
        .map(|c| json!([{"subnet": c.to_string()}]))
        .collect();
    let mut routes = Vec::new();
    if pod_cidrs.iter().any(IpNetwork::is_ipv4) {
        routes.push(json!({"dst": "0.0.0.0/0"}));
    }
    if pod_cidrs.iter().any(IpNetwork::is_ipv6) {
        routes.push(json!({"dst": "::/0"}));
    }
    let mut bridge = json!({"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true,
         "ipam": {"type": "host-local", "ranges": ranges,
                  "routes": routes, "dataDir": cache_dir.join("networks")}});
    if let Some(m) = mtu {
        bridge["mtu"] = json!(m);
    }
    json!({
        "cniVersion": "1.1.0",
        "name": "podlet",
        "plugins": [
            bridge,
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// A pod's addresses as the kubelet reports them (its `sortPodIPs`): the first of the node IP's
/// family, then the first of the other family. A plugin's result may list any number, in any
/// order; `status.podIP`, the downward API and probes take the first.
pub fn sort_pod_ips(ips: &[IpAddr], node_ip: Option<IpAddr>) -> Vec<IpAddr> {
    let v6_first = node_ip.is_some_and(|i| i.is_ipv6());
    [v6_first, !v6_first]
        .into_iter()
        .filter_map(|v6| ips.iter().copied().find(|i| i.is_ipv6() == v6))
        .collect()
}

impl Network {
    /// Prepares the CNI directories: installs podlet's plugins where the bin dir lacks them and
    /// writes the default network where no configuration exists.
    /// `mtu`: the pods' MTU for the default network (None: the bridge's own); `node_ip`: the
    /// node's (primary) address, whose family comes first in pods' addresses.
    pub fn init(
        cfg: &Config,
        exe: &Path,
        mtu: Option<u32>,
        node_ip: Option<IpAddr>,
    ) -> Result<Self, InitError> {
        let bin = cfg.cni_bin_dirs.first().ok_or(InitError::NoBinDir)?;
        std::fs::create_dir_all(bin).map_err(|e| InitError::CreateDir(bin.clone(), e))?;
        let missing: Vec<&str> = PLUGINS
            .iter()
            .copied()
            .filter(|p| !cfg.cni_bin_dirs.iter().any(|d| d.join(p).is_file()))
            .collect();
        if !missing.is_empty() {
            let Some(src) = own_plugins(exe) else {
                return Err(InitError::MissingPlugins {
                    missing,
                    dirs: cfg.cni_bin_dirs.clone(),
                    exe: exe.to_path_buf(),
                });
            };
            for p in missing {
                let tmp = bin.join(format!(".{p}.podlet-tmp"));
                let _ = std::fs::remove_file(&tmp);
                // A hard link when both directories are on one filesystem: instant, where
                // copying podlet's plugins (tens of MB each in a debug build) is not. A later
                // reinstall of the source replaces its file, so the link keeps what it had.
                std::fs::hard_link(src.join(p), &tmp)
                    .or_else(|_| std::fs::copy(src.join(p), &tmp).map(drop))
                    .and_then(|_| std::fs::rename(&tmp, bin.join(p)))
                    .map_err(|e| InitError::Install(p, e))?;
                tracing::info!(plugin = p, dir = %bin.display(), "installed CNI plugin");
            }
        }
        std::fs::create_dir_all(&cfg.cni_conf_dir)
            .map_err(|e| InitError::CreateDir(cfg.cni_conf_dir.clone(), e))?;
        let (_, errors) = client::load_dir(&cfg.cni_conf_dir);
        for e in &errors {
            tracing::error!("invalid CNI configuration: {e}");
        }
        let loopback = NetworkList::parse(
            br#"{"cniVersion":"1.1.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}"#,
            Path::new("(built in)"),
        )
        .map_err(InitError::Loopback)?;
        Ok(Self {
            client: Client {
                bin_dirs: cfg.cni_bin_dirs.clone(),
                cache_dir: cfg.cni_cache_dir.clone(),
            },
            conf_dir: cfg.cni_conf_dir.clone(),
            cache_dir: cfg.cni_cache_dir.clone(),
            loopback,
            waiting: std::sync::Mutex::new(None),
            node_ip,
        })
        .and_then(|n| {
            match &cfg.pod_cidr {
                Some(c) => {
                    n.ensure_default(&c.iter().copied().collect::<Vec<_>>(), mtu)?;
                }
                None => *n.waiting.lock().expect("lock") = Some(cfg.node_name.clone()),
            }
            Ok(n)
        })
    }

    /// Writes podlet's default network for `cidrs` (the node's pod CIDRs, primary first) where
    /// no configuration exists, and rewrites podlet's own file (`10-podlet.conflist`) when it
    /// says something else (other ranges, a stale MTU). Returns whether it wrote.
    pub fn ensure_default(&self, cidrs: &[IpNetwork], mtu: Option<u32>) -> Result<bool, InitError> {
        let p = self.conf_dir.join(DEFAULT_FILE);
        let want = default_network(cidrs, &self.cache_dir, mtu);
        let cidr = cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let existing: Option<Value> = std::fs::read(&p)
            .ok()
            .map(|d| serde_json::from_slice(&d).unwrap_or(Value::Null));
        let write = match &existing {
            Some(v) => *v != want,
            // Someone else's network is used as it is.
            None => client::load_dir(&self.conf_dir).0.is_none(),
        };
        if write {
            // A pod being set up reads the directory meanwhile: it sees the old file or the
            // new one, never half of one.
            let tmp = self.conf_dir.join(format!(".{DEFAULT_FILE}.podlet-tmp"));
            std::fs::write(&tmp, format!("{want:#}"))
                .and_then(|_| std::fs::rename(&tmp, &p))
                .map_err(|e| InitError::Write(p.clone(), e))?;
            match existing {
                Some(_) => {
                    tracing::info!(file = %p.display(), %cidr, "rewrote the default pod network")
                }
                None => tracing::info!(file = %p.display(), %cidr, "wrote the default pod network"),
            }
        }
        *self.waiting.lock().expect("lock") = None;
        Ok(write)
    }

    fn network(&self) -> Result<NetworkList, NetworkError> {
        match client::load_dir(&self.conf_dir) {
            (Some(n), _) => Ok(n),
            (None, errors) => Err(match errors.into_iter().next() {
                Some(e) => NetworkError::Config(e),
                None => match self.waiting.lock().expect("lock").clone() {
                    Some(node) => NetworkError::WaitingForPodCidr(node),
                    None => NetworkError::NoConfig(self.conf_dir.clone()),
                },
            }),
        }
    }

    fn attachment(uid: &str, netns: &str, ifname: &str, ports: Map<String, Value>) -> Attachment {
        Attachment {
            container_id: uid.to_string(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_UID".into(), uid.to_string()),
            ],
            capability_args: ports,
        }
    }

    /// ADD for a pod sandbox: loopback, then the pod network. On failure everything made is
    /// deleted again and the plugin's message is returned.
    pub fn setup(
        &self,
        uid: &str,
        netns: &str,
        spec: &PodSpec,
    ) -> Result<Vec<IpAddr>, NetworkError> {
        let net = self.network()?;
        let mut caps = Map::new();
        let ports = port_mappings(spec);
        if !ports.is_empty() {
            caps.insert("portMappings".into(), json!(ports));
        }
        let lo = Self::attachment(uid, netns, "lo", Map::new());
        let main = Self::attachment(uid, netns, IFNAME, caps);
        let result = self
            .client
            .add(&self.loopback, &lo)
            .and_then(|_| self.client.add(&net, &main));
        match result {
            Ok(r) => {
                let all: Vec<IpAddr> = r.ips.iter().map(|i| i.address.ip()).collect();
                Ok(sort_pod_ips(&all, self.node_ip))
            }
            Err(e) => {
                let _ = self.client.del(&net, &main);
                let _ = self.client.del(&self.loopback, &lo);
                Err(e.into())
            }
        }
    }

    /// DEL for a pod sandbox (`netns` empty once the namespace is gone). Safe to repeat.
    pub fn teardown(&self, uid: &str, netns: &str) -> Result<(), NetworkError> {
        let net = self.network()?;
        let main = Self::attachment(uid, netns, IFNAME, Map::new());
        let lo = Self::attachment(uid, netns, "lo", Map::new());
        self.client.del(&net, &main)?;
        Ok(self.client.del(&self.loopback, &lo)?)
    }

    /// Whether DEL still has something to do for the pod.
    pub fn attached(&self, uid: &str) -> bool {
        let Ok(net) = self.network() else {
            return false;
        };
        self.client
            .cached_result(&net.name, &Self::attachment(uid, "", IFNAME, Map::new()))
            .is_some()
    }

    /// The pod's addresses from the cached result (after an agent restart).
    pub fn cached_ips(&self, uid: &str) -> Vec<IpAddr> {
        let Ok(net) = self.network() else {
            return Vec::new();
        };
        self.client
            .cached_result(&net.name, &Self::attachment(uid, "", IFNAME, Map::new()))
            .map(|r| {
                let all: Vec<IpAddr> = r.ips.iter().map(|i| i.address.ip()).collect();
                sort_pod_ips(&all, self.node_ip)
            })
            .unwrap_or_default()
    }

    /// Releases everything held for sandboxes that no longer exist.
    pub fn gc(&self, live: &[String]) -> Result<(), NetworkError> {
        let net = self.network()?;
        let valid = |ifname: &str| {
            live.iter()
                .map(|u| (u.clone(), ifname.to_string()))
                .collect::<Vec<_>>()
        };
        let r1 = self.client.gc(&net, &valid(IFNAME));
        let r2 = self.client.gc(&self.loopback, &valid("lo"));
        Ok(r1.and(r2)?)
    }
}

/// `hostPort`s of the pod, as portmap's `portMappings`.
pub fn port_mappings(spec: &PodSpec) -> Vec<Value> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host = p.host_port.filter(|h| *h > 0)?;
            let mut m = json!({
                "hostPort": host,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
            });
            if let Some(ip) = p.host_ip.as_deref().filter(|i| !i.is_empty()) {
                m["hostIP"] = json!(ip);
            }
            Some(m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(dir: &Path) -> Network {
        Network {
            client: Client {
                bin_dirs: vec![],
                cache_dir: dir.join("cache"),
            },
            conf_dir: dir.join("net.d"),
            cache_dir: dir.join("cache"),
            loopback: NetworkList::parse(
                br#"{"cniVersion":"1.1.0","name":"lo","plugins":[{"type":"loopback"}]}"#,
                Path::new("t"),
            )
            .unwrap(),
            waiting: std::sync::Mutex::new(Some("n1".into())),
            node_ip: None,
        }
    }

    fn subnet(dir: &Path) -> Value {
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.join("net.d").join(DEFAULT_FILE)).unwrap())
                .unwrap();
        v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"].clone()
    }

    #[test]
    fn the_default_network_follows_the_pod_cidr_and_leaves_other_networks_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        let n = network(dir.path());
        assert!(matches!(
            n.network(),
            Err(NetworkError::WaitingForPodCidr(node)) if node == "n1"
        ));
        assert!(n
            .ensure_default(&["10.244.1.0/24".parse().unwrap()], None)
            .unwrap());
        assert_eq!(subnet(dir.path()), "10.244.1.0/24");
        assert!(!n
            .ensure_default(&["10.244.1.0/24".parse().unwrap()], None)
            .unwrap());
        // Another range (or MTU): podlet's own file is rewritten, without ipMasq.
        assert!(n
            .ensure_default(&["10.244.7.0/24".parse().unwrap()], Some(1450))
            .unwrap());
        assert_eq!(subnet(dir.path()), "10.244.7.0/24");
        let v = n.network().unwrap();
        assert_eq!(v.name, "podlet");
        let raw: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("net.d").join(DEFAULT_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(raw["plugins"][0]["mtu"], 1450);
        assert!(raw["plugins"][0].get("ipMasq").is_none());
        // Someone else's network and no file of podlet's: nothing is written.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("net.d")).unwrap();
        std::fs::write(
            other.path().join("net.d/05-mine.conflist"),
            r#"{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        let n = network(other.path());
        assert!(!n
            .ensure_default(&["10.244.1.0/24".parse().unwrap()], None)
            .unwrap());
        assert!(!other.path().join("net.d").join(DEFAULT_FILE).exists());
    }

    #[test]
    fn a_dual_stack_network_has_a_range_and_a_default_route_per_family_in_pod_cidr_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        let n = network(dir.path());
        let cidrs: Vec<IpNetwork> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ];
        assert!(n.ensure_default(&cidrs, None).unwrap());
        let raw: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("net.d").join(DEFAULT_FILE)).unwrap(),
        )
        .unwrap();
        let ipam = &raw["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
        assert!(!n.ensure_default(&cidrs, None).unwrap());
        // Back to one family: its range and route alone.
        assert!(n.ensure_default(&cidrs[1..], None).unwrap());
        let raw: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("net.d").join(DEFAULT_FILE)).unwrap(),
        )
        .unwrap();
        let ipam = &raw["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"], json!([[{"subnet": "fd00:10:244:1::/64"}]]));
        assert_eq!(ipam["routes"], json!([{"dst": "::/0"}]));
    }

    #[test]
    fn pod_ips_are_the_first_of_the_node_ip_family_then_the_first_of_the_other() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let result = [ip("fd00::5"), ip("10.0.0.5"), ip("fd00::6"), ip("10.0.0.6")];
        assert_eq!(
            sort_pod_ips(&result, Some(ip("192.168.1.1"))),
            [ip("10.0.0.5"), ip("fd00::5")]
        );
        assert_eq!(
            sort_pod_ips(&result, Some(ip("2001:db8::1"))),
            [ip("fd00::5"), ip("10.0.0.5")]
        );
        // No node IP: IPv4 first, as the kubelet does.
        assert_eq!(sort_pod_ips(&result, None), [ip("10.0.0.5"), ip("fd00::5")]);
        assert_eq!(sort_pod_ips(&result[..1], None), [ip("fd00::5")]);
        assert!(sort_pod_ips(&[], None).is_empty());
    }
}
