//! Expression builders over [`Expr`] for what nftnl 0.9's typed expressions lack (32-bit
//! registers, concatenated keys, verdict maps, numgen, dnat with a port, reject, ct state, meta
//! set), each the counterpart of one `nft --debug=netlink` line, and the kernel and nft
//! constants they use (`linux/netfilter/nf_tables.h`, nftables' `datatype.h`).

use nftnl::nftnl_sys as sys;
use nftnl::Rule;

pub use super::ffi::Expr;

pub const NFT_REG_VERDICT: u32 = 0;
/// The 16-byte register 1 (the 32-bit registers 8 to 11).
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG_2: u32 = 2;
pub const NFT_REG32_00: u32 = 8;
pub const NFT_REG32_01: u32 = 9;
pub const NFT_REG32_02: u32 = 10;

pub const NF_DROP: i32 = 0;
pub const NFT_RETURN: i32 = -5;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

pub const NFT_META_MARK: u32 = 3;
pub const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
/// The `new` bit of `ct state` (IP_CT_NEW).
const CT_STATE_NEW: u32 = 1 << 3;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
const NFT_NG_RANDOM: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const ICMP_PORT_UNREACH: u8 = 3;
const NFT_LOOKUP_F_INV: u32 = 1;
/// NF_NAT_RANGE_PROTO_RANDOM_FULLY: `masquerade fully-random`.
const NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

pub const NFT_SET_CONSTANT: u32 = 0x2;
pub const NFT_SET_MAP: u32 = 0x8;
/// Elements expire (`flags timeout`).
pub const NFT_SET_TIMEOUT: u32 = 0x10;
/// Rules add elements (`flags dynamic`).
pub const NFT_SET_EVAL: u32 = 0x20;
pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// nft's datatype ids, for `nft list` to print keys; a concatenation is the ids shifted by 6
/// bits each ([`concat_type`]).
pub const TYPE_INTEGER: u32 = 4;
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_INET_PROTOCOL: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;

pub const fn concat_type(types: &[u32]) -> u32 {
    let mut t = 0;
    let mut i = 0;
    while i < types.len() {
        t = (t << 6) | types[i];
        i += 1;
    }
    t
}

/// `ipv4_addr . inet_proto . inet_service`, each part in its own 4-byte register.
pub const IPV4_PROTO_PORT_TYPE: u32 =
    concat_type(&[TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
pub const IPV4_PROTO_PORT_LEN: u32 = 12;

/// The key of an `ipv4_addr . inet_proto . inet_service` element: `[a.b.c.d][proto 0 0 0]
/// [port (big endian) 0 0]`.
pub fn ipv4_proto_port_key(ip: std::net::Ipv4Addr, proto: u8, port: u16) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[0..4].copy_from_slice(&ip.octets());
    k[4] = proto;
    k[8..10].copy_from_slice(&port.to_be_bytes());
    k
}

/// `inet_proto . inet_service` (node ports), each part in its own 4-byte register.
pub const PROTO_PORT_TYPE: u32 = concat_type(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]);
pub const PROTO_PORT_LEN: u32 = 8;

/// The key of an `inet_proto . inet_service` element: `[proto 0 0 0][port (big endian) 0 0]`.
pub fn proto_port_key(proto: u8, port: u16) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[0] = proto;
    k[4..6].copy_from_slice(&port.to_be_bytes());
    k
}

/// `fib daddr type` (the route type of the destination: RTN_LOCAL for the node's own
/// addresses) into `dreg`, 4 bytes host-endian.
pub fn fib_daddr_type(dreg: u32) -> Expr {
    const NFTA_FIB_F_DADDR: u32 = 1 << 1;
    const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
    Expr::new(c"fib")
        .u32(sys::NFTNL_EXPR_FIB_DREG, dreg)
        .u32(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
        .u32(sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR)
}

/// `fib saddr type` (the route type of the source: RTN_LOCAL for traffic from the node
/// itself) into `dreg`.
pub fn fib_saddr_type(dreg: u32) -> Expr {
    const NFTA_FIB_F_SADDR: u32 = 1 << 0;
    const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
    Expr::new(c"fib")
        .u32(sys::NFTNL_EXPR_FIB_DREG, dreg)
        .u32(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
        .u32(sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_SADDR)
}

/// `update @set { <key in sreg> }`: adds the key to a dynamic set, or refreshes its timeout.
pub fn dynset_update(set: &str, set_id: u32, sreg: u32) -> Expr {
    const NFT_DYNSET_OP_UPDATE: u32 = 1;
    Expr::new(c"dynset")
        .u32(sys::NFTNL_EXPR_DYNSET_SREG_KEY, sreg)
        .u32(sys::NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE)
        .str(sys::NFTNL_EXPR_DYNSET_SET_NAME, set)
        .u32(sys::NFTNL_EXPR_DYNSET_SET_ID, set_id)
}

/// `RTN_LOCAL` (linux/rtnetlink.h): what `fib daddr type` yields for a local address.
pub const RTN_LOCAL: u32 = 2;

/// Set user data (libnftnl's TLVs, as nft writes them) for a verdict map keyed by
/// `numgen random mod <modulus>`: the key is host-endian and typed by that expression, so
/// `nft list` prints `typeof numgen random mod N : verdict` with keys 0, 1, … and its output
/// loads back with `nft -f`. Only nft reads it: the kernel ignores user data.
pub fn numgen_map_udata(modulus: u32) -> Vec<u8> {
    // nft's ids: set udata KEYBYTEORDER 0, KEY_TYPEOF 3, DATA_TYPEOF 4; in a typeof, EXPR 0
    // and DATA 1; numgen's data TYPE 0, MOD 1, OFFSET 2; expression ids numgen 23, verdict 1.
    fn tlv(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
        out.push(ty);
        out.push(u8::try_from(value.len()).expect("short user data"));
        out.extend_from_slice(value);
    }
    let mut numgen = Vec::new();
    tlv(&mut numgen, 0, &1u32.to_ne_bytes()); // NFT_NG_RANDOM
    tlv(&mut numgen, 1, &modulus.to_ne_bytes());
    tlv(&mut numgen, 2, &0u32.to_ne_bytes());
    let mut key = Vec::new();
    tlv(&mut key, 0, &23u32.to_ne_bytes());
    tlv(&mut key, 1, &numgen);
    let mut data = Vec::new();
    tlv(&mut data, 0, &1u32.to_ne_bytes());
    tlv(&mut data, 1, &[]);
    let mut out = Vec::new();
    tlv(&mut out, 0, &1u32.to_ne_bytes()); // host byte order
    tlv(&mut out, 3, &key);
    tlv(&mut out, 4, &data);
    out
}

/// `[ payload load <len>b @ <base> header + <offset> => reg <dreg> ]`
fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, dreg)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base)
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
}

