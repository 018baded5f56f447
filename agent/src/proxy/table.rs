//! Writes a [`Wanted`] state into the table `ip podlet-proxy` (or `ip6 podlet-proxy`: the same
//! layout over IPv6 addresses, for the scope's family) in kube-proxy's nftables layout, as one
//! netlink batch: the whole table (a full sync) or only the service ports a [`Diff`] names (an
//! incremental one). The chains of one service port are written by `ports.rs`.
//!
//! ```text
//! nat-prerouting, nat-output  → jump services
//! services                    : ip daddr . meta l4proto . th dport vmap @service-ips
//! service-ips                 : <ClusterIP> . tcp . 80 : goto service-<h>-ns/name/tcp/p
//!                               <external or LB IP> . tcp . 80 : goto external-<h>-…
//!                               (internalTrafficPolicy Local: goto local-<h>-…)
//! service-<h>-ns/name/tcp/p   : ip daddr <ClusterIP> ip saddr != <cluster CIDR> jump mark-for-masquerade
//!                               ip saddr @affinity-<h> goto endpoint-…   (ClientIP affinity, per endpoint)
//!                               numgen random mod N vmap @endpoints-<h>
//! local-<h>-ns/name/tcp/p     : the same over this node's endpoints (@local-endpoints-<h>)
//! endpoint-<h>-…__ip/port     : ip saddr <ip> jump mark-for-masquerade (hairpin)
//!                               update @affinity-<h> { ip saddr }       (ClientIP affinity)
//!                               meta l4proto tcp dnat to <ip>:<port>
//! services (node ports)      : fib daddr type local ip daddr != 127.0.0.0/8
//!                               meta l4proto . th dport vmap @service-nodeports
//! service-nodeports           : tcp . 30080 : goto external-<h>-ns/name/tcp/p
//! external-<h>-ns/name/tcp/p  : jump mark-for-masquerade; goto service-<h>-…
//!   (externalTrafficPolicy Local: ip saddr <cluster CIDR> goto service-…;
//!    fib saddr type local jump mark-for-masquerade; fib saddr type local goto service-…;
//!    goto local-<h>-…  — the client's address kept)
//! nat-postrouting             → jump masquerading (mark 0x4000: clear it, masquerade fully-random)
//! filter-{forward,output,input} (ct state new):
//!   service-endpoints-check   : … vmap @no-endpoint-services, … vmap @no-endpoint-nodeports
//!                               (goto reject-chain; drop when a Local policy finds no
//!                               endpoint on this node)
//!   cluster-ips-check         : ip daddr @cluster-ips reject; <cluster DNS> return;
//!                               ip daddr <service CIDR> drop
//! ```

mod ports;

use std::ffi::CString;
use std::net::IpAddr;

use podlet_cni::nft::expr::*;
use podlet_cni::nft::family::{addr_bytes, addr_proto_port_key, Family};
use podlet_cni::nft::{Batch, Chain, ChainType, Hook, MsgType, RawSet, SetSpec, Table};

use super::rules::{self, Diff, Scope, ServicePort, Wanted};

pub const TABLE: &str = "podlet-proxy";
const TABLE_C: &std::ffi::CStr = c"podlet-proxy";
const SERVICE_IPS: &str = "service-ips";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const CLUSTER_IPS: &str = "cluster-ips";
const SERVICES: &str = "services";
const MARK_FOR_MASQ: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";
const REJECT_CHAIN: &str = "reject-chain";
const ENDPOINTS_CHECK: &str = "service-endpoints-check";
/// A set or map element: its key, and for a verdict map the verdict (code, chain).
type Elem = (Vec<u8>, Option<(i32, Option<String>)>);
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
const MASQ_MARK: u32 = 0x4000;
/// Elements per NEWSETELEM message (~80 bytes each: well under the 64 KiB message limit).
const ELEMS_PER_MSG: usize = 256;

