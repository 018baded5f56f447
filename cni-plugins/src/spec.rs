//! CNI spec types (SPEC 1.1 and the earlier versions plugins must still speak): versions,
//! errors with the spec's codes, and results rendered in the shape each version defines.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Every version a plugin accepts, oldest first (what VERSION reports).
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
pub const CURRENT_VERSION: &str = "1.1.0";

/// Error codes of the spec (1-99 reserved, 100+ plugin specific, 999 internal as in libcni).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: printed as JSON on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn with_details(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Self::new(code::INTERNAL, msg.to_string())
    }
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

pub type CniResult<T> = Result<T, CniError>;

/// Parses "a.b.c" for comparisons.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let r = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    it.next().is_none().then_some(r)
}

/// Whether version `v` is at least `min`.
pub fn at_least(v: &str, min: &str) -> bool {
    matches!((parse_version(v), parse_version(min)), (Some(a), Some(b)) if a >= b)
}

pub fn check_supported(v: &str) -> CniResult<()> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::with_details(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!("config is {v:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
        ))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// A result in the current (1.1) model; [`Self::render`] gives any version's shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Outcome {
    /// The result as `version` defines it.
    pub fn render(&self, version: &str) -> Value {
        let mut v = Map::new();
        v.insert("cniVersion".into(), json!(version));
        let routes_basic = |rs: &[Route]| -> Vec<Value> {
            rs.iter()
                .map(|r| {
                    let mut m = json!({"dst": r.dst.to_string()});
                    if let Some(gw) = r.gw {
                        m["gw"] = json!(gw.to_string());
                    }
                    m
                })
                .collect()
        };
        if !at_least(version, "0.3.0") {
            // 0.1.0 / 0.2.0: one ip4 and one ip6 block.
            for (key, v4) in [("ip4", true), ("ip6", false)] {
                if let Some(ip) = self.ips.iter().find(|i| i.address.is_ipv4() == v4) {
                    let routes: Vec<Route> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == v4)
                        .cloned()
                        .collect();
                    let mut block = json!({"ip": ip.address.to_string()});
                    if let Some(gw) = ip.gateway {
                        block["gateway"] = json!(gw.to_string());
                    }
                    if !routes.is_empty() {
                        block["routes"] = json!(routes_basic(&routes));
                    }
                    v.insert(key.into(), block);
                }
            }
        } else {
            let old = !at_least(version, "1.0.0");
            if !self.interfaces.is_empty() {
                v.insert("interfaces".into(), json!(self.interfaces));
            }
            if !self.ips.is_empty() {
                let ips: Vec<Value> = self
                    .ips
                    .iter()
                    .map(|ip| {
                        let mut m = serde_json::to_value(ip).expect("ip serialises");
                        if old {
                            m["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
                        }
                        m
                    })
                    .collect();
                v.insert("ips".into(), json!(ips));
            }
            if !self.routes.is_empty() {
                let routes = if at_least(version, "1.1.0") {
                    self.routes
                        .iter()
                        .map(|r| serde_json::to_value(r).expect("route"))
                        .collect()
                } else {
                    routes_basic(&self.routes)
                };
                v.insert("routes".into(), json!(routes));
            }
        }
        if !self.dns.is_empty() {
            v.insert("dns".into(), json!(self.dns));
        }
        Value::Object(v)
    }

    /// Reads a result of any version (a prevResult, or what an IPAM plugin printed).
    pub fn parse(v: &Value) -> CniResult<Self> {
        let bad = |e: serde_json::Error| {
            CniError::with_details(code::DECODE, "failed to decode result", e.to_string())
        };
        let mut out = Outcome::default();
        if let Some(d) = v.get("dns") {
            out.dns = serde_json::from_value(d.clone()).map_err(bad)?;
        }
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            for key in ["ip4", "ip6"] {
                if let Some(b) = v.get(key) {
                    let address: IpNetwork =
                        serde_json::from_value(b["ip"].clone()).map_err(bad)?;
                    let gateway = b
                        .get("gateway")
                        .map(|g| serde_json::from_value(g.clone()))
                        .transpose()
                        .map_err(bad)?;
                    out.ips.push(IpConfig {
                        address,
                        gateway,
                        interface: None,
                    });
                    if let Some(rs) = b.get("routes") {
                        let rs: Vec<Route> = serde_json::from_value(rs.clone()).map_err(bad)?;
                        out.routes.extend(rs);
                    }
                }
            }
            return Ok(out);
        }
        if let Some(i) = v.get("interfaces") {
            out.interfaces = serde_json::from_value(i.clone()).map_err(bad)?;
        }
        if let Some(ips) = v.get("ips").and_then(Value::as_array) {
            for ip in ips {
                let mut ip = ip.clone();
                if let Some(o) = ip.as_object_mut() {
                    o.remove("version");
                }
                out.ips.push(serde_json::from_value(ip).map_err(bad)?);
            }
        }
        if let Some(r) = v.get("routes") {
            out.routes = serde_json::from_value(r.clone()).map_err(bad)?;
        }
        Ok(out)
    }
}

/// Fields every network configuration has; plugins read their own fields from the same JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    #[serde(default)]
    pub args: Option<Value>,
}

/// A network or container name as the spec allows it.
pub fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// An interface name as Linux and the spec allow it.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .bytes()
            .any(|c| c == b'/' || c == b':' || c.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Outcome {
        Outcome {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: None,
                sandbox: "/proc/1/ns/net".into(),
            }],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
                mtu: Some(1400),
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn shapes_per_version() {
        let r = sample();
        let v110 = r.render("1.1.0");
        assert_eq!(v110["ips"][0]["address"], "10.1.0.5/24");
        assert!(v110["ips"][0].get("version").is_none());
        assert_eq!(v110["routes"][0]["mtu"], 1400);
        let v100 = r.render("1.0.0");
        assert!(v100["routes"][0].get("mtu").is_none());
        let v040 = r.render("0.4.0");
        assert_eq!(v040["ips"][0]["version"], "4");
        assert_eq!(v040["ips"][1]["version"], "6");
        let v020 = r.render("0.2.0");
        assert_eq!(v020["ip4"]["ip"], "10.1.0.5/24");
        assert_eq!(v020["ip4"]["gateway"], "10.1.0.1");
        assert_eq!(v020["ip6"]["ip"], "fd00::5/64");
        assert!(v020.get("ips").is_none() && v020.get("interfaces").is_none());
        for v in SUPPORTED_VERSIONS {
            let back = Outcome::parse(&r.render(v)).unwrap();
            assert_eq!(back.ips.len(), 2, "{v}");
        }
    }

    #[test]
    fn names_and_versions() {
        assert!(valid_name("abc-1.2_3"));
        assert!(!valid_name("-abc") && !valid_name("") && !valid_name("a/b"));
        assert!(valid_ifname("eth0") && !valid_ifname("a:b") && !valid_ifname("0123456789abcdef"));
        assert!(at_least("1.1.0", "0.4.0") && !at_least("0.3.1", "0.4.0"));
        assert_eq!(check_supported("9.9.9").unwrap_err().code, 1);
        assert_eq!(
            CniError::new(7, "bad").to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad"})
        );
    }
}
