//! The chains, numgen maps and affinity sets of one service port: made, refilled when only
//! its endpoints change, and removed.

use std::net::IpAddr;

use podlet_cni::nft::expr::*;
use podlet_cni::nft::family::{addr_bytes, Family};
use podlet_cni::nft::{Chain, MsgType, RawSet, SetSpec};

use super::{cs, nftnl_rule, Elem, Writer, MARK_FOR_MASQ, TABLE_C};
use crate::proxy::rules::{self, Scope, ServicePort};

impl Writer {
    /// A port's chains, endpoint maps and affinity sets (its `service-ips` elements:
    /// [`Writer::port_elems`]).
    pub(super) fn add_port(&mut self, name: &str, p: &ServicePort, scope: &Scope) {
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
                let s = RawSet::new(TABLE_C, self.family.table(), &map, id)
                    .with_spec(&numgen_map_spec(&udata))
                    .with_size(rules::map_capacity(eps.len()));
                self.batch.add(&s.as_set(), MsgType::Add);
                self.ids.insert(map.clone(), id);
            }
            self.elems(&map, &numgen_elems(name, eps), MsgType::Add);
            let mut rules = Vec::new();
            if cluster {
                rules.push(masquerade_rule(self.family, p, scope));
            }
            if p.affinity.is_some() {
                for ep in eps {
                    let set = rules::affinity_set(name, *ep);
                    let id = self.id_of(&set);
                    rules.push(vec![
                        self.family.saddr(NFT_REG_1),
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
        let fam = self.family;
        let cluster = rules::service_chain(name);
        let to_cluster = || verdict(NFT_GOTO, Some(&cluster));
        let mut rules: Vec<Vec<Expr>> = Vec::new();
        if p.external_local {
            if p.has_cluster_chain() {
                if let Some(net) = scope.cluster_cidr {
                    let mut pods = fam.in_net(fam.saddr(NFT_REG_1), net, NFT_CMP_EQ);
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
    fn add_endpoint(&mut self, name: &str, p: &ServicePort, ep: (IpAddr, u16)) {
        let fam = self.family;
        let hairpin = vec![
            fam.saddr(NFT_REG_1),
            cmp(NFT_CMP_EQ, NFT_REG_1, &addr_bytes(ep.0)),
            verdict(NFT_JUMP, Some(MARK_FOR_MASQ)),
        ];
        let mut rules = vec![hairpin];
        if let Some(timeout) = p.affinity {
            let set = rules::affinity_set(name, ep);
            let spec = SetSpec {
                key_type: fam.addr_type(),
                key_len: fam.addr_len(),
                flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
                data_type: None,
                udata: None,
            };
            let id = self.id();
            let s = RawSet::new(TABLE_C, fam.table(), &set, id)
                .with_spec(&spec)
                .with_timeout(u64::from(timeout) * 1000);
            self.batch.add(&s.as_set(), MsgType::Add);
            self.ids.insert(set.clone(), id);
            rules.push(vec![
                fam.saddr(NFT_REG_1),
                dynset_update(&set, id, NFT_REG_1),
            ]);
        }
        rules.push(vec![
            meta_load(NFT_META_L4PROTO, NFT_REG_1),
            cmp(NFT_CMP_EQ, NFT_REG_1, &[p.proto]),
            imm_data(NFT_REG_1, &addr_bytes(ep.0)),
            imm_data(NFT_REG_2, &ep.1.to_be_bytes()),
            fam.dnat(NFT_REG_1, NFT_REG_2),
        ]);
        let rules: Vec<&[Expr]> = rules.iter().map(Vec::as_slice).collect();
        self.chain(&rules::endpoint_chain(name, ep), &rules);
    }

    /// An endpoint's chain and affinity set, once nothing refers to them.
    fn remove_endpoint(&mut self, name: &str, p: &ServicePort, ep: (IpAddr, u16)) {
        let e = Chain::new(cs(&rules::endpoint_chain(name, ep)), &self.table);
        self.batch.add(&e, MsgType::Del);
        if p.affinity.is_some() {
            let s = RawSet::new(
                TABLE_C,
                self.family.table(),
                &rules::affinity_set(name, ep),
                0,
            );
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
    pub(super) fn remove_port(&mut self, name: &str, p: &ServicePort) {
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
                let m = RawSet::new(TABLE_C, self.family.table(), &map, 0);
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
    pub(super) fn replace_endpoints(
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
fn numgen_elems(name: &str, eps: &[(IpAddr, u16)]) -> Vec<Elem> {
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

/// ClusterIP traffic from outside the cluster CIDR (the node itself) is masqueraded (all of
/// it without a cluster CIDR of the family).
fn masquerade_rule(fam: Family, p: &ServicePort, scope: &Scope) -> Vec<Expr> {
    let mut masq = vec![
        fam.daddr(NFT_REG_1),
        cmp(NFT_CMP_EQ, NFT_REG_1, &addr_bytes(p.cluster_ip)),
    ];
    if let Some(net) = scope.cluster_cidr {
        masq.extend(fam.in_net(fam.saddr(NFT_REG_1), net, NFT_CMP_NEQ));
    }
    masq.push(verdict(NFT_JUMP, Some(MARK_FOR_MASQ)));
    masq
}
