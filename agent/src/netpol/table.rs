//! Writes a [`Wanted`] state into the table `ip podlet-netpol` (and, where pods have IPv6
//! addresses, `ip6 podlet-netpol`: the same layout, with the sets' IPv6 elements and the IPv6
//! ipBlocks) as one netlink batch per table: the whole table (a full sync: a new layout, in the
//! same transaction that deletes the old one) or only set elements (an incremental one: pods
//! came, went or were relabelled). Each table takes the elements of its family only.
//!
//! ```text
//! forward-egress  (filter forward -1): ct state established,related accept
//!                                      ip saddr @pending drop
//!                                      ip saddr @egress-isolated jump egress
//! forward-ingress (filter forward 0):  ct state established,related accept
//!                                      ip daddr @pending drop
//!                                      ip daddr @ingress-isolated jump ingress
//! input-egress    (filter input 0):    the same for a pod's traffic to this node, but DNS to
//!                                      the cluster DNS address (the agent's) accepted
//! ingress : ip daddr @in-targets:<ns>/<name> jump in:<ns>/<name>   (per policy)  …  drop
//! in:<ns>/<name>      : <port match> jump in:<ns>/<name>:<i>       (per rule and port)
//! in:<ns>/<name>:<i>  : ip saddr @in-peers:<ns>/<name>:<i> accept  (pod and namespace peers)
//!                       jump in:<ns>/<name>:<i>:b<j>                (per ipBlock)
//! in:…:<i>:b<j>       : ip saddr <except> return; ip saddr <cidr> accept
//! egress, eg:…        : the same with saddr and daddr swapped
//! port matches        : meta l4proto tcp th dport 80 | th dport >= 8000 th dport <= 9000 |
//!                       ip daddr . meta l4proto . th dport @in-port:<ns>/<name>:<i>:<k>
//! ```
//!
//! An accept ends one base chain only: a packet between two pods of this node passes the
//! egress chain of its source and then the ingress chain of its destination. In `ip6`,
//! neighbour discovery (ICMPv6 133–136) is accepted first: without it no IPv6 packet reaches
//! an isolated pod at all, and no policy can name it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::IpAddr;

use podlet_cni::nft::expr::*;
use podlet_cni::nft::family::{addr_bytes, addr_proto_port_key, Family};
use podlet_cni::nft::{Batch, Chain, ChainType, Hook, MsgType, RawSet, SetSpec, Table};

use super::rules::{
    Changes, Dir, Elem, Net, Policy, PortMatch, Wanted, EGRESS_ISOLATED, INGRESS_ISOLATED, PENDING,
    TCP, UDP,
};

pub const TABLE: &str = "podlet-netpol";
const TABLE_C: &std::ffi::CStr = c"podlet-netpol";
/// Elements per NEWSETELEM message (well under the 64 KiB message limit).
const ELEMS_PER_MSG: usize = 256;

