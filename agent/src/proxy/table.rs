//! Writes a [`Wanted`] state into the table `ip podlet-proxy` in kube-proxy's nftables layout,
//! as one netlink batch: the whole table (a full sync) or only the service ports a [`Diff`]
//! names (an incremental one).
//!
//! ```text
//! nat-prerouting, nat-output  → jump services
//! services                    : ip daddr . meta l4proto . th dport vmap @service-ips
//! service-ips                 : <ClusterIP> . tcp . 80 : goto service-<h>-ns/name/tcp/p
//!                               <external or LB IP> . tcp . 80 : goto external-<h>-…
//! service-<h>-ns/name/tcp/p   : ip daddr <ClusterIP> ip saddr != <cluster CIDR> jump mark-for-masquerade
//!                               numgen random mod N vmap @endpoints-<h>
//! endpoint-<h>-…__ip/port     : ip saddr <ip> jump mark-for-masquerade (hairpin)
//!                               meta l4proto tcp dnat to <ip>:<port>
//! services (node ports)      : fib daddr type local ip daddr != 127.0.0.0/8
//!                               meta l4proto . th dport vmap @service-nodeports
//! service-nodeports           : tcp . 30080 : goto external-<h>-ns/name/tcp/p
//! external-<h>-ns/name/tcp/p  : jump mark-for-masquerade; goto service-<h>-…
//! nat-postrouting             → jump masquerading (mark 0x4000: clear it, masquerade fully-random)
//! filter-{forward,output,input} (ct state new):
//!   service-endpoints-check   : … vmap @no-endpoint-services, … vmap @no-endpoint-nodeports
//!                               (goto reject-chain)
//!   cluster-ips-check         : ip daddr @cluster-ips reject; <cluster DNS> return;
//!                               ip daddr <service CIDR> drop
//! ```

use std::collections::BTreeSet;
use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};

use podlet_cni::nft::expr::*;
use podlet_cni::nft::{
    Batch, Chain, ChainType, Hook, MsgType, ProtoFamily, RawSet, SetSpec, Table,
};

use super::rules::{self, Diff, Scope, ServicePort, Wanted};

