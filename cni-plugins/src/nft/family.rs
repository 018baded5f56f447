//! The address family of a table's rules: where `ip`/`ip6` keep their addresses, how long
//! they are, and the family's flavour of the expressions that depend on it (dnat, reject,
//! address keys), so one rule writer serves the `ip` and the `ip6` table alike.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::expr::*;
use super::ProtoFamily;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// nft's `ipv6_addr` datatype id.
pub const TYPE_IP6ADDR: u32 = 8;

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The table family (`ip` or `ip6`).
    pub fn table(self) -> ProtoFamily {
        match self {
            Family::V4 => ProtoFamily::Ipv4,
            Family::V6 => ProtoFamily::Ipv6,
        }
    }

    /// As `nft` writes it: `ip` or `ip6`.
    pub fn nft_name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// As Kubernetes writes it (`spec.ipFamilies`, an EndpointSlice's `addressType`).
    pub fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn has(self, ip: IpAddr) -> bool {
        Family::of(ip) == self
    }

    pub fn addr_len(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// The nft datatype of an address.
    pub fn addr_type(self) -> u32 {
        match self {
            Family::V4 => TYPE_IPADDR,
            Family::V6 => TYPE_IP6ADDR,
        }
    }

    /// `ip saddr` / `ip6 saddr` into `dreg`.
    pub fn saddr(self, dreg: u32) -> Expr {
        match self {
            Family::V4 => ip_saddr(dreg),
            Family::V6 => network_payload(8, 16, dreg),
        }
    }

    /// `ip daddr` / `ip6 daddr` into `dreg`.
    pub fn daddr(self, dreg: u32) -> Expr {
        match self {
            Family::V4 => ip_daddr(dreg),
            Family::V6 => network_payload(24, 16, dreg),
        }
    }

    /// `<loaded address> (==|!=) <net>`; the address loaded by `load` into NFT_REG_1.
    pub fn in_net(self, load: Expr, net: IpNetwork, op: u32) -> Vec<Expr> {
        let (mask, addr) = match net {
            IpNetwork::V4(n) => (n.mask().octets().to_vec(), n.network().octets().to_vec()),
            IpNetwork::V6(n) => (n.mask().octets().to_vec(), n.network().octets().to_vec()),
        };
        vec![
            load,
            bitwise(NFT_REG_1, &mask, &vec![0; mask.len()]),
            cmp(op, NFT_REG_1, &addr),
        ]
    }

    /// The loopback network (`127.0.0.0/8`, `::1/128`).
    pub fn loopback(self) -> IpNetwork {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
        .parse()
        .expect("constant network")
    }

    /// `<addr> . inet_proto . inet_service`, each part in its own 32-bit registers from
    /// NFT_REG32_00: its type, its length, and the registers of the protocol and the port.
    pub fn addr_proto_port(self) -> (u32, u32, u32, u32) {
        let regs = self.addr_len() / 4;
        (
            concat_type(&[self.addr_type(), TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]),
            self.addr_len() + 8,
            NFT_REG32_00 + regs,
            NFT_REG32_00 + regs + 1,
        )
    }

    /// `dnat ip|ip6 to <addr in addr_reg>:<port in proto_reg>`.
    pub fn dnat(self, addr_reg: u32, proto_reg: u32) -> Expr {
        match self {
            Family::V4 => dnat_v4(addr_reg, proto_reg),
            Family::V6 => dnat_v6(addr_reg, proto_reg),
        }
    }

    /// `reject` as the family does it by default: ICMP(v6) port unreachable.
    pub fn reject(self) -> Expr {
        match self {
            Family::V4 => reject(),
            Family::V6 => reject_icmpv6_port_unreachable(),
        }
    }
}

/// The key of an `<addr> . inet_proto . inet_service` element: the address, then
/// `[proto 0 0 0][port (big endian) 0 0]`.
pub fn addr_proto_port_key(ip: IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = addr_bytes(ip);
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

pub fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_registers_per_family() {
        let k = addr_proto_port_key("10.96.0.1".parse().unwrap(), 6, 443);
        assert_eq!(k, addr_proto_port_key_v4_reference());
        let k6 = addr_proto_port_key("fd00::1".parse().unwrap(), 17, 53);
        assert_eq!(k6.len(), 24);
        assert_eq!(&k6[16..], &[17, 0, 0, 0, 0, 53, 0, 0]);
        let (_, len, proto, port) = Family::V6.addr_proto_port();
        assert_eq!((len, proto, port), (24, NFT_REG32_00 + 4, NFT_REG32_00 + 5));
        let (t, len, proto, port) = Family::V4.addr_proto_port();
        assert_eq!((t, len), (IPV4_PROTO_PORT_TYPE, IPV4_PROTO_PORT_LEN));
        assert_eq!((proto, port), (NFT_REG32_01, NFT_REG32_02));
    }

    fn addr_proto_port_key_v4_reference() -> Vec<u8> {
        ipv4_proto_port_key("10.96.0.1".parse().unwrap(), 6, 443).to_vec()
    }
}