fn cs(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Whether a set holds `daddr . proto . dport` keys (named ports) rather than addresses.
pub fn is_port_set(name: &str) -> bool {
    name.starts_with("in-port:") || name.starts_with("eg-port:")
}

fn key(e: &Elem) -> Vec<u8> {
    match e {
        Elem::Addr(a) => addr_bytes(*a),
        Elem::AddrPort(a, p, n) => addr_proto_port_key(*a, *p, *n),
    }
}

fn family_of(e: &Elem) -> Family {
    match e {
        Elem::Addr(a) | Elem::AddrPort(a, _, _) => Family::of(*a),
    }
}

/// One batch being built for one family's table, with the batch-local ids of the sets it
/// creates.
pub struct Writer {
    pub batch: Batch,
    table: Table,
    family: Family,
    ids: BTreeMap<String, u32>,
    /// Messages added: an incremental sync with nothing for this family sends nothing.
    pub messages: usize,
}

impl Writer {
    pub fn new(family: Family) -> Writer {
        Writer {
            batch: Batch::new(),
            table: Table::new(TABLE_C, family.table()),
            family,
            ids: BTreeMap::new(),
            messages: 0,
        }
    }

    fn chain(&mut self, name: &str) {
        let c = Chain::new(cs(name), &self.table);
        self.batch.add(&c, MsgType::Add);
    }

    fn rules(&mut self, chain: &str, rules: &[Vec<Expr>]) {
        let c = Chain::new(cs(chain), &self.table);
        for r in rules {
            self.batch.add(&rule(&c, r), MsgType::Add);
        }
    }

    fn base_chain(&mut self, name: &str, hook: Hook, prio: i32, rules: &[Vec<Expr>]) {
        let mut c = Chain::new(cs(name), &self.table);
        c.set_type(ChainType::Filter);
        c.set_hook(hook, prio);
        self.batch.add(&c, MsgType::Add);
        for r in rules {
            self.batch.add(&rule(&c, r), MsgType::Add);
        }
    }

    fn set(&mut self, name: &str) {
        let id = self.ids.len() as u32 + 1;
        let fam = self.family;
        let (key_type, key_len) = if is_port_set(name) {
            let (t, l, _, _) = fam.addr_proto_port();
            (t, l)
        } else {
            (fam.addr_type(), fam.addr_len())
        };
        let spec = SetSpec {
            key_type,
            key_len,
            flags: 0,
            data_type: None,
            udata: None,
        };
        let s = RawSet::new(TABLE_C, fam.table(), name, id).with_spec(&spec);
        self.batch.add(&s.as_set(), MsgType::Add);
        self.ids.insert(name.to_string(), id);
    }

    /// `<reg> @set`, by the id it has in this batch.
    fn lookup(&self, set: &str, reg: u32) -> Expr {
        lookup_in(set, self.ids.get(set).copied().unwrap_or(0), reg, false)
    }

    /// `elems` of this table's family into (Add) or out of (Del) set `name`.
    pub fn elems<'a>(
        &mut self,
        name: &str,
        elems: impl IntoIterator<Item = &'a Elem>,
        op: MsgType,
    ) {
        let fam = self.family;
        let all: Vec<&Elem> = elems.into_iter().filter(|e| family_of(e) == fam).collect();
        for chunk in all.chunks(ELEMS_PER_MSG) {
            let mut s = RawSet::new(TABLE_C, fam.table(), name, 0);
            for e in chunk {
                s.add(&key(e), None);
            }
            self.batch.add(&s.as_elems(), op);
            self.messages += 1;
        }
    }

    /// The whole table, replacing what is there in the same transaction (`add; delete; add`
    /// works whether or not it exists): no moment without rules.
    pub fn full(&mut self, want: &Wanted, dns: &[IpAddr]) {
        let fam = self.family;
        self.messages += 1;
        self.batch.add(&self.table, MsgType::Add);
        self.batch.add(&self.table, MsgType::Del);
        self.batch.add(&self.table, MsgType::Add);
        for name in want.sets.keys() {
            self.set(name);
        }
        // Every chain first: rules jump to chains made earlier in the batch.
        for c in ["ingress", "egress"] {
            self.chain(c);
        }
        for p in &want.policies {
            self.chain(&p.chain);
            for r in &p.rules {
                self.chain(&r.chain);
                for b in &r.blocks {
                    self.chain(&b.chain);
                }
            }
        }
        let accept_est = || {
            let mut e = ct_state_in(CT_STATE_ESTABLISHED | CT_STATE_RELATED);
            e.push(verdict(NF_ACCEPT, None));
            e
        };
        let pending = |load: Expr, w: &Writer| {
            vec![load, w.lookup(PENDING, NFT_REG_1), verdict(NF_DROP, None)]
        };
        let isolated = |load: Expr, set: &str, chain: &str, w: &Writer| {
            vec![
                load,
                w.lookup(set, NFT_REG_1),
                verdict(NFT_JUMP, Some(chain)),
            ]
        };
        let first = || {
            let mut f = vec![accept_est()];
            if fam == Family::V6 {
                f.push(neighbour_discovery());
            }
            f
        };
        let mut fwd_eg = first();
        fwd_eg.extend([
            pending(fam.saddr(NFT_REG_1), self),
            isolated(fam.saddr(NFT_REG_1), EGRESS_ISOLATED, "egress", self),
        ]);
        let mut fwd_in = first();
        fwd_in.extend([
            pending(fam.daddr(NFT_REG_1), self),
            isolated(fam.daddr(NFT_REG_1), INGRESS_ISOLATED, "ingress", self),
        ]);
        let mut in_eg = first();
        in_eg.push(pending(fam.saddr(NFT_REG_1), self));
        // The cluster DNS server is the agent itself, on this node: no pod selector could
        // name it, so a pod's DNS queries to it pass (as the node's own traffic would).
        for a in dns.iter().filter(|a| fam.has(**a)) {
            for proto in [UDP, TCP] {
                in_eg.push(vec![
                    fam.daddr(NFT_REG_1),
                    cmp(NFT_CMP_EQ, NFT_REG_1, &addr_bytes(*a)),
                    meta_load(NFT_META_L4PROTO, NFT_REG_1),
                    cmp(NFT_CMP_EQ, NFT_REG_1, &[proto]),
                    th_dport(NFT_REG_1),
                    cmp(NFT_CMP_EQ, NFT_REG_1, &53u16.to_be_bytes()),
                    verdict(NF_ACCEPT, None),
                ]);
            }
        }
        in_eg.push(isolated(
            fam.saddr(NFT_REG_1),
            EGRESS_ISOLATED,
            "egress",
            self,
        ));
        self.base_chain("forward-egress", Hook::Forward, -1, &fwd_eg);
        self.base_chain("forward-ingress", Hook::Forward, 0, &fwd_in);
        self.base_chain("input-egress", Hook::In, 0, &in_eg);

        for dir in [Dir::Ingress, Dir::Egress] {
            let mine: Vec<&Policy> = want.policies.iter().filter(|p| p.dir == dir).collect();
            let (chain, own) = match dir {
                Dir::Ingress => ("ingress", fam.daddr(NFT_REG_1)),
                Dir::Egress => ("egress", fam.saddr(NFT_REG_1)),
            };
            let mut dispatch: Vec<Vec<Expr>> = mine
                .iter()
                .filter(|p| !p.rules.is_empty())
                .map(|p| {
                    vec![
                        own.clone(),
                        self.lookup(&p.targets, NFT_REG_1),
                        verdict(NFT_JUMP, Some(&p.chain)),
                    ]
                })
                .collect();
            dispatch.push(vec![verdict(NF_DROP, None)]);
            self.rules(chain, &dispatch);
            for p in mine {
                self.policy(p);
            }
        }
        for (name, elems) in &want.sets {
            self.elems(name, elems, MsgType::Add);
        }
    }

    fn policy(&mut self, p: &Policy) {
        let fam = self.family;
        // The peer is the source of ingress, the destination of egress.
        let peer = |reg| match p.dir {
            Dir::Ingress => fam.saddr(reg),
            Dir::Egress => fam.daddr(reg),
        };
        let mut by_port = Vec::new();
        for r in &p.rules {
            for m in &r.ports {
                let mut e = self.port_match(m);
                e.push(verdict(NFT_JUMP, Some(&r.chain)));
                by_port.push(e);
            }
        }
        self.rules(&p.chain, &by_port);
        for r in &p.rules {
            let mut peers = Vec::new();
            if r.all_peers {
                peers.push(vec![verdict(NF_ACCEPT, None)]);
            }
            if let Some(set) = &r.peers {
                peers.push(vec![
                    peer(NFT_REG_1),
                    self.lookup(set, NFT_REG_1),
                    verdict(NF_ACCEPT, None),
                ]);
            }
            for b in &r.blocks {
                peers.push(vec![verdict(NFT_JUMP, Some(&b.chain))]);
                // A block of the other family stays empty here: it matches nothing.
                if !fam.has(b.cidr.0) {
                    continue;
                }
                let mut block: Vec<Vec<Expr>> = b
                    .except
                    .iter()
                    .map(|x| in_net(fam, peer(NFT_REG_1), *x, verdict(NFT_RETURN, None)))
                    .collect();
                block.push(in_net(
                    fam,
                    peer(NFT_REG_1),
                    b.cidr,
                    verdict(NF_ACCEPT, None),
                ));
                self.rules(&b.chain, &block);
            }
            self.rules(&r.chain, &peers);
        }
    }

    fn port_match(&self, m: &PortMatch) -> Vec<Expr> {
        let proto = |p: u8| {
            vec![
                meta_load(NFT_META_L4PROTO, NFT_REG_1),
                cmp(NFT_CMP_EQ, NFT_REG_1, &[p]),
            ]
        };
        match m {
            PortMatch::All => Vec::new(),
            PortMatch::Proto(p) => proto(*p),
            PortMatch::Port(p, n) => {
                let mut e = proto(*p);
                e.push(th_dport(NFT_REG_1));
                e.push(cmp(NFT_CMP_EQ, NFT_REG_1, &n.to_be_bytes()));
                e
            }
            PortMatch::Range(p, lo, hi) => {
                // Big-endian ports compare as numbers (cmp is a memcmp).
                let mut e = proto(*p);
                e.push(th_dport(NFT_REG_1));
                e.push(cmp(NFT_CMP_GTE, NFT_REG_1, &lo.to_be_bytes()));
                e.push(cmp(NFT_CMP_LTE, NFT_REG_1, &hi.to_be_bytes()));
                e
            }
            PortMatch::Named(set) => {
                let (_, _, proto_reg, port_reg) = self.family.addr_proto_port();
                vec![
                    self.family.daddr(NFT_REG32_00),
                    meta_load(NFT_META_L4PROTO, proto_reg),
                    th_dport(port_reg),
                    self.lookup(set, NFT_REG32_00),
                ]
            }
        }
    }

    /// Only set elements, from `old` to `new` (same layout): gone ones out, new ones in.
    pub fn incremental(&mut self, changes: &Changes) {
        for (name, (gone, _)) in changes {
            self.elems(name, gone, MsgType::Del);
        }
        for (name, (_, came)) in changes {
            self.elems(name, came, MsgType::Add);
        }
    }

    /// Adds addresses to the `pending` set of a table that is there.
    pub fn add_pending(&mut self, ips: &BTreeSet<IpAddr>) {
        let elems: Vec<Elem> = ips.iter().map(|a| Elem::Addr(*a)).collect();
        self.elems(PENDING, &elems, MsgType::Add);
    }
}

/// `<addr> & mask == net <verdict>`.
fn in_net(fam: Family, load: Expr, (addr, len): Net, then: Expr) -> Vec<Expr> {
    let net = ipnetwork::IpNetwork::new(addr, len).expect("a prefix length the parser checked");
    let mut e = fam.in_net(load, net, NFT_CMP_EQ);
    e.push(then);
    e
}

/// `meta l4proto ipv6-icmp icmpv6 type 133-136 accept`: router and neighbour solicitations
/// and advertisements.
fn neighbour_discovery() -> Vec<Expr> {
    const IPPROTO_ICMPV6: u8 = 58;
    vec![
        meta_load(NFT_META_L4PROTO, NFT_REG_1),
        cmp(NFT_CMP_EQ, NFT_REG_1, &[IPPROTO_ICMPV6]),
        transport_payload(0, 1, NFT_REG_1),
        cmp(NFT_CMP_GTE, NFT_REG_1, &[133]),
        cmp(NFT_CMP_LTE, NFT_REG_1, &[136]),
        verdict(NF_ACCEPT, None),
    ]
}
