//! NetworkPolicy rules the apiserver and the agent both apply: the policy types a policy has
//! (upstream's defaulting of `spec.policyTypes`) and CIDRs as the apiserver parses an
//! `ipBlock` (`netutils.ParseCIDRSloppy`, the legacy parser of Kubernetes 1.33).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::NetworkPolicySpec;

/// Whether a policy is about ingress and about egress: its `policyTypes`, or when it names none
/// (`SetDefaults_NetworkPolicy`), Ingress, plus Egress if it has egress rules.
pub fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// The default `policyTypes` for a policy that names none.
pub fn default_policy_types(has_egress_rules: bool) -> Vec<&'static str> {
    if has_egress_rules {
        vec!["Ingress", "Egress"]
    } else {
        vec!["Ingress"]
    }
}

/// A CIDR's network (address with the host bits cleared) and prefix length, parsed as
/// `ParseCIDRSloppy` does: IPv4 octets may have leading zeros (read as decimal), the prefix
/// length too, and host bits may be set (`10.0.0.1/8` is `10.0.0.0/8`). None if it is not one.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let ip = parse_ip(ip)?;
    match ip {
        IpAddr::V4(a) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some((IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), len))
        }
        IpAddr::V6(a) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some((IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), len))
        }
        _ => None,
    }
}

/// An address as `ParseIPSloppy`: IPv4 octets with leading zeros allowed.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        o[i] = p.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(o)))
}

/// Whether network `inner` lies strictly inside `outer` (both from [`parse_cidr`]): the
/// `except` rule of an ipBlock.
pub fn strict_subset(inner: (IpAddr, u8), outer: (IpAddr, u8)) -> bool {
    if inner.1 <= outer.1 {
        return false;
    }
    match (inner.0, outer.0) {
        (IpAddr::V4(i), IpAddr::V4(o)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(outer.1)).unwrap_or(0);
            u32::from(i) & mask == u32::from(o)
        }
        (IpAddr::V6(i), IpAddr::V6(o)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(outer.1)).unwrap_or(0);
            u128::from(i) & mask == u128::from(o)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicyEgressRule;

    #[test]
    fn policy_types_default_as_upstream() {
        let mut spec = NetworkPolicySpec::default();
        assert_eq!(policy_types(&spec), (true, false));
        spec.egress = Some(vec![]);
        assert_eq!(policy_types(&spec), (true, false), "an empty egress list");
        spec.egress = Some(vec![NetworkPolicyEgressRule::default()]);
        assert_eq!(policy_types(&spec), (true, true));
        spec.policy_types = Some(vec!["Egress".into()]);
        assert_eq!(policy_types(&spec), (false, true));
        spec.policy_types = Some(vec![]);
        assert_eq!(policy_types(&spec), (true, true));
        assert_eq!(default_policy_types(false), ["Ingress"]);
    }

    #[test]
    fn cidrs_parse_sloppily() {
        let v4 = |a: [u8; 4], l| Some((IpAddr::V4(Ipv4Addr::from(a)), l));
        assert_eq!(parse_cidr("10.0.0.0/8"), v4([10, 0, 0, 0], 8));
        assert_eq!(parse_cidr("10.1.2.3/8"), v4([10, 0, 0, 0], 8));
        assert_eq!(parse_cidr("010.001.0.0/016"), v4([10, 1, 0, 0], 16));
        assert_eq!(parse_cidr("0.0.0.0/0"), v4([0, 0, 0, 0], 0));
        assert_eq!(parse_cidr("1.2.3.4/32"), v4([1, 2, 3, 4], 32));
        for bad in [
            "10.0.0.0",
            "10.0.0/8",
            "10.0.0.0/33",
            "a.b.c.d/8",
            "10.0.0.256/8",
            "/8",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
        assert_eq!(
            parse_cidr("fd00::1/64"),
            Some((IpAddr::V6("fd00::".parse().unwrap()), 64))
        );
    }

    #[test]
    fn excepts_must_be_strict_subsets() {
        let c = |s| parse_cidr(s).unwrap();
        assert!(strict_subset(c("10.1.0.0/16"), c("10.0.0.0/8")));
        assert!(!strict_subset(c("10.0.0.0/8"), c("10.0.0.0/8")));
        assert!(!strict_subset(c("11.0.0.0/16"), c("10.0.0.0/8")));
        assert!(!strict_subset(c("10.0.0.0/7"), c("10.0.0.0/8")));
        assert!(!strict_subset(c("fd00::/64"), c("10.0.0.0/8")));
        assert!(strict_subset(c("10.0.0.0/32"), c("0.0.0.0/0")));
    }
}
