//! Dual-stack ranges: one CIDR, or one of each IP family, the first naming the primary family —
//! the form of kube-apiserver's `--service-cluster-ip-range` and kube-controller-manager's
//! `--cluster-cidr` (`10.96.0.0/12` or `10.96.0.0/12,fd00:10:96::/112`).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualStackCidrs(Vec<IpNetwork>);

impl DualStackCidrs {
    /// `value` of flag `flag` (named in the error, as upstream's messages do).
    pub fn parse(flag: &str, value: &str) -> Result<DualStackCidrs, String> {
        let cidrs = value
            .split(',')
            .map(str::trim)
            .map(|c| {
                c.parse::<IpNetwork>()
                    .map_err(|e| format!("--{flag}: {c:?} is not a CIDR: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        DualStackCidrs::new(flag, cidrs)
    }

    /// One CIDR, or two of different families (upstream's `ParseCIDRs` + `IsDualStackCIDRs`).
    pub fn new(flag: &str, cidrs: Vec<IpNetwork>) -> Result<DualStackCidrs, String> {
        match cidrs.as_slice() {
            [] => Err(format!("--{flag}: no CIDR given")),
            [_] => Ok(DualStackCidrs(cidrs)),
            [a, b] if a.is_ipv4() != b.is_ipv4() => Ok(DualStackCidrs(cidrs)),
            [a, b] => Err(format!(
                "--{flag}: {a} and {b} must be of different IP families (one IPv4, one IPv6)"
            )),
            _ => Err(format!(
                "--{flag}: at most two CIDRs (an IPv4 and an IPv6 one)"
            )),
        }
    }

    /// The range of single-stack objects (the first given).
    pub fn primary(&self) -> IpNetwork {
        self.0[0]
    }

    pub fn is_dual(&self) -> bool {
        self.0.len() == 2
    }

    pub fn v4(&self) -> Option<Ipv4Network> {
        self.0.iter().find_map(|c| match c {
            IpNetwork::V4(c) => Some(*c),
            IpNetwork::V6(_) => None,
        })
    }

    pub fn v6(&self) -> Option<Ipv6Network> {
        self.0.iter().find_map(|c| match c {
            IpNetwork::V6(c) => Some(*c),
            IpNetwork::V4(_) => None,
        })
    }

    /// The range of `family` ("IPv4" or "IPv6", as `spec.ipFamilies` names them).
    pub fn of_family(&self, family: &str) -> Option<IpNetwork> {
        self.0
            .iter()
            .copied()
            .find(|c| family_name(c.ip()) == family)
    }

    /// Whether `ip` is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The ranges, primary first.
    pub fn iter(&self) -> impl Iterator<Item = &IpNetwork> {
        self.0.iter()
    }
}

/// "IPv4" or "IPv6": the family of `ip` as `spec.ipFamilies` and EndpointSlices'
/// `addressType` name it.
pub fn family_name(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

impl fmt::Display for DualStackCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&s.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_one_of_each_family_primary_first() {
        let one = DualStackCidrs::parse("service-cluster-ip-range", "10.96.0.0/12").unwrap();
        assert!(!one.is_dual());
        assert_eq!(one.v6(), None);
        let dual =
            DualStackCidrs::parse("service-cluster-ip-range", "fd00:10:96::/112, 10.96.0.0/12")
                .unwrap();
        assert!(dual.is_dual());
        assert_eq!(dual.primary().to_string(), "fd00:10:96::/112");
        assert_eq!(dual.v4().unwrap().to_string(), "10.96.0.0/12");
        assert_eq!(dual.of_family("IPv4").unwrap().to_string(), "10.96.0.0/12");
        assert!(dual.contains("fd00:10:96::a".parse().unwrap()));
        assert_eq!(dual.to_string(), "fd00:10:96::/112,10.96.0.0/12");
    }

    #[test]
    fn errors_name_the_flag() {
        for (v, want) in [
            (
                "10.96.0.0/12,10.97.0.0/16",
                "must be of different IP families",
            ),
            ("10.96.0.0/12,fd00::/112,fd01::/112", "at most two CIDRs"),
            ("10.96.0.0/33", "is not a CIDR"),
        ] {
            let e = DualStackCidrs::parse("service-cluster-ip-range", v).unwrap_err();
            assert!(
                e.starts_with("--service-cluster-ip-range: ") && e.contains(want),
                "{e}"
            );
        }
    }
}
