//! nftables over netlink (libnftnl). Every attachment's rules live in tables of their own, named
//! after the attachment (`<kind>:<network>:<container>:<ifname>`), so DEL removes them by name —
//! also when the network namespace is already gone and no prevResult is given — and GC finds
//! stale ones by listing tables.
//!
//! Beyond nftnl 0.9's typed API: `expr` (expression builders: concatenated keys, verdict maps,
//! numgen, dnat, reject…) and `ffi` (the raw libnftnl calls behind them: `Expr`, `RawSet`, and
//! the one-`sendmsg` batch sender), for node agents' own tables such as a service proxy's.

pub mod expr;
pub mod family;
mod ffi;

use std::ffi::CString;
use std::io;
use std::net::IpAddr;

pub use ffi::{RawSet, SetSpec};
use ipnetwork::IpNetwork;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Immediate, Masquerade, Meta, Nat, NatType, Payload, Register,
};
pub use nftnl::{Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, ProtoFamily, Rule, Table};

use crate::sys::{table_cb, FibDaddrType, RTN_LOCAL};

pub const MASQ: &str = "cni-masq";
pub const HOSTPORT: &str = "cni-hostport";
pub const MACSPOOF: &str = "cni-macspoof";

const FAMILIES: [ProtoFamily; 3] = [ProtoFamily::Ipv4, ProtoFamily::Ipv6, ProtoFamily::Bridge];

pub fn table_name(kind: &str, network: &str, container: &str, ifname: &str) -> io::Result<CString> {
    let n = format!("{kind}:{network}:{container}:{ifname}");
    if n.len() > 255 {
        return Err(io::Error::other(format!(
            "nftables table name too long: {n}"
        )));
    }
    CString::new(n).map_err(io::Error::other)
}

/// Parses a table name made by [`table_name`]: (kind, network, container, ifname).
pub fn parse_table_name(name: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = name.splitn(4, ':');
    Some((it.next()?, it.next()?, it.next()?, it.next()?))
}

fn family_of(ip: IpAddr) -> ProtoFamily {
    if ip.is_ipv4() {
        ProtoFamily::Ipv4
    } else {
        ProtoFamily::Ipv6
    }
}

/// Sends `batch` as one transaction (one datagram, see [`ffi::send_batch`]) and waits for the
/// kernel's answer to every message; the first refusal is the error, naming its message.
/// A one-off: an agent that programs the kernel again and again keeps a [`Session`].
pub fn send(batch: &FinalizedBatch) -> io::Result<()> {
    Session::new()?.send(batch)
}

/// A netfilter netlink socket kept open across transactions, in the network namespace of the
/// thread of its first send (`default()` opens nothing yet). Closing a socket after a transaction that deleted anything waits for
/// the kernel's deferred destruction (an RCU grace period, 10–20 ms here): an agent that keeps
/// its socket pays it never.
#[derive(Default)]
pub struct Session {
    /// `None` after a failed exchange: answers to the failed batch may still be queued on
    /// it, so the next send starts on a new socket.
    socket: Option<ffi::OwnedSocket>,
}

impl Session {
    /// A session with its socket open in the current thread's network namespace.
    pub fn new() -> io::Result<Session> {
        Ok(Session {
            socket: Some(ffi::OwnedSocket::new()?),
        })
    }

    /// As [`send`], on this session's socket.
    pub fn send(&mut self, batch: &FinalizedBatch) -> io::Result<()> {
        let socket = match self.socket.take() {
            Some(s) => s,
            None => ffi::OwnedSocket::new()?,
        };
        exchange(&socket.0, batch)?;
        self.socket = Some(socket);
        Ok(())
    }
}

