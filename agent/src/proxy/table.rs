//! Writes a [`Wanted`] state into the table `ip podlet-proxy` in kube-proxy's nftables layout,
//! as one netlink batch: the whole table (a full sync) or only the service ports a [`Diff`]
//! names (an incremental one).
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
    /// The batch-local ids of the sets this batch makes, by name (0: an existing set).
    ids: std::collections::HashMap<String, u32>,
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            batch: Batch::new(),
            table: Table::new(TABLE_C, FAMILY),
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
        let s = RawSet::new(TABLE_C, FAMILY, name, id).with_spec(spec);
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

    /// A port's chains, endpoint maps and affinity sets (its `service-ips` elements:
    /// [`Writer::port_elems`]).
    fn add_port(&mut self, name: &str, p: &ServicePort, scope: &Scope) {
        if p.no_endpoints() {
            return;
        }
        for ep in p.chained_endpoints() {
            self.add_endpoint(name, p, ep);
        }
        self.policy_chains(name, p, scope, true);
        if p.has_external_chain() {
            self.external_chain(name, p, scope);
        }
    }

    /// The `service-…` and `local-…` chains and their numgen maps (made, or refilled after a
    /// flush).
    fn policy_chains(&mut self, name: &str, p: &ServicePort, scope: &Scope, create: bool) {
        let chains = [(p.has_cluster_chain(), true), (p.has_local_chain(), false)];
        for (exists, cluster) in chains {
            if !exists {
                continue;
            }
            let (chain, map, eps) = match cluster {
                true => (
                    rules::service_chain(name),
                    rules::endpoints_map(name),
                    &p.endpoints,
                ),
                false => (
                    rules::local_chain(name),
                    rules::local_endpoints_map(name),
                    &p.local_endpoints,
                ),
            };
            if create {
                let id = self.id();
                let udata = numgen_map_udata(eps.len() as u32);
                // Sized: a fixed-size hash, cheap to walk (see with_size).
                let s = RawSet::new(TABLE_C, FAMILY, &map, id)
                    .with_spec(&numgen_map_spec(&udata))
                    .with_size(rules::map_capacity(eps.len()));
                self.batch.add(&s.as_set(), MsgType::Add);
                self.ids.insert(map.clone(), id);
            }
            self.elems(&map, &numgen_elems(name, eps), MsgType::Add);
            let mut rules = Vec::new();
            if cluster {
                rules.push(masquerade_rule(p, scope));
            }
            if p.affinity.is_some() {
                for ep in eps {
                    let set = rules::affinity_set(name, *ep);
                    let id = self.id_of(&set);
                    rules.push(vec![
                        ip_saddr(NFT_REG_1),
                        lookup_in(&set, id, NFT_REG_1, false),
                        verdict(NFT_GOTO, Some(&rules::endpoint_chain(name, *ep))),
                    ]);
                }
            }
            let id = self.id_of(&map);
            rules.push(vec![
                numgen_random(eps.len() as u32, NFT_REG_1),
                lookup_vmap(&map, id, NFT_REG_1),
            ]);
            let rules: Vec<&[Expr]> = rules.iter().map(Vec::as_slice).collect();
            match create {
                true => self.chain(&chain, &rules),
                false => {
                    let c = Chain::new(cs(&chain), &self.table);
                    for r in rules {
                        self.batch.add(&rule(&c, r), MsgType::Add);
                    }
                }
            }
        }
    }

    /// Traffic from outside the cluster. `externalTrafficPolicy: Cluster`: masqueraded (the
    /// endpoint may be on another node, whose reply must come back here), any endpoint.
    /// `Local`: this node's endpoints with the client's address kept — except for pods and
    /// the node itself, which reach every endpoint as through the ClusterIP (kube-proxy's
    /// short-circuit), the node masqueraded.
    fn external_chain(&mut self, name: &str, p: &ServicePort, scope: &Scope) {
        let cluster = rules::service_chain(name);
        let to_cluster = || verdict(NFT_GOTO, Some(&cluster));
        let mut rules: Vec<Vec<Expr>> = Vec::new();
        if p.external_local {
            if p.has_cluster_chain() {
                if let ipnetwork::IpNetwork::V4(net) = scope.cluster_cidr {
                    let mut pods = ipv4_in_net(ip_saddr(NFT_REG_1), net, NFT_CMP_EQ);
                    pods.push(to_cluster());
                    rules.push(pods);
                }
                let from_node = || {
                    vec![
                        fib_saddr_type(NFT_REG_1),
                        cmp(NFT_CMP_EQ, NFT_REG_1, &RTN_LOCAL.to_ne_bytes()),
                    ]
                };
                let mut masq = from_node();
                masq.push(verdict(NFT_JUMP, Some(MARK_FOR_MASQ)));
                let mut node = from_node();
                node.push(to_cluster());
                rules.extend([masq, node]);
            }
            // Without local endpoints the rest falls through, untranslated, to the drop of
            // the no-endpoint maps.
            if p.has_local_chain() {
                rules.push(vec![verdict(NFT_GOTO, Some(&rules::local_chain(name)))]);
            }
        } else if p.has_cluster_chain() {
            rules.push(vec![verdict(NFT_JUMP, Some(MARK_FOR_MASQ))]);
            rules.push(vec![to_cluster()]);
        }
        let rules: Vec<&[Expr]> = rules.iter().map(Vec::as_slice).collect();
        self.chain(&rules::external_chain(name), &rules);
    }

    /// An endpoint's chain (hairpin masquerade, affinity, DNAT) and its affinity set.
    fn add_endpoint(&mut self, name: &str, p: &ServicePort, ep: (Ipv4Addr, u16)) {
        let hairpin = vec![
            ip_saddr(NFT_REG_1),
            cmp(NFT_CMP_EQ, NFT_REG_1, &ep.0.octets()),
            verdict(NFT_JUMP, Some(MARK_FOR_MASQ)),
        ];
        let mut rules = vec![hairpin];
        if let Some(timeout) = p.affinity {
            let set = rules::affinity_set(name, ep);
            let spec = SetSpec {
                key_type: TYPE_IPADDR,
                key_len: 4,
                flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
                data_type: None,
                udata: None,
            };
            let id = self.id();
            let s = RawSet::new(TABLE_C, FAMILY, &set, id)
                .with_spec(&spec)
                .with_timeout(u64::from(timeout) * 1000);
            self.batch.add(&s.as_set(), MsgType::Add);
            self.ids.insert(set.clone(), id);
            rules.push(vec![
                ip_saddr(NFT_REG_1),
                dynset_update(&set, id, NFT_REG_1),
            ]);
        }
        rules.push(vec![
            meta_load(NFT_META_L4PROTO, NFT_REG_1),
            cmp(NFT_CMP_EQ, NFT_REG_1, &[p.proto]),
            imm_data(NFT_REG_1, &ep.0.octets()),
            imm_data(NFT_REG_2, &ep.1.to_be_bytes()),
            dnat_v4(NFT_REG_1, NFT_REG_2),
        ]);
        let rules: Vec<&[Expr]> = rules.iter().map(Vec::as_slice).collect();
        self.chain(&rules::endpoint_chain(name, ep), &rules);
    }

    /// An endpoint's chain and affinity set, once nothing refers to them.
    fn remove_endpoint(&mut self, name: &str, p: &ServicePort, ep: (Ipv4Addr, u16)) {
        let e = Chain::new(cs(&rules::endpoint_chain(name, ep)), &self.table);
        self.batch.add(&e, MsgType::Del);
        if p.affinity.is_some() {
            let s = RawSet::new(TABLE_C, FAMILY, &rules::affinity_set(name, ep), 0);
            self.batch.add(&s.as_set(), MsgType::Del);
        }
    }

    /// Empties the policy chains (releasing the maps, sets and chains their rules name).
    fn flush_policy_chains(&mut self, name: &str, p: &ServicePort) {
        for (exists, chain) in [
            (p.has_cluster_chain(), rules::service_chain(name)),
            (p.has_local_chain(), rules::local_chain(name)),
        ] {
            if exists {
                // A DELRULE without a handle flushes the chain.
                let c = Chain::new(cs(&chain), &self.table);
                self.batch.add(&nftnl_rule(&c), MsgType::Del);
            }
        }
    }

    /// Its map elements go first, then the rules that reach its chains, then the chains.
    fn remove_port(&mut self, name: &str, p: &ServicePort) {
        if p.no_endpoints() {
            return;
        }
        self.flush_policy_chains(name, p);
        if p.has_external_chain() {
            let x = Chain::new(cs(&rules::external_chain(name)), &self.table);
            self.batch.add(&nftnl_rule(&x), MsgType::Del);
            self.batch.add(&x, MsgType::Del);
        }
        for (exists, map) in [
            (p.has_cluster_chain(), rules::endpoints_map(name)),
            (p.has_local_chain(), rules::local_endpoints_map(name)),
        ] {
            if exists {
                let m = RawSet::new(TABLE_C, FAMILY, &map, 0);
                self.batch.add(&m.as_set(), MsgType::Del);
            }
        }
        for ep in p.chained_endpoints() {
            self.remove_endpoint(name, p, ep);
        }
        for (exists, chain) in [
            (p.has_cluster_chain(), rules::service_chain(name)),
            (p.has_local_chain(), rules::local_chain(name)),
        ] {
            if exists {
                let c = Chain::new(cs(&chain), &self.table);
                self.batch.add(&c, MsgType::Del);
            }
        }
    }

    /// Same frame and same chains, other endpoints: the policy chains and their maps are
    /// refilled, chains (and affinity sets) of new endpoints made and those of gone ones
    /// deleted; surviving endpoints keep their affinity. Otherwise the port is remade.
    fn replace_endpoints(
        &mut self,
        name: &str,
        old: &ServicePort,
        new: &ServicePort,
        scope: &Scope,
    ) {
        if old.chain_shape() != new.chain_shape() || !new.has_cluster_chain() {
            self.port_elems([(&name.to_string(), old)], MsgType::Del);
            self.remove_port(name, old);
            self.add_port(name, new, scope);
            self.port_elems([(&name.to_string(), new)], MsgType::Add);
            return;
        }
        self.flush_policy_chains(name, old);
        for (exists, map, eps) in [
            (
                old.has_cluster_chain(),
                rules::endpoints_map(name),
                &old.endpoints,
            ),
            (
                old.has_local_chain(),
                rules::local_endpoints_map(name),
                &old.local_endpoints,
            ),
        ] {
            if exists {
                let keys: Vec<_> = (0..eps.len() as u32)
                    .map(|i| (i.to_ne_bytes().to_vec(), None))
                    .collect();
                self.elems(&map, &keys, MsgType::Del);
            }
        }
        let (was, is) = (old.chained_endpoints(), new.chained_endpoints());
        for ep in was.iter().filter(|e| !is.contains(e)) {
            self.remove_endpoint(name, old, *ep);
        }
        for ep in is.iter().filter(|e| !was.contains(e)) {
            self.add_endpoint(name, new, *ep);
        }
        self.policy_chains(name, new, scope, false);
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
            let key = ipv4_proto_port_key(p.cluster_ip, p.proto, p.port).to_vec();
            let np = p.node_port.map(|n| proto_port_key(p.proto, n).to_vec());
            let ext: Vec<Vec<u8>> = p
                .external_ips
                .iter()
                .map(|ip| ipv4_proto_port_key(*ip, p.proto, p.port).to_vec())
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

fn ip_elem(ip: Ipv4Addr) -> Elem {
    (ip.octets().to_vec(), None)
}

/// The numgen map of `modulus` endpoints (its `typeof` says the modulus at creation: the map
/// stays when its service's endpoints change, the rule's modulus with them).
fn numgen_map_spec(udata: &[u8]) -> SetSpec<'_> {
    SetSpec {
        key_type: TYPE_INTEGER,
        key_len: 4,
        flags: NFT_SET_MAP,
        data_type: Some(NFT_DATA_VERDICT),
        udata: Some(udata),
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

/// ClusterIP traffic from outside the cluster CIDR (the node itself) is masqueraded.
fn masquerade_rule(p: &ServicePort, scope: &Scope) -> Vec<Expr> {
    let mut masq = vec![
        ip_daddr(NFT_REG_1),
        cmp(NFT_CMP_EQ, NFT_REG_1, &p.cluster_ip.octets()),
    ];
    if let ipnetwork::IpNetwork::V4(net) = scope.cluster_cidr {
        masq.extend(ipv4_in_net(ip_saddr(NFT_REG_1), net, NFT_CMP_NEQ));
    }
    masq.push(verdict(NFT_JUMP, Some(MARK_FOR_MASQ)));
    masq
}