/// `[ payload load <len>b @ network header + <offset> => reg <dreg> ]`
pub fn network_payload(offset: u32, len: u32, dreg: u32) -> Expr {
    payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len, dreg)
}

/// `[ payload load <len>b @ transport header + <offset> => reg <dreg> ]`
pub fn transport_payload(offset: u32, len: u32, dreg: u32) -> Expr {
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, offset, len, dreg)
}

pub fn ip_saddr(dreg: u32) -> Expr {
    payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4, dreg)
}

pub fn ip_daddr(dreg: u32) -> Expr {
    payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4, dreg)
}

/// `th dport`: 2 bytes at offset 2 of the transport header (TCP, UDP and SCTP alike).
pub fn th_dport(dreg: u32) -> Expr {
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, dreg)
}

pub fn meta_load(key: u32, dreg: u32) -> Expr {
    Expr::new(c"meta")
        .u32(sys::NFTNL_EXPR_META_KEY, key)
        .u32(sys::NFTNL_EXPR_META_DREG, dreg)
}

pub fn meta_set(key: u32, sreg: u32) -> Expr {
    Expr::new(c"meta")
        .u32(sys::NFTNL_EXPR_META_KEY, key)
        .u32(sys::NFTNL_EXPR_META_SREG, sreg)
}

pub fn cmp(op: u32, sreg: u32, data: &[u8]) -> Expr {
    Expr::new(c"cmp")
        .u32(sys::NFTNL_EXPR_CMP_SREG, sreg)
        .u32(sys::NFTNL_EXPR_CMP_OP, op)
        .data(sys::NFTNL_EXPR_CMP_DATA, data)
}

/// `reg = (reg & mask) ^ xor` over `mask.len()` bytes.
pub fn bitwise(reg: u32, mask: &[u8], xor: &[u8]) -> Expr {
    Expr::new(c"bitwise")
        .u32(sys::NFTNL_EXPR_BITWISE_SREG, reg)
        .u32(sys::NFTNL_EXPR_BITWISE_DREG, reg)
        .u32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32)
        .data(sys::NFTNL_EXPR_BITWISE_MASK, mask)
        .data(sys::NFTNL_EXPR_BITWISE_XOR, xor)
}

pub fn imm_data(dreg: u32, data: &[u8]) -> Expr {
    Expr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, dreg)
        .data(sys::NFTNL_EXPR_IMM_DATA, data)
}

/// A verdict: `NFT_JUMP`/`NFT_GOTO` with a chain, `NFT_RETURN`, `NF_DROP`.
pub fn verdict(code: i32, chain: Option<&str>) -> Expr {
    let e = Expr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT)
        .u32(sys::NFTNL_EXPR_IMM_VERDICT, code as u32);
    match chain {
        Some(c) => e.str(sys::NFTNL_EXPR_IMM_CHAIN, c),
        None => e,
    }
}

/// `<key in sreg> vmap @set`: the lookup's result goes to the verdict register.
pub fn lookup_vmap(set: &str, set_id: u32, sreg: u32) -> Expr {
    Expr::new(c"lookup")
        .u32(sys::NFTNL_EXPR_LOOKUP_SREG, sreg)
        .u32(sys::NFTNL_EXPR_LOOKUP_DREG, NFT_REG_VERDICT)
        .str(sys::NFTNL_EXPR_LOOKUP_SET, set)
        .u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, set_id)
}

