//! One cluster CIDR cut into node CIDRs of one size (upstream's `ipam/cidrset`): which are
//! used, and the next to hand out. Allocation goes round the range from just after the last
//! one handed out, as upstream's `nextCandidate`, so a released CIDR is not reused at once.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// Upstream's `clusterSubnetMaxDiff`: at most 2^16 node CIDRs in one cluster CIDR.
const MAX_DIFF: u8 = 16;

#[derive(Debug)]
pub struct CidrSet {
    cluster: IpNetwork,
    node_prefix: u8,
    used: Vec<bool>,
    allocated: usize,
    next: usize,
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v).into(),
        IpAddr::V6(v) => u128::from(v),
    }
}

impl CidrSet {
    /// Node CIDRs of prefix length `node_prefix` inside `cluster`.
    pub fn new(cluster: IpNetwork, node_prefix: u8) -> Result<CidrSet, String> {
        let max = if cluster.is_ipv4() { 32 } else { 128 };
        if node_prefix > max {
            return Err(format!(
                "node CIDR mask size {node_prefix} is larger than {max}, the size of an address"
            ));
        }
        if node_prefix < cluster.prefix() {
            return Err(format!(
                "node CIDR mask size {node_prefix} is smaller than the cluster CIDR {cluster}'s {}",
                cluster.prefix()
            ));
        }
        if node_prefix - cluster.prefix() > MAX_DIFF {
            return Err(format!(
                "New CIDR set failed; the node CIDR size is too big (cluster CIDR {cluster}, node mask size {node_prefix}: more than 2^{MAX_DIFF} node CIDRs)"
            ));
        }
        let count = 1usize << (node_prefix - cluster.prefix());
        let cluster =
            IpNetwork::new(cluster.network(), cluster.prefix()).map_err(|e| e.to_string())?;
        Ok(CidrSet {
            cluster,
            node_prefix,
            used: vec![false; count],
            allocated: 0,
            next: 0,
        })
    }

    fn host_bits(&self) -> u32 {
        let max = if self.cluster.is_ipv4() { 32 } else { 128 };
        u32::from(max - self.node_prefix)
    }

    fn cidr(&self, index: usize) -> IpNetwork {
        let base = bits(self.cluster.network());
        let addr = base + ((index as u128) << self.host_bits());
        let ip = if self.cluster.is_ipv4() {
            IpAddr::V4((addr as u32).into())
        } else {
            IpAddr::V6(addr.into())
        };
        IpNetwork::new(ip, self.node_prefix).expect("prefix checked at construction")
    }

    /// The node CIDR that `cidr` is, if it is one of this set's.
    fn index(&self, cidr: IpNetwork) -> Result<usize, String> {
        if cidr.is_ipv4() != self.cluster.is_ipv4()
            || cidr.prefix() != self.node_prefix
            || !self.cluster.contains(cidr.network())
        {
            return Err(format!(
                "cidr {cidr} is out the range of cluster cidr {} (node mask size {})",
                self.cluster, self.node_prefix
            ));
        }
        let offset = bits(cidr.network()) - bits(self.cluster.network());
        Ok((offset >> self.host_bits()) as usize)
    }

    /// Hands out the next free node CIDR, None when every one is used.
    pub fn allocate_next(&mut self) -> Option<IpNetwork> {
        let n = self.used.len();
        let i = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| !self.used[i])?;
        self.used[i] = true;
        self.allocated += 1;
        self.next = (i + 1) % n;
        Some(self.cidr(i))
    }

    /// Marks `cidr` used (a node that already has it).
    pub fn occupy(&mut self, cidr: IpNetwork) -> Result<(), String> {
        let i = self.index(cidr)?;
        if !self.used[i] {
            self.used[i] = true;
            self.allocated += 1;
        }
        Ok(())
    }

    /// Makes `cidr` free again.
    pub fn release(&mut self, cidr: IpNetwork) -> Result<(), String> {
        let i = self.index(cidr)?;
        if self.used[i] {
            self.used[i] = false;
            self.allocated -= 1;
        }
        Ok(())
    }

    pub fn family_matches(&self, cidr: &IpNetwork) -> bool {
        self.cluster.is_ipv4() == cidr.is_ipv4()
    }

    pub fn allocated(&self) -> usize {
        self.allocated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_every_cidr_once_then_none() {
        let mut s = CidrSet::new(net("10.244.0.0/22"), 24).unwrap();
        let got: Vec<String> = (0..4)
            .map(|_| s.allocate_next().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.244.0.0/24",
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.3.0/24"
            ]
        );
        assert_eq!(s.allocate_next(), None, "exhausted");
        s.release(net("10.244.1.0/24")).unwrap();
        assert_eq!(s.allocate_next(), Some(net("10.244.1.0/24")));
        assert_eq!(s.allocated(), 4);
    }

    #[test]
    fn occupied_cidrs_are_skipped_and_the_next_goes_round() {
        let mut s = CidrSet::new(net("10.244.0.0/16"), 24).unwrap();
        s.occupy(net("10.244.0.0/24")).unwrap();
        s.occupy(net("10.244.2.0/24")).unwrap();
        assert_eq!(s.allocate_next(), Some(net("10.244.1.0/24")));
        assert_eq!(s.allocate_next(), Some(net("10.244.3.0/24")));
        s.release(net("10.244.1.0/24")).unwrap();
        // Not reused at once: the next candidate is after the last handed out.
        assert_eq!(s.allocate_next(), Some(net("10.244.4.0/24")));
        let err = s.occupy(net("10.88.0.0/24")).unwrap_err();
        assert!(err.contains("out the range"), "{err}");
        assert!(s.occupy(net("10.244.0.0/25")).is_err(), "another size");
    }

    #[test]
    fn ipv6_node_cidrs() {
        let mut s = CidrSet::new(net("fd00:10:244::/56"), 64).unwrap();
        assert_eq!(s.allocate_next(), Some(net("fd00:10:244::/64")));
        assert_eq!(s.allocate_next(), Some(net("fd00:10:244:1::/64")));
        s.occupy(net("fd00:10:244:ff::/64")).unwrap();
        assert!(
            CidrSet::new(net("fd00::/48"), 66).is_err(),
            "2^18 node CIDRs"
        );
        assert!(
            CidrSet::new(net("10.0.0.0/24"), 16).is_err(),
            "node mask below cluster"
        );
    }
}