fn cs(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// One batch being built, with the batch-local ids of the sets it creates.
pub struct Writer {
    pub batch: Batch,
    table: Table,
    family: Family,
    next_id: u32,
    /// The batch-local ids of the sets this batch makes, by name (0: an existing set).
    ids: std::collections::HashMap<String, u32>,
}

impl Writer {
    pub fn new(family: Family) -> Self {
        Writer {
            batch: Batch::new(),
            table: Table::new(TABLE_C, family.table()),
            family,
            next_id: 0,
            ids: Default::default(),
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    fn chain(&mut self, name: &str, exprs: &[&[Expr]]) {
        let c = Chain::new(cs(name), &self.table);
        self.batch.add(&c, MsgType::Add);
        for e in exprs {
            self.batch.add(&rule(&c, e), MsgType::Add);
        }
    }

    fn base_chain(&mut self, name: &str, ty: ChainType, hook: Hook, prio: i32, rules: &[&[Expr]]) {
        let mut c = Chain::new(cs(name), &self.table);
        c.set_type(ty);
        c.set_hook(hook, prio);
        self.batch.add(&c, MsgType::Add);
        for e in rules {
            self.batch.add(&rule(&c, e), MsgType::Add);
        }
    }

    fn set(&mut self, name: &str, spec: &SetSpec) -> u32 {
        let id = self.id();
        let s = RawSet::new(TABLE_C, self.family.table(), name, id).with_spec(spec);
        self.batch.add(&s.as_set(), MsgType::Add);
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The id a rule names set `name` by: its batch-local id if this batch makes it.
    fn id_of(&self, name: &str) -> u32 {
        self.ids.get(name).copied().unwrap_or(0)
    }

    /// `elems` into (Add) or out of (Del) set `name`, in messages of at most ELEMS_PER_MSG.
    fn elems(&mut self, name: &str, elems: &[Elem], op: MsgType) {
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            let mut s = RawSet::new(TABLE_C, self.family.table(), name, 0);
            for (key, v) in chunk {
                let v = match op {
                    MsgType::Add => v.as_ref().map(|(c, ch)| (*c, ch.as_deref())),
                    MsgType::Del => None,
                };
                s.add(key, v);
            }
            self.batch.add(&s.as_elems(), op);
        }
    }

    /// The whole table, replacing what is there in the same transaction (`add; delete; add`
    /// works whether or not it exists). Conntrack keeps established flows' translations.
    pub fn full(&mut self, want: &Wanted, scope: &Scope) {
        self.batch.add(&self.table, MsgType::Add);
        self.batch.add(&self.table, MsgType::Del);
        self.skeleton(scope);
        for (name, p) in &want.ports {
            self.add_port(name, p, scope);
        }
        self.port_elems(want.ports.iter(), MsgType::Add);
        let ips: Vec<_> = want.cluster_ips().into_iter().map(ip_elem).collect();
        self.elems(CLUSTER_IPS, &ips, MsgType::Add);
    }

    /// Only what `d` names, from `old` to `new`.
    pub fn incremental(&mut self, old: &Wanted, new: &Wanted, d: &Diff, scope: &Scope) {
        let removed: Vec<(&String, &ServicePort)> = d
            .removed
            .iter()
            .filter_map(|k| old.ports.get_key_value(k))
            .collect();
        self.port_elems(removed.iter().copied(), MsgType::Del);
        for (name, p) in &removed {
            self.remove_port(name, p);
        }
        for name in &d.endpoints_changed {
            if let (Some(o), Some(n)) = (old.ports.get(name), new.ports.get(name)) {
                self.replace_endpoints(name, o, n, scope);
            }
        }
        let added: Vec<(&String, &ServicePort)> = d
            .added
            .iter()
            .filter_map(|k| new.ports.get_key_value(k))
            .collect();
        for (name, p) in &added {
            self.add_port(name, p, scope);
        }
        self.port_elems(added.iter().copied(), MsgType::Add);
        let (was, is) = (old.cluster_ips(), new.cluster_ips());
        let gone: Vec<_> = was.difference(&is).copied().map(ip_elem).collect();
        let came: Vec<_> = is.difference(&was).copied().map(ip_elem).collect();
        self.elems(CLUSTER_IPS, &gone, MsgType::Del);
        self.elems(CLUSTER_IPS, &came, MsgType::Add);
    }

    /// Table, sets and maps, and the chains every service shares.
    fn skeleton(&mut self, scope: &Scope) {
        self.batch.add(&self.table, MsgType::Add);
        let fam = self.family;
        let (key_type, key_len, proto_reg, port_reg) = fam.addr_proto_port();
        let vmap = SetSpec {
            key_type,
            key_len,
            flags: NFT_SET_MAP,
            data_type: Some(NFT_DATA_VERDICT),
            udata: None,
        };
        let svc_ips = self.set(SERVICE_IPS, &vmap);
        let no_eps = self.set(NO_ENDPOINT_SERVICES, &vmap);
        let ports_vmap = SetSpec {
            key_type: PROTO_PORT_TYPE,
            key_len: PROTO_PORT_LEN,
            flags: NFT_SET_MAP,
            data_type: Some(NFT_DATA_VERDICT),
            udata: None,
        };
        let node_ports = self.set(SERVICE_NODEPORTS, &ports_vmap);
        let no_eps_node_ports = self.set(NO_ENDPOINT_NODEPORTS, &ports_vmap);
        let ips = SetSpec {
            key_type: fam.addr_type(),
            key_len: fam.addr_len(),
            flags: 0,
            data_type: None,
            udata: None,
        };
        let cluster_ips = self.set(CLUSTER_IPS, &ips);

        let lookup = |set: &str, id: u32| {
            vec![
                fam.daddr(NFT_REG32_00),
                meta_load(NFT_META_L4PROTO, proto_reg),
                th_dport(port_reg),
                lookup_vmap(set, id, NFT_REG32_00),
            ]
        };
        // Node ports: on the node's own addresses (not loopback, as kube-proxy), by protocol
        // and port.
        let by_port = |set: &str, id: u32| {
            let mut e = vec![
                fib_daddr_type(NFT_REG_1),
                cmp(NFT_CMP_EQ, NFT_REG_1, &RTN_LOCAL.to_ne_bytes()),
            ];
            e.extend(fam.in_net(fam.daddr(NFT_REG_1), fam.loopback(), NFT_CMP_NEQ));
            e.extend([
                meta_load(NFT_META_L4PROTO, NFT_REG32_00),
                th_dport(NFT_REG32_01),
                lookup_vmap(set, id, NFT_REG32_00),
            ]);
            e
        };
        self.chain(
            SERVICES,
            &[
                &lookup(SERVICE_IPS, svc_ips),
                &by_port(SERVICE_NODEPORTS, node_ports),
            ],
        );
        self.chain(
            ENDPOINTS_CHECK,
            &[
                &lookup(NO_ENDPOINT_SERVICES, no_eps),
                &by_port(NO_ENDPOINT_NODEPORTS, no_eps_node_ports),
            ],
        );
        self.chain(REJECT_CHAIN, &[&[fam.reject()]]);
        let mark_or = [
            meta_load(NFT_META_MARK, NFT_REG_1),
            bitwise(
                NFT_REG_1,
                &(!MASQ_MARK).to_ne_bytes(),
                &MASQ_MARK.to_ne_bytes(),
            ),
            meta_set(NFT_META_MARK, NFT_REG_1),
        ];
        self.chain(MARK_FOR_MASQ, &[&mark_or]);
        let unmarked_return = [
            meta_load(NFT_META_MARK, NFT_REG_1),
            bitwise(NFT_REG_1, &MASQ_MARK.to_ne_bytes(), &[0; 4]),
            cmp(NFT_CMP_EQ, NFT_REG_1, &[0; 4]),
            verdict(NFT_RETURN, None),
        ];
        let clear_mark = [
            meta_load(NFT_META_MARK, NFT_REG_1),
            bitwise(NFT_REG_1, &u32::MAX.to_ne_bytes(), &MASQ_MARK.to_ne_bytes()),
            meta_set(NFT_META_MARK, NFT_REG_1),
        ];
        self.chain(
            MASQUERADING,
            &[&unmarked_return, &clear_mark, &[masquerade_fully_random()]],
        );

        // Wrong ports of a ClusterIP are rejected, unallocated ClusterIPs dropped — except the
        // cluster DNS addresses, which the agent answers on itself.
        let mut check: Vec<Vec<Expr>> = vec![vec![
            fam.daddr(NFT_REG_1),
            lookup_in(CLUSTER_IPS, cluster_ips, NFT_REG_1, false),
            fam.reject(),
        ]];
        for ip in scope.local_dns.iter().filter(|ip| fam.has(**ip)) {
            check.push(vec![
                fam.daddr(NFT_REG_1),
                cmp(NFT_CMP_EQ, NFT_REG_1, &addr_bytes(*ip)),
                verdict(NFT_RETURN, None),
            ]);
        }
        let mut drop = fam.in_net(fam.daddr(NFT_REG_1), scope.service_cidr, NFT_CMP_EQ);
        drop.push(verdict(NF_DROP, None));
        check.push(drop);
        let check: Vec<&[Expr]> = check.iter().map(Vec::as_slice).collect();
        self.chain(CLUSTER_IPS_CHECK, &check);

        let jump = |c: &str| [verdict(NFT_JUMP, Some(c))];
        self.base_chain(
            "nat-prerouting",
            ChainType::Nat,
            Hook::PreRouting,
            -100,
            &[&jump(SERVICES)],
        );
        self.base_chain(
            "nat-output",
            ChainType::Nat,
            Hook::Out,
            -100,
            &[&jump(SERVICES)],
        );
        self.base_chain(
            "nat-postrouting",
            ChainType::Nat,
            Hook::PostRouting,
            100,
            &[&jump(MASQUERADING)],
        );
        let when_new = |c: &str| {
            let mut e = ct_state_new();
            e.push(verdict(NFT_JUMP, Some(c)));
            e
        };
        let (eps, ips) = (when_new(ENDPOINTS_CHECK), when_new(CLUSTER_IPS_CHECK));
        self.base_chain(
            "filter-forward",
            ChainType::Filter,
            Hook::Forward,
            0,
            &[&eps, &ips],
        );
        self.base_chain(
            "filter-output",
            ChainType::Filter,
            Hook::Out,
            0,
            &[&eps, &ips],
        );
        self.base_chain("filter-input", ChainType::Filter, Hook::In, 0, &[&eps]);
    }

    /// Each port's ClusterIP, external addresses and node port: to its chains in
    /// `service-ips`/`service-nodeports`; without any endpoint to the reject chain, and with
    /// none for its traffic policy (Local, none on this node) to a drop, in the
    /// `no-endpoint-…` maps.
    fn port_elems<'a>(
        &mut self,
        ports: impl IntoIterator<Item = (&'a String, &'a ServicePort)>,
        op: MsgType,
    ) {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut np_with, mut np_without) = (Vec::new(), Vec::new());
        for (name, p) in ports {
            let key = addr_proto_port_key(p.cluster_ip, p.proto, p.port);
            let np = p.node_port.map(|n| proto_port_key(p.proto, n).to_vec());
            let ext: Vec<Vec<u8>> = p
                .external_ips
                .iter()
                .map(|ip| addr_proto_port_key(*ip, p.proto, p.port))
                .collect();
            let filtered = match p.no_endpoints() {
                true => (NFT_GOTO, Some(REJECT_CHAIN.to_string())),
                false => (NF_DROP, None),
            };
            match p.internal_chain(name) {
                Some(c) => with.push((key, Some((NFT_GOTO, Some(c))))),
                None => without.push((key, Some(filtered.clone()))),
            }
            // As kube-proxy: external addresses go to the external chain when there is any
            // endpoint, and to the no-endpoint maps when there is none for external
            // traffic; with both, what the external chain did not translate is dropped.
            if p.has_external_chain() {
                let external = || Some((NFT_GOTO, Some(rules::external_chain(name))));
                with.extend(ext.iter().map(|k| (k.clone(), external())));
                np_with.extend(np.iter().map(|k| (k.clone(), external())));
            }
            if !p.has_external_endpoints() {
                without.extend(ext.into_iter().map(|k| (k, Some(filtered.clone()))));
                np_without.extend(np.map(|k| (k, Some(filtered.clone()))));
            }
        }
        self.elems(SERVICE_IPS, &with, op);
        self.elems(NO_ENDPOINT_SERVICES, &without, op);
        self.elems(SERVICE_NODEPORTS, &np_with, op);
        self.elems(NO_ENDPOINT_NODEPORTS, &np_without, op);
    }
}

fn nftnl_rule<'a>(c: &'a Chain<'_>) -> podlet_cni::nft::Rule<'a> {
    podlet_cni::nft::Rule::new(c)
}

fn ip_elem(ip: IpAddr) -> Elem {
    (addr_bytes(ip), None)
}