fn exchange(socket: &mnl::Socket, batch: &FinalizedBatch) -> io::Result<()> {
    let portid = socket.portid();
    ffi::send_batch(socket, batch)?;
    let mut buffer = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
    while !expected.is_empty() {
        for message in socket.recv(&mut buffer[..])? {
            let message = message?;
            let Some(seq) = expected.next() else {
                return Err(io::Error::other("netlink answer to a message never sent"));
            };
            mnl::cb_run(message, seq, portid).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("nftables message {seq} of the batch: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// Queues the deletion of `name` in every family it exists in. (Deleting a table costs a
/// kernel commit of ~10 ms, so tables that are not there are not touched.)
fn delete_existing(batch: &mut Batch, name: &CString, existing: &[(u32, String)]) -> bool {
    let mut any = false;
    for fam in FAMILIES {
        if existing
            .iter()
            .any(|(f, n)| *f == fam as u32 && n.as_bytes() == name.as_bytes())
        {
            batch.add(&Table::new(name, fam), MsgType::Del);
            any = true;
        }
    }
    any
}

fn saddr(ip: IpAddr) -> Payload {
    if ip.is_ipv4() {
        Payload::Network(nftnl::expr::NetworkHeaderField::Ipv4(
            nftnl::expr::Ipv4HeaderField::Saddr,
        ))
    } else {
        Payload::Network(nftnl::expr::NetworkHeaderField::Ipv6(
            nftnl::expr::Ipv6HeaderField::Saddr,
        ))
    }
}

fn daddr(ip: IpAddr) -> Payload {
    if ip.is_ipv4() {
        Payload::Network(nftnl::expr::NetworkHeaderField::Ipv4(
            nftnl::expr::Ipv4HeaderField::Daddr,
        ))
    } else {
        Payload::Network(nftnl::expr::NetworkHeaderField::Ipv6(
            nftnl::expr::Ipv6HeaderField::Daddr,
        ))
    }
}

fn mask_bytes(net: &IpNetwork) -> Vec<u8> {
    match net.mask() {
        IpAddr::V4(m) => m.octets().to_vec(),
        IpAddr::V6(m) => m.octets().to_vec(),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `<payload> & mask ==/!= network`
fn match_net(rule: &mut Rule, payload: Payload, net: &IpNetwork, op: CmpOp) {
    let mask = mask_bytes(net);
    let zero = vec![0u8; mask.len()];
    rule.add_expr(&payload);
    rule.add_expr(&Bitwise::new(&mask[..], &zero[..]));
    let net_bytes = ip_bytes(net.network());
    rule.add_expr(&Cmp::new(op, &net_bytes[..]));
}

/// Masquerades traffic from the attachment's addresses leaving `subnet` (multicast excepted),
/// replacing whatever rules the attachment had.
pub fn add_masquerade(
    network: &str,
    container: &str,
    ifname: &str,
    ips: &[IpNetwork],
) -> io::Result<()> {
    let name = table_name(MASQ, network, container, ifname)?;
    let mut batch = Batch::new();
    delete_existing(&mut batch, &name, &tables()?);
    for fam in [ProtoFamily::Ipv4, ProtoFamily::Ipv6] {
        let mine: Vec<&IpNetwork> = ips.iter().filter(|n| family_of(n.ip()) == fam).collect();
        let table = Table::new(&name, fam);
        if mine.is_empty() {
            continue;
        }
        batch.add(&table, MsgType::Add);
        let mut chain = Chain::new(c"postrouting", &table);
        chain.set_hook(Hook::PostRouting, 100);
        chain.set_type(ChainType::Nat);
        batch.add(&chain, MsgType::Add);
        for net in mine {
            let ip = net.ip();
            let subnet = IpNetwork::new(net.network(), net.prefix()).expect("prefix");
            let mut local = Rule::new(&chain);
            local.add_expr(&saddr(ip));
            local.add_expr(&Cmp::new(CmpOp::Eq, ip));
            match_net(&mut local, daddr(ip), &subnet, CmpOp::Eq);
            local.add_expr(&nftnl::expr::Verdict::Accept);
            batch.add(&local, MsgType::Add);
            let multicast: IpNetwork = if ip.is_ipv4() {
                "224.0.0.0/4".parse().expect("net")
            } else {
                "ff00::/8".parse().expect("net")
            };
            let mut masq = Rule::new(&chain);
            masq.add_expr(&saddr(ip));
            masq.add_expr(&Cmp::new(CmpOp::Eq, ip));
            match_net(&mut masq, daddr(ip), &multicast, CmpOp::Neq);
            masq.add_expr(&Masquerade);
            batch.add(&masq, MsgType::Add);
        }
    }
    send(&batch.finalize())
}

/// Replaces the table `name` with, per IP family of `from` (an `ip` and an `ip6` table), one NAT
/// postrouting chain: traffic from `from` to any of `keep` of its family passes untouched, the
/// rest of it (multicast excepted) is masqueraded. One batch, so the kernel swaps the rules of
/// both families in one step; connections already tracked keep their translation.
/// For a node agent's own rules (not an attachment's).
pub fn replace_masquerade(name: &str, from: &[IpNetwork], keep: &[IpNetwork]) -> io::Result<()> {
    let name = CString::new(name).map_err(io::Error::other)?;
    let mut batch = Batch::new();
    delete_existing(&mut batch, &name, &tables()?);
    for fam in [ProtoFamily::Ipv4, ProtoFamily::Ipv6] {
        let of_fam = |n: &&IpNetwork| family_of(n.ip()) == fam;
        let srcs: Vec<&IpNetwork> = from.iter().filter(of_fam).collect();
        if srcs.is_empty() {
            continue;
        }
        let table = Table::new(&name, fam);
        batch.add(&table, MsgType::Add);
        let mut chain = Chain::new(c"postrouting", &table);
        chain.set_hook(Hook::PostRouting, 100);
        chain.set_type(ChainType::Nat);
        batch.add(&chain, MsgType::Add);
        let multicast: IpNetwork = match fam {
            ProtoFamily::Ipv4 => "224.0.0.0/4",
            _ => "ff00::/8",
        }
        .parse()
        .expect("net");
        for src in srcs {
            for dst in keep.iter().filter(of_fam) {
                let mut r = Rule::new(&chain);
                match_net(&mut r, saddr(src.ip()), src, CmpOp::Eq);
                match_net(&mut r, daddr(dst.ip()), dst, CmpOp::Eq);
                r.add_expr(&nftnl::expr::Verdict::Accept);
                batch.add(&r, MsgType::Add);
            }
            let mut masq = Rule::new(&chain);
            match_net(&mut masq, saddr(src.ip()), src, CmpOp::Eq);
            match_net(&mut masq, daddr(src.ip()), &multicast, CmpOp::Neq);
            masq.add_expr(&Masquerade);
            batch.add(&masq, MsgType::Add);
        }
    }
    send(&batch.finalize())
}

/// Removes the table `name` (every family); returns whether there was one.
pub fn remove_table(name: &str) -> io::Result<bool> {
    let name = CString::new(name).map_err(io::Error::other)?;
    let mut batch = Batch::new();
    if delete_existing(&mut batch, &name, &tables()?) {
        send(&batch.finalize())?;
        return Ok(true);
    }
    Ok(false)
}

/// Drops frames entering the bridge from `host_veth` whose source MAC is not `mac`, so a
/// container cannot impersonate another one.
pub fn add_macspoof(
    network: &str,
    container: &str,
    ifname: &str,
    host_veth: &str,
    mac: [u8; 6],
) -> io::Result<()> {
    let name = table_name(MACSPOOF, network, container, ifname)?;
    let mut batch = Batch::new();
    delete_existing(&mut batch, &name, &tables()?);
    let table = Table::new(&name, ProtoFamily::Bridge);
    batch.add(&table, MsgType::Add);
    let mut chain = Chain::new(c"prerouting", &table);
    chain.set_hook(Hook::PreRouting, -300);
    chain.set_type(ChainType::Filter);
    batch.add(&chain, MsgType::Add);
    let ifn = CString::new(host_veth).map_err(io::Error::other)?;
    let mut r = Rule::new(&chain);
    r.add_expr(&Meta::IifName);
    r.add_expr(&Cmp::new(CmpOp::Eq, ifn.as_c_str()));
    r.add_expr(&Payload::LinkLayer(nftnl::expr::LLHeaderField::Saddr));
    r.add_expr(&Cmp::new(CmpOp::Neq, &mac[..]));
    r.add_expr(&nftnl::expr::Verdict::Drop);
    batch.add(&r, MsgType::Add);
    send(&batch.finalize())
}

/// Removes the attachment's tables of `kind` (every family); nothing there is fine.
pub fn remove(kind: &str, network: &str, container: &str, ifname: &str) -> io::Result<()> {
    let name = table_name(kind, network, container, ifname)?;
    let mut batch = Batch::new();
    if delete_existing(&mut batch, &name, &tables()?) {
        send(&batch.finalize())?;
    }
    Ok(())
}

/// Names of all nftables tables of the current network namespace.
pub fn list_tables() -> io::Result<Vec<String>> {
    let mut names: Vec<String> = tables()?.into_iter().map(|(_, n)| n).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Whether table `name` exists in family `family`.
pub fn table_exists(family: ProtoFamily, name: &str) -> io::Result<bool> {
    Ok(tables()?
        .iter()
        .any(|(f, n)| *f == family as u32 && n == name))
}

/// (family, name) of every table. A dump that a concurrent change interrupts (EINTR) is
/// started again, as nft does.
fn tables() -> io::Result<Vec<(u32, String)>> {
    let mut tries = 0;
    loop {
        match dump_tables() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) && tries < 50 => tries += 1,
            other => return other,
        }
    }
}

fn dump_tables() -> io::Result<Vec<(u32, String)>> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let portid = socket.portid();
    let seq = 1;
    socket.send(&nftnl::table::get_tables_nlmsg(seq))?;
    let mut buffer = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let mut out = Vec::new();
    loop {
        let n = socket.recv(&mut buffer[..])?;
        let mut done = false;
        for message in n {
            match mnl::cb_run2(message?, seq, portid, table_cb, &mut out)? {
                mnl::CbResult::Stop => done = true,
                mnl::CbResult::Ok => {}
            }
        }
        if done {
            break;
        }
    }
    Ok(out)
}

/// One host port forwarded to a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP.
    pub protocol: u8,
    pub host_ip: Option<IpAddr>,
}

fn dport(rule: &mut Rule, proto: u8, port: u16) {
    rule.add_expr(&Meta::L4Proto);
    rule.add_expr(&Cmp::new(CmpOp::Eq, proto));
    // TCP, UDP and SCTP all carry the destination port at bytes 2-3. (nftnl's field names say
    // bits, but the values go to the kernel as the byte offset and length.)
    rule.add_expr(&Payload::Transport(
        nftnl::expr::TransportHeaderField::Raw {
            offset_bits: 2,
            length_bits: 2,
        },
    ));
    rule.add_expr(&Cmp::new(CmpOp::Eq, &port.to_be_bytes()[..]));
}

/// DNATs each mapping's host port to the pod (from other hosts and from this one), and with
/// `snat` masquerades connections from the host's loopback so the pod can answer them.
pub fn add_hostports(
    network: &str,
    container: &str,
    ifname: &str,
    mappings: &[PortMapping],
    pod_ips: &[IpAddr],
    snat: bool,
) -> io::Result<()> {
    let name = table_name(HOSTPORT, network, container, ifname)?;
    let mut batch = Batch::new();
    delete_existing(&mut batch, &name, &tables()?);
    for fam in [ProtoFamily::Ipv4, ProtoFamily::Ipv6] {
        let table = Table::new(&name, fam);
        let Some(pod) = pod_ips.iter().copied().find(|ip| family_of(*ip) == fam) else {
            continue;
        };
        let maps: Vec<&PortMapping> = mappings
            .iter()
            .filter(|m| m.host_ip.is_none_or(|h| family_of(h) == fam))
            .collect();
        if maps.is_empty() {
            continue;
        }
        batch.add(&table, MsgType::Add);
        let mut pre = Chain::new(c"prerouting", &table);
        pre.set_hook(Hook::PreRouting, -100);
        pre.set_type(ChainType::Nat);
        let mut out = Chain::new(c"output", &table);
        out.set_hook(Hook::Out, -100);
        out.set_type(ChainType::Nat);
        let mut post = Chain::new(c"postrouting", &table);
        post.set_hook(Hook::PostRouting, 100);
        post.set_type(ChainType::Nat);
        for c in [&pre, &out, &post] {
            batch.add(c, MsgType::Add);
        }
        for m in &maps {
            for chain in [&pre, &out] {
                let mut r = Rule::new(chain);
                match m.host_ip {
                    Some(h) => {
                        r.add_expr(&daddr(h));
                        r.add_expr(&Cmp::new(CmpOp::Eq, h));
                    }
                    None => {
                        r.add_expr(&FibDaddrType(Register::Reg1));
                        r.add_expr(&Cmp::new(CmpOp::Eq, RTN_LOCAL));
                    }
                }
                dport(&mut r, m.protocol, m.host_port);
                match pod {
                    IpAddr::V4(a) => r.add_expr(&Immediate::new(a.octets(), Register::Reg1)),
                    IpAddr::V6(a) => r.add_expr(&Immediate::new(a.octets(), Register::Reg1)),
                }
                r.add_expr(&Immediate::new(m.container_port.to_be(), Register::Reg2));
                r.add_expr(&Nat {
                    nat_type: NatType::DNat,
                    family: fam,
                    ip_register: Register::Reg1,
                    port_register: Some(Register::Reg2),
                });
                batch.add(&r, MsgType::Add);
            }
            if snat {
                let lo: IpAddr = if pod.is_ipv4() {
                    "127.0.0.1".parse().expect("ip")
                } else {
                    "::1".parse().expect("ip")
                };
                let mut r = Rule::new(&post);
                r.add_expr(&saddr(lo));
                r.add_expr(&Cmp::new(CmpOp::Eq, lo));
                r.add_expr(&daddr(pod));
                r.add_expr(&Cmp::new(CmpOp::Eq, pod));
                dport(&mut r, m.protocol, m.container_port);
                r.add_expr(&Masquerade);
                batch.add(&r, MsgType::Add);
            }
        }
    }
    send(&batch.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_round_trip() {
        let n = table_name(MASQ, "podlet", "abc123", "eth0").unwrap();
        assert_eq!(n.to_str().unwrap(), "cni-masq:podlet:abc123:eth0");
        assert_eq!(
            parse_table_name(n.to_str().unwrap()),
            Some(("cni-masq", "podlet", "abc123", "eth0"))
        );
        assert!(table_name(MASQ, "n", &"c".repeat(300), "eth0").is_err());
    }
}