pub const TABLE: &str = "podlet-proxy";
const TABLE_C: &std::ffi::CStr = c"podlet-proxy";
const FAMILY: ProtoFamily = ProtoFamily::Ipv4;
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
    next_id: u32,
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            batch: Batch::new(),
            table: Table::new(TABLE_C, FAMILY),
            next_id: 0,
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
        let s = RawSet::new(TABLE_C, FAMILY, name, id).with_spec(spec);
        self.batch.add(&s.as_set(), MsgType::Add);
        id
    }

    /// `elems` into (Add) or out of (Del) set `name`, in messages of at most ELEMS_PER_MSG.
    fn elems(&mut self, name: &str, elems: &[Elem], op: MsgType) {
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            let mut s = RawSet::new(TABLE_C, FAMILY, name, 0);
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
        let vmap = SetSpec {
            key_type: IPV4_PROTO_PORT_TYPE,
            key_len: IPV4_PROTO_PORT_LEN,
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
            key_type: TYPE_IPADDR,
            key_len: 4,
            flags: 0,
            data_type: None,
            udata: None,
        };
        let cluster_ips = self.set(CLUSTER_IPS, &ips);

        let lookup = |set: &str, id: u32| {
            vec![
                ip_daddr(NFT_REG32_00),
                meta_load(NFT_META_L4PROTO, NFT_REG32_01),
                th_dport(NFT_REG32_02),
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
            let lo = "127.0.0.0/8".parse().expect("constant network");
            e.extend(ipv4_in_net(ip_daddr(NFT_REG_1), lo, NFT_CMP_NEQ));
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
        self.chain(REJECT_CHAIN, &[&[reject()]]);
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
            ip_daddr(NFT_REG_1),
            lookup_in(CLUSTER_IPS, cluster_ips, NFT_REG_1, false),
            reject(),
        ]];
        for ip in &scope.local_dns {
            if let IpAddr::V4(a) = ip {
                check.push(vec![
                    ip_daddr(NFT_REG_1),
                    cmp(NFT_CMP_EQ, NFT_REG_1, &a.octets()),
                    verdict(NFT_RETURN, None),
                ]);
            }
        }
        let mut drop = ipv4_in_net(ip_daddr(NFT_REG_1), scope.service_cidr, NFT_CMP_EQ);
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

    /// A port's chains and endpoint map (its `service-ips` element: [`Writer::port_elems`]).
    fn add_port(&mut self, name: &str, p: &ServicePort, scope: &Scope) {
        if p.endpoints.is_empty() {
            return;
        }
        for ep in &p.endpoints {
            self.endpoint_chain(name, p, *ep);
        }
        let map = rules::endpoints_map(name);
        let id = self.set(&map, &numgen_map_spec());
        self.elems(&map, &numgen_elems(name, &p.endpoints), MsgType::Add);
        let c = rules::service_chain(name);
        let rules = service_rules(p, &map, id, scope);
        let rules: Vec<&[Expr]> = rules.iter().map(Vec::as_slice).collect();
        self.chain(&c, &rules);
        if p.external() {
            // externalTrafficPolicy Cluster: node port traffic is masqueraded (the endpoint
            // may be on another node, whose reply must come back here).
            self.chain(
                &rules::external_chain(name),
                &[
                    &[verdict(NFT_JUMP, Some(MARK_FOR_MASQ))],
                    &[verdict(NFT_GOTO, Some(&c))],
                ],
            );
        }
    }

    fn endpoint_chain(&mut self, name: &str, p: &ServicePort, ep: (Ipv4Addr, u16)) {
        let hairpin = [
            ip_saddr(NFT_REG_1),
            cmp(NFT_CMP_EQ, NFT_REG_1, &ep.0.octets()),
            verdict(NFT_JUMP, Some(MARK_FOR_MASQ)),
        ];
        let dnat = [
            meta_load(NFT_META_L4PROTO, NFT_REG_1),
            cmp(NFT_CMP_EQ, NFT_REG_1, &[p.proto]),
            imm_data(NFT_REG_1, &ep.0.octets()),
            imm_data(NFT_REG_2, &ep.1.to_be_bytes()),
            dnat_v4(NFT_REG_1, NFT_REG_2),
        ];
        self.chain(&rules::endpoint_chain(name, ep), &[&hairpin, &dnat]);
    }

    /// Its map elements go first, then the rules that reach its chains, then the chains.
    fn remove_port(&mut self, name: &str, p: &ServicePort) {
        if p.endpoints.is_empty() {
            return;
        }
        let c = Chain::new(cs(&rules::service_chain(name)), &self.table);
        // A DELRULE without a handle flushes the chain (releasing the endpoint map).
        self.batch.add(&nftnl_rule(&c), MsgType::Del);
        let map = RawSet::new(TABLE_C, FAMILY, &rules::endpoints_map(name), 0);
        self.batch.add(&map.as_set(), MsgType::Del);
        for ep in &p.endpoints {
            let e = Chain::new(cs(&rules::endpoint_chain(name, *ep)), &self.table);
            self.batch.add(&e, MsgType::Del);
        }
        if p.external() {
            let x = Chain::new(cs(&rules::external_chain(name)), &self.table);
            self.batch.add(&nftnl_rule(&x), MsgType::Del);
            self.batch.add(&x, MsgType::Del);
        }
        self.batch.add(&c, MsgType::Del);
    }

    /// Same address, other endpoints: the service chain and endpoint map are rewritten, chains
    /// of new endpoints made and those of gone ones deleted. From or to no endpoint at all,
    /// the port moves between `service-ips` and `no-endpoint-services` instead.
    fn replace_endpoints(
        &mut self,
        name: &str,
        old: &ServicePort,
        new: &ServicePort,
        scope: &Scope,
    ) {
        if old.endpoints.is_empty() || new.endpoints.is_empty() {
            self.port_elems([(&name.to_string(), old)], MsgType::Del);
            self.remove_port(name, old);
            self.add_port(name, new, scope);
            self.port_elems([(&name.to_string(), new)], MsgType::Add);
            return;
        }
        let t = Table::new(TABLE_C, FAMILY);
        let c = Chain::new(cs(&rules::service_chain(name)), &t);
        self.batch.add(&nftnl_rule(&c), MsgType::Del);
        let map = rules::endpoints_map(name);
        let old_keys: Vec<_> = (0..old.endpoints.len() as u32)
            .map(|i| (i.to_ne_bytes().to_vec(), None))
            .collect();
        self.elems(&map, &old_keys, MsgType::Del);
        let gone: BTreeSet<_> = old
            .endpoints
            .iter()
            .filter(|e| !new.endpoints.contains(e))
            .collect();
        for ep in gone {
            let e = Chain::new(cs(&rules::endpoint_chain(name, *ep)), &t);
            self.batch.add(&e, MsgType::Del);
        }
        for ep in new.endpoints.iter().filter(|e| !old.endpoints.contains(e)) {
            self.endpoint_chain(name, new, *ep);
        }
        self.elems(&map, &numgen_elems(name, &new.endpoints), MsgType::Add);
        for r in service_rules(new, &map, 0, scope) {
            self.batch.add(&rule(&c, &r), MsgType::Add);
        }
    }

    /// `service-ips` elements of ports with endpoints, `no-endpoint-services` of the others.
    fn port_elems<'a>(
        &mut self,
        ports: impl IntoIterator<Item = (&'a String, &'a ServicePort)>,
        op: MsgType,
    ) {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut np_with, mut np_without) = (Vec::new(), Vec::new());
        let reject = || Some((NFT_GOTO, Some(REJECT_CHAIN.to_string())));
        for (name, p) in ports {
            let key = ipv4_proto_port_key(p.cluster_ip, p.proto, p.port).to_vec();
            let np = p.node_port.map(|n| proto_port_key(p.proto, n).to_vec());
            let ext: Vec<Vec<u8>> = p
                .external_ips
                .iter()
                .map(|ip| ipv4_proto_port_key(*ip, p.proto, p.port).to_vec())
                .collect();
            if p.endpoints.is_empty() {
                without.push((key, reject()));
                without.extend(ext.into_iter().map(|k| (k, reject())));
                np_without.extend(np.map(|k| (k, reject())));
            } else {
                with.push((key, Some((NFT_GOTO, Some(rules::service_chain(name))))));
                let external = || Some((NFT_GOTO, Some(rules::external_chain(name))));
                with.extend(ext.into_iter().map(|k| (k, external())));
                np_with.extend(np.map(|k| (k, external())));
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

fn ip_elem(ip: Ipv4Addr) -> Elem {
    (ip.octets().to_vec(), None)
}

fn numgen_map_spec() -> SetSpec<'static> {
    SetSpec {
        key_type: TYPE_INTEGER,
        key_len: 4,
        flags: NFT_SET_MAP,
        data_type: Some(NFT_DATA_VERDICT),
        udata: Some(&UDATA_KEY_HOST_ENDIAN),
    }
}

/// `0 : goto endpoint-…, 1 : goto endpoint-…, …`
fn numgen_elems(name: &str, eps: &[(Ipv4Addr, u16)]) -> Vec<Elem> {
    eps.iter()
        .enumerate()
        .map(|(i, ep)| {
            let key = (i as u32).to_ne_bytes().to_vec();
            (
                key,
                Some((NFT_GOTO, Some(rules::endpoint_chain(name, *ep)))),
            )
        })
        .collect()
}

/// The masquerade of traffic from outside the cluster CIDR, and the endpoint choice.
fn service_rules(p: &ServicePort, map: &str, map_id: u32, scope: &Scope) -> Vec<Vec<Expr>> {
    let mut masq = vec![
        ip_daddr(NFT_REG_1),
        cmp(NFT_CMP_EQ, NFT_REG_1, &p.cluster_ip.octets()),
    ];
    if let ipnetwork::IpNetwork::V4(net) = scope.cluster_cidr {
        masq.extend(ipv4_in_net(ip_saddr(NFT_REG_1), net, NFT_CMP_NEQ));
    }
    masq.push(verdict(NFT_JUMP, Some(MARK_FOR_MASQ)));
    let pick = vec![
        numgen_random(p.endpoints.len() as u32, NFT_REG_1),
        lookup_vmap(map, map_id, NFT_REG_1),
    ];
    vec![masq, pick]
}
