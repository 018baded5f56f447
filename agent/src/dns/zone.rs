//! The cluster zone as the Kubernetes DNS specification (github.com/kubernetes/dns,
//! `docs/specification.md`, schema 1.1.0) defines it, built from the Services and
//! EndpointSlices the node watches. Pure data: the server turns `Answer`s into messages.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::services::Snapshot;

/// The `dns-version` TXT record: the specification version answered.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// One record's data. Names are lower-case, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Cname(String),
    Ptr(String),
    Txt(String),
}

impl Rec {
    /// The DNS type code (RFC 1035 and 3596, 2782).
    pub fn type_code(&self) -> u16 {
        match self {
            Rec::A(_) => 1,
            Rec::Cname(_) => 5,
            Rec::Ptr(_) => 12,
            Rec::Txt(_) => 16,
            Rec::Aaaa(_) => 28,
            Rec::Srv { .. } => 33,
        }
    }
}

/// What the zone says about a (name, type) question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records of the asked type (or the CNAME of an ExternalName service, which the server
    /// follows).
    Records(Vec<Rec>),
    /// The name exists with no record of that type (NOERROR, empty, SOA in authority).
    NoData,
    /// No such name in the zone (NXDOMAIN, SOA in authority).
    NxDomain,
    /// Outside the zone (or a reverse name the cluster does not hold): forwarded upstream.
    NotOurs,
    /// The watches have not listed yet: SERVFAIL (the client tries again) rather than a
    /// false NXDOMAIN that resolvers would cache.
    NotReady,
}

/// A built zone: every record by owner name, plus every name that exists only as an ancestor
/// (an empty non-terminal answers NODATA, not NXDOMAIN).
#[derive(Debug, Default)]
pub struct Zone {
    pub domain: String,
    synced: bool,
    records: HashMap<String, Vec<Rec>>,
    names: HashSet<String>,
}

/// `10.0.0.1` → `1.0.0.10.in-addr.arpa`; IPv6 by nibbles under `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The label an endpoint without a hostname gets: its address with dashes (CoreDNS' form).
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn addr_rec(ip: IpAddr) -> Rec {
    match ip {
        IpAddr::V4(v4) => Rec::A(v4),
        IpAddr::V6(v6) => Rec::Aaaa(v6),
    }
}