/// `<key in sreg> @set` (or `!= @set`): the rule goes on only if the key is (not) in the set.
pub fn lookup_in(set: &str, set_id: u32, sreg: u32, negate: bool) -> Expr {
    Expr::new(c"lookup")
        .u32(sys::NFTNL_EXPR_LOOKUP_SREG, sreg)
        .str(sys::NFTNL_EXPR_LOOKUP_SET, set)
        .u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, set_id)
        .u32(
            sys::NFTNL_EXPR_LOOKUP_FLAGS,
            if negate { NFT_LOOKUP_F_INV } else { 0 },
        )
}

/// `numgen random mod <modulus>` into `dreg`.
pub fn numgen_random(modulus: u32, dreg: u32) -> Expr {
    Expr::new(c"numgen")
        .u32(sys::NFTNL_EXPR_NG_DREG, dreg)
        .u32(sys::NFTNL_EXPR_NG_MODULUS, modulus)
        .u32(sys::NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM)
        .u32(sys::NFTNL_EXPR_NG_OFFSET, 0)
}

/// `dnat ip to <addr in addr_reg>:<port in proto_reg>`.
pub fn dnat_v4(addr_reg: u32, proto_reg: u32) -> Expr {
    Expr::new(c"nat")
        .u32(sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT)
        .u32(sys::NFTNL_EXPR_NAT_FAMILY, libc::NFPROTO_IPV4 as u32)
        .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, addr_reg)
        .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, proto_reg)
}

/// `dnat ip6 to <addr in addr_reg>:<port in proto_reg>` (the address is 16 bytes: a whole
/// 16-byte register).
pub fn dnat_v6(addr_reg: u32, proto_reg: u32) -> Expr {
    Expr::new(c"nat")
        .u32(sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT)
        .u32(sys::NFTNL_EXPR_NAT_FAMILY, libc::NFPROTO_IPV6 as u32)
        .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, addr_reg)
        .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, proto_reg)
}

pub fn masquerade_fully_random() -> Expr {
    Expr::new(c"masq").u32(sys::NFTNL_EXPR_MASQ_FLAGS, NAT_RANGE_PROTO_RANDOM_FULLY)
}

/// `reject` as the ip family does it by default: ICMP port unreachable (a TCP client sees
/// "connection refused").
pub fn reject() -> Expr {
    Expr::new(c"reject")
        .u32(sys::NFTNL_EXPR_REJECT_TYPE, NFT_REJECT_ICMP_UNREACH)
        .u8(sys::NFTNL_EXPR_REJECT_CODE, ICMP_PORT_UNREACH)
}

/// `reject` as the ip6 family does it by default: ICMPv6 port unreachable.
pub fn reject_icmpv6_port_unreachable() -> Expr {
    const ICMPV6_PORT_UNREACH: u8 = 4;
    Expr::new(c"reject")
        .u32(sys::NFTNL_EXPR_REJECT_TYPE, NFT_REJECT_ICMP_UNREACH)
        .u8(sys::NFTNL_EXPR_REJECT_CODE, ICMPV6_PORT_UNREACH)
}

/// `ct state new` (the expressions before a verdict).
pub fn ct_state_new() -> Vec<Expr> {
    vec![
        Expr::new(c"ct")
            .u32(sys::NFTNL_EXPR_CT_KEY, NFT_CT_STATE)
            .u32(sys::NFTNL_EXPR_CT_DREG, NFT_REG_1),
        bitwise(NFT_REG_1, &CT_STATE_NEW.to_ne_bytes(), &[0; 4]),
        cmp(NFT_CMP_NEQ, NFT_REG_1, &[0; 4]),
    ]
}

/// `ip saddr|daddr (==|!=) <net>/<prefix>` for an IPv4 network.
pub fn ipv4_in_net(load: Expr, net: ipnetwork::Ipv4Network, op: u32) -> Vec<Expr> {
    vec![
        load,
        bitwise(NFT_REG_1, &net.mask().octets(), &[0; 4]),
        cmp(op, NFT_REG_1, &net.network().octets()),
    ]
}

/// A rule of `exprs` in `chain`.
pub fn rule<'a>(chain: &'a nftnl::Chain<'_>, exprs: &[Expr]) -> Rule<'a> {
    let mut r = Rule::new(chain);
    for e in exprs {
        r.add_expr(e);
    }
    r
}

pub const NF_ACCEPT: i32 = 1;
pub const NFT_CMP_LTE: u32 = 3;
pub const NFT_CMP_GTE: u32 = 5;
/// `ct state` bits (nf_conntrack_common.h: `NF_CT_STATE_BIT`).
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;

/// `ct state & bits != 0`: e.g. `ct state established,related`.
pub fn ct_state_in(bits: u32) -> Vec<Expr> {
    vec![
        Expr::new(c"ct")
            .u32(sys::NFTNL_EXPR_CT_KEY, NFT_CT_STATE)
            .u32(sys::NFTNL_EXPR_CT_DREG, NFT_REG_1),
        bitwise(NFT_REG_1, &bits.to_ne_bytes(), &[0; 4]),
        cmp(NFT_CMP_NEQ, NFT_REG_1, &[0; 4]),
    ]
}
