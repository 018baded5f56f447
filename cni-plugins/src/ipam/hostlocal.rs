//! host-local IPAM: range sets (IPv4, IPv6, dual stack), round-robin allocation, and the
//! reference plugin's on-disk layout — `<dataDir>/<net>/<ip>` holding `<cid>\r\n<ifname>`,
//! `last_reserved_ip.<set>`, and a `lock` file taken with flock — so a node can switch between
//! the two without losing allocations.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::skel::{Call, Plugin};
use crate::spec::{code, CniError, CniResult, Dns, IpConfig, Outcome, Route};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeConf {
    subnet: String,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamConf {
    #[serde(default)]
    ranges: Vec<Vec<RangeConf>>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
}

/// One canonical range: [start, end] inside `subnet`, `gateway` never handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

impl Range {
    fn canonical(c: &RangeConf) -> CniResult<Self> {
        let subnet: IpNetwork = c
            .subnet
            .parse()
            .map_err(|e| invalid(format!("invalid subnet {:?}: {e}", c.subnet)))?;
        // The network address itself, as the reference does.
        let subnet = IpNetwork::new(subnet.network(), subnet.prefix()).expect("prefix is valid");
        let v4 = subnet.is_ipv4();
        let size_bits = if v4 { 32 } else { 128 } - subnet.prefix() as u32;
        if size_bits < 2 {
            return Err(invalid(format!(
                "network {subnet} too small to allocate from"
            )));
        }
        let net = to_u128(subnet.network());
        let last = if size_bits >= 128 {
            u128::MAX
        } else {
            net + ((1u128 << size_bits) - 1)
        };
        let default_end = if v4 { last - 1 } else { last };
        let start = c.range_start.unwrap_or(from_u128(net + 1, v4));
        let end = c.range_end.unwrap_or(from_u128(default_end, v4));
        for (what, ip) in [("rangeStart", start), ("rangeEnd", end)] {
            if ip.is_ipv4() != v4 || !subnet.contains(ip) {
                return Err(invalid(format!("{what} {ip} not in network {subnet}")));
            }
        }
        if to_u128(start) > to_u128(end) {
            return Err(invalid(format!(
                "rangeStart {start} is after rangeEnd {end}"
            )));
        }
        let gateway = Some(c.gateway.unwrap_or(from_u128(net + 1, v4)));
        if let Some(g) = c.gateway {
            if g.is_ipv4() != v4 || !subnet.contains(g) {
                return Err(invalid(format!("gateway {g} not in network {subnet}")));
            }
        }
        Ok(Self {
            subnet,
            start,
            end,
            gateway,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.subnet.is_ipv4() == o.subnet.is_ipv4()
            && to_u128(self.start) <= to_u128(o.end)
            && to_u128(o.start) <= to_u128(self.end)
    }
}

/// A parsed host-local configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub network: String,
    pub sets: Vec<Vec<Range>>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

impl Config {
    pub fn from_call(call: &Call) -> CniResult<Self> {
        let ipam = call
            .raw
            .get("ipam")
            .cloned()
            .ok_or_else(|| invalid("missing 'ipam' section"))?;
        let c: IpamConf = serde_json::from_value(ipam).map_err(|e| {
            CniError::with_details(
                code::INVALID_CONFIG,
                "invalid ipam configuration",
                e.to_string(),
            )
        })?;
        let mut raw_sets = c.ranges.clone();
        if let Some(subnet) = &c.subnet {
            raw_sets.insert(
                0,
                vec![RangeConf {
                    subnet: subnet.clone(),
                    range_start: c.range_start,
                    range_end: c.range_end,
                    gateway: c.gateway,
                }],
            );
        }
        if raw_sets.is_empty() || raw_sets.iter().any(|s| s.is_empty()) {
            return Err(invalid("no IP ranges specified"));
        }
        let mut sets = Vec::new();
        for raw in &raw_sets {
            let set = raw
                .iter()
                .map(Range::canonical)
                .collect::<CniResult<Vec<_>>>()?;
            let v4 = set[0].subnet.is_ipv4();
            if set.iter().any(|r| r.subnet.is_ipv4() != v4) {
                return Err(invalid("mixed address families in one range set"));
            }
            sets.push(set);
        }
        let all: Vec<&Range> = sets.iter().flatten().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.overlaps(b) {
                    return Err(invalid(format!(
                        "range {}-{} overlaps with {}-{}",
                        a.start, a.end, b.start, b.end
                    )));
                }
            }
        }
        Ok(Self {
            network: call.conf.name.clone(),
            sets,
            routes: c.routes,
            data_dir: c.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            resolv_conf: c.resolv_conf,
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }
}

/// The allocation store of one network, locked for as long as it lives.
pub struct Store {
    dir: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

fn io(what: &Path) -> impl FnOnce(io::Error) -> CniError + '_ {
    move |e| {
        CniError::with_details(
            code::IO_FAILURE,
            format!("{}", what.display()),
            e.to_string(),
        )
    }
}

impl Store {
    pub fn open(dir: &Path) -> CniResult<Self> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lp = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(io(&lp))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&lp)(e.into()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    fn is_meta(name: &str) -> bool {
        name == "lock" || name.starts_with(LAST_RESERVED)
    }

    /// Every allocation: (ip, container id, ifname — empty for legacy ID-only files).
    pub fn allocations(&self) -> CniResult<Vec<(IpAddr, String, String)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if Self::is_meta(&name) {
                continue;
            }
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let content = fs::read_to_string(e.path()).unwrap_or_default();
            let (id, ifname) = match content.split_once(LINE_BREAK) {
                Some((id, ifn)) => (id.trim().to_string(), ifn.trim().to_string()),
                None => (content.trim().to_string(), String::new()),
            };
            out.push((ip, id, ifname));
        }
        Ok(out)
    }

    fn matches(id: &str, ifname: &str, file_id: &str, file_if: &str) -> bool {
        file_id == id && (file_if.is_empty() || file_if == ifname)
    }

    /// Reserves `ip` for the attachment; false when it is taken.
    fn reserve(&self, ip: IpAddr, id: &str, ifname: &str, set: usize) -> CniResult<bool> {
        let p = self.dir.join(ip.to_string());
        match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => {
                f.write_all(format!("{id}{LINE_BREAK}{ifname}").as_bytes())
                    .map_err(io(&p))?;
                let lr = self.dir.join(format!("{LAST_RESERVED}{set}"));
                fs::write(&lr, ip.to_string()).map_err(io(&lr))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Releases every address of the attachment; returns how many.
    pub fn release(&self, id: &str, ifname: &str) -> CniResult<usize> {
        let mut n = 0;
        for (ip, fid, fif) in self.allocations()? {
            if Self::matches(id, ifname, &fid, &fif) {
                let p = self.dir.join(ip.to_string());
                fs::remove_file(&p)
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(io(&p))?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Allocates one address from each range set (or the requested ones).
pub fn allocate(
    cfg: &Config,
    store: &Store,
    id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> CniResult<Vec<IpConfig>> {
    for r in requested {
        if !cfg.sets.iter().flatten().any(|rg| rg.contains(*r)) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("requested IP address {r} is not in any configured range"),
            ));
        }
    }
    let existing = store.allocations()?;
    let mut out = Vec::new();
    for (idx, set) in cfg.sets.iter().enumerate() {
        let in_set = |ip: IpAddr| set.iter().any(|r| r.contains(ip));
        if let Some((ip, _, _)) = existing
            .iter()
            .find(|(ip, fid, fif)| in_set(*ip) && Store::matches(id, ifname, fid, fif))
        {
            return Err(CniError::new(
                code::INTERNAL,
                format!("{ip} has been allocated to {id}, duplicate allocation is not allowed"),
            ));
        }
        let range_of = |ip: IpAddr| set.iter().find(|r| r.contains(ip)).expect("ip in set");
        let ip = match requested.iter().find(|r| in_set(**r)) {
            Some(r) => {
                if Some(*r) == range_of(*r).gateway || !store.reserve(*r, id, ifname, idx)? {
                    return Err(CniError::new(
                        code::INTERNAL,
                        format!(
                            "requested IP address {r} is not available in range set {}",
                            describe(set)
                        ),
                    ));
                }
                *r
            }
            None => next_free(set, store, id, ifname, idx)?,
        };
        let r = range_of(ip);
        out.push(IpConfig {
            address: IpNetwork::new(ip, r.subnet.prefix()).expect("prefix"),
            gateway: r.gateway,
            interface: None,
        });
    }
    Ok(out)
}

fn describe(set: &[Range]) -> String {
    set.iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(",")
}

fn next_free(
    set: &[Range],
    store: &Store,
    id: &str,
    ifname: &str,
    idx: usize,
) -> CniResult<IpAddr> {
    let taken: BTreeSet<IpAddr> = store.allocations()?.into_iter().map(|a| a.0).collect();
    // Round robin: start right after the last address handed out from this set.
    let (mut ri, mut cur) = match store
        .last_reserved(idx)
        .and_then(|l| set.iter().position(|r| r.contains(l)).map(|i| (i, l)))
    {
        Some((i, l)) => (i, Some(l)),
        None => (0, None),
    };
    let total: u128 = set
        .iter()
        .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
        .sum();
    let mut seen: u128 = 0;
    while seen <= total {
        let r = &set[ri];
        let v4 = r.subnet.is_ipv4();
        let next = match cur {
            Some(c) if to_u128(c) < to_u128(r.end) => from_u128(to_u128(c) + 1, v4),
            Some(_) => {
                ri = (ri + 1) % set.len();
                cur = None;
                continue;
            }
            None => r.start,
        };
        cur = Some(next);
        seen += 1;
        if Some(next) == r.gateway || taken.contains(&next) {
            continue;
        }
        if store.reserve(next, id, ifname, idx)? {
            return Ok(next);
        }
    }
    Err(CniError::new(
        code::INTERNAL,
        format!("no IP addresses available in range set: {}", describe(set)),
    ))
}

fn requested_ips(call: &Call) -> CniResult<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut push = |s: &str| -> CniResult<()> {
        let ip = s.split('/').next().unwrap_or(s);
        out.push(ip.parse().map_err(|_| {
            CniError::new(code::INVALID_CONFIG, format!("invalid requested IP {s:?}"))
        })?);
        Ok(())
    };
    if let Some(ips) = call.runtime_config("ips").and_then(Value::as_array) {
        for v in ips.iter().filter_map(Value::as_str) {
            push(v)?;
        }
    }
    if let Some(ips) = call
        .conf
        .args
        .as_ref()
        .and_then(|a| a.pointer("/cni/ips"))
        .and_then(Value::as_array)
    {
        for v in ips.iter().filter_map(Value::as_str) {
            push(v)?;
        }
    }
    if let Some(v) = call.args.get("IP") {
        for s in v.split(',').filter(|s| !s.is_empty()) {
            push(s)?;
        }
    }
    Ok(out)
}

fn resolv_dns(path: &Path) -> Dns {
    let mut d = Dns::default();
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => d.nameservers.extend(f.next().map(String::from)),
            Some("domain") => d.domain = f.next().map(String::from),
            Some("search") => d.search.extend(f.map(String::from)),
            Some("options") => d.options.extend(f.map(String::from)),
            _ => {}
        }
    }
    d
}

/// The valid attachments a GC call names (`cni.dev/valid-attachments`, or libcni's older key).
pub fn valid_attachments(call: &Call) -> Vec<(String, String)> {
    let list = call
        .raw
        .get("cni.dev/valid-attachments")
        .or_else(|| call.raw.get("cni.dev/attachments"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter_map(|a| {
            Some((
                a.get("containerID")?.as_str()?.to_string(),
                a.get("ifname")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ))
        })
        .collect()
}

pub struct HostLocal;

impl Plugin for HostLocal {
    fn add(&self, call: &Call) -> CniResult<Outcome> {
        let cfg = Config::from_call(call)?;
        let requested = requested_ips(call)?;
        let store = Store::open(&cfg.dir())?;
        let ips = allocate(&cfg, &store, &call.container_id, &call.ifname, &requested)?;
        Ok(Outcome {
            interfaces: Vec::new(),
            ips,
            routes: cfg.routes.clone(),
            dns: cfg
                .resolv_conf
                .as_deref()
                .map(resolv_dns)
                .unwrap_or_default(),
        })
    }

    fn del(&self, call: &Call) -> CniResult<()> {
        let cfg = Config::from_call(call)?;
        let store = Store::open(&cfg.dir())?;
        store.release(&call.container_id, &call.ifname)?;
        Ok(())
    }

    fn check(&self, call: &Call) -> CniResult<()> {
        let cfg = Config::from_call(call)?;
        let store = Store::open(&cfg.dir())?;
        let mine: Vec<IpAddr> = store
            .allocations()?
            .into_iter()
            .filter(|(_, id, ifn)| Store::matches(&call.container_id, &call.ifname, id, ifn))
            .map(|a| a.0)
            .collect();
        if mine.is_empty() {
            return Err(CniError::new(
                code::INTERNAL,
                format!(
                    "host-local: failed to find address for container {}",
                    call.container_id
                ),
            ));
        }
        if let Some(prev) = call.prev_result()? {
            for ip in prev.ips.iter().filter(|i| {
                cfg.sets
                    .iter()
                    .flatten()
                    .any(|r| r.contains(i.address.ip()))
            }) {
                if !mine.contains(&ip.address.ip()) {
                    return Err(CniError::new(
                        code::INTERNAL,
                        format!(
                            "host-local: {} is not allocated to {}",
                            ip.address.ip(),
                            call.container_id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn gc(&self, call: &Call) -> CniResult<()> {
        let cfg = Config::from_call(call)?;
        let valid = valid_attachments(call);
        let store = Store::open(&cfg.dir())?;
        for (ip, id, ifn) in store.allocations()? {
            let keep = valid.iter().any(|(vid, vif)| {
                Store::matches(vid, vif, &id, &ifn) || (ifn.is_empty() && *vid == id)
            });
            if !keep {
                let p = cfg.dir().join(ip.to_string());
                let _ = fs::remove_file(p);
            }
        }
        Ok(())
    }

    fn status(&self, call: &Call) -> CniResult<()> {
        let cfg = Config::from_call(call)?;
        Store::open(&cfg.dir()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, sets: Vec<Vec<RangeConf>>) -> Config {
        let sets = sets
            .iter()
            .map(|s| s.iter().map(|r| Range::canonical(r).unwrap()).collect())
            .collect();
        Config {
            network: "net".into(),
            sets,
            routes: vec![],
            data_dir: dir.into(),
            resolv_conf: None,
        }
    }

    fn rc(subnet: &str) -> RangeConf {
        RangeConf {
            subnet: subnet.into(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    #[test]
    fn canonical_ranges_follow_the_reference() {
        let r = Range::canonical(&rc("10.0.0.0/27")).unwrap();
        assert_eq!(r.start, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.end, "10.0.0.30".parse::<IpAddr>().unwrap());
        assert_eq!(r.gateway, Some("10.0.0.1".parse().unwrap()));
        let r6 = Range::canonical(&rc("fd00::/120")).unwrap();
        assert_eq!(r6.end, "fd00::ff".parse::<IpAddr>().unwrap());
        assert!(Range::canonical(&rc("10.0.0.0/31")).is_err());
        assert!(Range::canonical(&rc("nonsense")).is_err());
        let mut bad = rc("10.0.0.0/24");
        bad.range_start = Some("10.0.1.5".parse().unwrap());
        assert!(Range::canonical(&bad).is_err());
    }

    #[test]
    fn round_robin_layout_and_exhaustion() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(
            d.path(),
            vec![vec![rc("10.0.0.0/29")], vec![rc("fd00::/126")]],
        );
        let store = Store::open(&c.dir()).unwrap();
        let a = allocate(&c, &store, "c1", "eth0", &[]).unwrap();
        assert_eq!(a[0].address.to_string(), "10.0.0.2/29");
        assert_eq!(a[1].address.to_string(), "fd00::2/126");
        assert_eq!(
            fs::read_to_string(c.dir().join("10.0.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(c.dir().join("last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        // duplicate attachment refused
        assert!(allocate(&c, &store, "c1", "eth0", &[]).is_err());
        let b = allocate(&c, &store, "c2", "eth0", &[]).unwrap();
        assert_eq!(b[0].address.ip().to_string(), "10.0.0.3");
        // releasing does not make round robin go back
        store.release("c1", "eth0").unwrap();
        let c3 = allocate(&c, &store, "c3", "eth0", &[]).unwrap();
        assert_eq!(c3[0].address.ip().to_string(), "10.0.0.4");
        // v6 /126: ::1 gateway, ::2 ::3 usable -> exhausted on the third
        let err = allocate(&c, &store, "c4", "eth0", &[]).unwrap_err();
        assert!(err.msg.contains("no IP addresses available"), "{err}");
    }

    #[test]
    fn requested_and_legacy_files() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), vec![vec![rc("10.0.0.0/24")]]);
        let store = Store::open(&c.dir()).unwrap();
        let want: IpAddr = "10.0.0.77".parse().unwrap();
        let a = allocate(&c, &store, "c1", "eth0", &[want]).unwrap();
        assert_eq!(a[0].address.ip(), want);
        assert!(allocate(&c, &store, "c2", "eth0", &[want]).is_err());
        assert!(allocate(&c, &store, "c2", "eth0", &["10.9.0.1".parse().unwrap()]).is_err());
        fs::write(c.dir().join("10.0.0.9"), "legacy-id").unwrap();
        assert_eq!(store.release("legacy-id", "eth0").unwrap(), 1);
        assert!(!c.dir().join("10.0.0.9").exists());
    }
}