fn lower_trim(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// Builds the zone `domain` (e.g. `cluster.local`) from the watched objects.
    pub fn build(domain: &str, snap: &Snapshot) -> Zone {
        let mut z = Zone {
            domain: lower_trim(domain),
            synced: snap.synced,
            ..Default::default()
        };
        let version = format!("dns-version.{}", z.domain);
        z.add(&version, Rec::Txt(SCHEMA_VERSION.into()));
        z.names.insert(z.domain.clone());
        for ((ns, name), svc) in &snap.services {
            z.add_service(ns, name, svc, snap.slices_of(ns, name));
        }
        z
    }

    fn add(&mut self, name: &str, rec: Rec) {
        let list = self.records.entry(name.to_string()).or_default();
        if !list.contains(&rec) {
            list.push(rec);
        }
        self.add_name(name);
    }

    fn add_service<'a>(
        &mut self,
        ns: &str,
        name: &str,
        svc: &Service,
        slices: impl Iterator<Item = &'a EndpointSlice>,
    ) {
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let fqdn = format!("{}.{}.svc.{}", name, ns, self.domain).to_ascii_lowercase();
        // The service's own name exists even when it has nothing to answer yet.
        self.add_name(&fqdn);
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                self.add(&fqdn, Rec::Cname(lower_trim(target)));
            }
            return;
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if !headless {
            let ips = spec
                .cluster_ips
                .clone()
                .filter(|v| !v.is_empty())
                .or_else(|| spec.cluster_ip.clone().map(|i| vec![i]))
                .unwrap_or_default();
            for ip in ips.iter().filter_map(|i| i.parse::<IpAddr>().ok()) {
                self.add(&fqdn, addr_rec(ip));
                self.add(&reverse_name(ip), Rec::Ptr(fqdn.clone()));
            }
            for p in spec.ports.iter().flatten() {
                let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let srv = Rec::Srv {
                    priority: 0,
                    weight: 100,
                    port: p.port as u16,
                    target: fqdn.clone(),
                };
                self.add(&format!("_{pname}._{proto}.{fqdn}"), srv);
            }
            return;
        }
        // Headless: the ready endpoints themselves (all of them when the service publishes
        // not-ready addresses).
        let all = spec.publish_not_ready_addresses.unwrap_or(false);
        let mut srv: HashMap<String, Vec<(u16, String)>> = HashMap::new();
        for slice in slices {
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if !(ready || all) {
                    continue;
                }
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let host = ep
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map(str::to_ascii_lowercase);
                    let label = host.clone().unwrap_or_else(|| dashed(ip));
                    let target = format!("{label}.{fqdn}");
                    self.add(&fqdn, addr_rec(ip));
                    self.add(&target, addr_rec(ip));
                    if host.is_some() {
                        self.add(&reverse_name(ip), Rec::Ptr(target.clone()));
                    }
                    for p in slice.ports.iter().flatten() {
                        let (Some(pname), Some(port)) =
                            (p.name.as_deref().filter(|n| !n.is_empty()), p.port)
                        else {
                            continue;
                        };
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        srv.entry(format!("_{pname}._{proto}.{fqdn}"))
                            .or_default()
                            .push((port as u16, target.clone()));
                    }
                }
            }
        }
        // Weights share 100 among a name's targets, as CoreDNS does.
        for (owner, targets) in srv {
            let weight = (100 / targets.len()).max(1) as u16;
            for (port, target) in targets {
                self.add(
                    &owner,
                    Rec::Srv {
                        priority: 0,
                        weight,
                        port,
                        target,
                    },
                );
            }
        }
    }

    /// The name and its ancestors down to the zone exist (stops at the first already known:
    /// its ancestors are then known too).
    fn add_name(&mut self, name: &str) {
        let mut n = name;
        while n.len() > self.domain.len() && self.names.insert(n.to_string()) {
            match n.split_once('.') {
                Some((_, rest)) => n = rest,
                None => break,
            }
        }
    }

    /// Whether `name` (lower-case, no trailing dot) is in the cluster zone.
    pub fn in_zone(&self, name: &str) -> bool {
        name == self.domain
            || name
                .strip_suffix(&self.domain)
                .is_some_and(|p| p.ends_with('.'))
    }

    /// Answers `name` (lower-case, no trailing dot) for type `qtype` (a DNS type code; 255 is
    /// ANY). The SOA of the apex is the server's to add.
    pub fn lookup(&self, name: &str, qtype: u16) -> Answer {
        if !self.in_zone(name) {
            // Reverse names the cluster holds are answered; others go upstream.
            return match self.records.get(name) {
                Some(recs) if name.ends_with(".arpa") => pick(recs, qtype),
                _ => Answer::NotOurs,
            };
        }
        if !self.synced {
            return Answer::NotReady;
        }
        if let Some(a) = self.pod_record(name, qtype) {
            return a;
        }
        match self.records.get(name) {
            Some(recs) => pick(recs, qtype),
            None if self.names.contains(name) || name == self.domain => Answer::NoData,
            None => Answer::NxDomain,
        }
    }

    /// `a-b-c-d.<namespace>.pod.<zone>`: any address in dashed form (CoreDNS' `pods insecure`,
    /// the kubeadm default). `pod.<zone>` and `<namespace>.pod.<zone>` exist, empty.
    fn pod_record(&self, name: &str, qtype: u16) -> Option<Answer> {
        let rest = name.strip_suffix(&self.domain)?.strip_suffix('.')?;
        let labels: Vec<&str> = rest.split('.').collect();
        match labels.as_slice() {
            ["pod"] | [_, "pod"] => Some(Answer::NoData),
            [ip, _ns, "pod"] => {
                let v4 = ip
                    .replace('-', ".")
                    .parse::<Ipv4Addr>()
                    .ok()
                    .map(IpAddr::V4);
                let ip = v4.or_else(|| {
                    ip.replace('-', ":")
                        .parse::<Ipv6Addr>()
                        .ok()
                        .map(IpAddr::V6)
                });
                Some(match ip {
                    Some(ip) => pick(&[addr_rec(ip)], qtype),
                    None => Answer::NxDomain,
                })
            }
            _ => None,
        }
    }
}

fn pick(recs: &[Rec], qtype: u16) -> Answer {
    // A CNAME answers every type but CNAME's own question is answered by it too.
    if let Some(c) = recs.iter().find(|r| matches!(r, Rec::Cname(_))) {
        return Answer::Records(vec![c.clone()]);
    }
    let got: Vec<Rec> = recs
        .iter()
        .filter(|r| qtype == 255 || r.type_code() == qtype)
        .cloned()
        .collect();
    if got.is_empty() {
        Answer::NoData
    } else {
        Answer::Records(got)
    }
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
