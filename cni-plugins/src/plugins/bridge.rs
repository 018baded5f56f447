//! The bridge plugin: a veth pair from the container into a Linux bridge, addresses from the
//! configured IPAM plugin, optional gateway address on the bridge and masquerading.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::netlink::{self, block_on, Netlink};
use crate::skel::{Call, Plugin};
use crate::spec::{code, CniError, CniResult, Interface, Outcome, Route};
use crate::{ipam, nft, ns};

fn default_bridge() -> String {
    "cni0".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<i64>,
    #[serde(default)]
    pub macspoofchk: bool,
    #[serde(default)]
    pub disable_container_interface: bool,
    #[serde(default)]
    pub enabledad: bool,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |e| CniError::internal(format!("{what}: {e}"))
}

impl BridgeConf {
    pub fn from_call(call: &Call) -> CniResult<Self> {
        let mut c: BridgeConf = serde_json::from_value(call.raw.clone()).map_err(|e| {
            CniError::with_details(
                code::INVALID_CONFIG,
                "invalid bridge configuration",
                e.to_string(),
            )
        })?;
        if c.bridge.is_empty() || !crate::spec::valid_ifname(&c.bridge) {
            return Err(invalid(format!("invalid bridge name {:?}", c.bridge)));
        }
        if let Some(v) = c.vlan {
            if !(0..=4094).contains(&v) {
                return Err(invalid(format!(
                    "invalid VLAN ID {v} (must be between 0 and 4094)"
                )));
            }
        }
        if let Some(m) = c.mtu {
            if !(68..=65535).contains(&m) {
                return Err(invalid(format!("invalid MTU {m}")));
            }
        }
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if call.raw.get("ipam").and_then(|i| i.get("type")).is_none() {
            return Err(invalid("bridge needs an 'ipam' section with a type"));
        }
        Ok(c)
    }
}

/// The container's MAC address: runtimeConfig, then args, then CNI_ARGS (highest first).
fn requested_mac(call: &Call) -> CniResult<Option<[u8; 6]>> {
    let s = call
        .runtime_config("mac")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            call.conf
                .args
                .as_ref()
                .and_then(|a| a.pointer("/cni/mac"))
                .and_then(Value::as_str)
                .map(String::from)
        })
        .or_else(|| call.args.get("MAC").cloned());
    match s {
        None => Ok(None),
        Some(m) => netlink::parse_mac(&m)
            .map(Some)
            .ok_or_else(|| invalid(format!("invalid MAC address {m:?}"))),
    }
}

/// VLAN filtering needs CONFIG_BRIDGE_VLAN_FILTERING; say so instead of "not supported".
fn vlan_error(e: std::io::Error, bridge: &str) -> CniError {
    if netlink::is_errno(&e, libc::EOPNOTSUPP) {
        CniError::with_details(
            code::UNSUPPORTED_FIELD,
            "vlan: this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)",
            format!("bridge {bridge}: {e}"),
        )
    } else {
        CniError::internal(format!("bridge {bridge}: {e}"))
    }
}

fn host_veth_name() -> String {
    format!("veth{:08x}", rand::random::<u32>())
}

pub struct Bridge;

struct Made {
    host_veth: Option<String>,
    ipam_done: bool,
}

async fn add(call: &Call, conf: &BridgeConf, made: &mut Made) -> CniResult<Outcome> {
    let netns_path = Path::new(&call.netns);
    let netns = ns::open(netns_path).map_err(|e| {
        CniError::with_details(
            code::UNKNOWN_CONTAINER,
            format!("failed to open netns {:?}", call.netns),
            e.to_string(),
        )
    })?;
    let host = Netlink::here().map_err(internal("netlink"))?;
    let vlan = conf.vlan.filter(|v| *v > 0).map(|v| v as u16);
    let br = host
        .ensure_bridge(&conf.bridge, conf.mtu, conf.promisc_mode, vlan.is_some())
        .await
        .map_err(|e| vlan_error(e, &conf.bridge))?;
    let br_index = br.header.index;
    if vlan.is_some() && !netlink::vlan_filtering(&br) {
        host.enable_vlan_filtering(&conf.bridge, br_index)
            .await
            .map_err(|e| vlan_error(e, &conf.bridge))?;
    }
    let ctr = Netlink::in_netns(netns_path).map_err(internal("netlink in the container"))?;
    if ctr
        .link(&call.ifname)
        .await
        .map_err(internal("container link"))?
        .is_some()
    {
        return Err(CniError::internal(format!(
            "container veth name provided ({}) already exists",
            call.ifname
        )));
    }
    let mac = requested_mac(call)?;
    let host_name = host_veth_name();
    host.add_veth(&host_name, &call.ifname, &netns, br_index, conf.mtu, mac)
        .await
        .map_err(internal("creating the veth pair"))?;
    made.host_veth = Some(host_name.clone());
    let host_link = host
        .link(&host_name)
        .await
        .map_err(internal("host veth"))?
        .ok_or_else(|| CniError::internal("host veth vanished"))?;
    if conf.hairpin_mode {
        host.set_hairpin(host_link.header.index)
            .await
            .map_err(internal("hairpin mode"))?;
    }

    let mut result = ipam::exec(call, "ADD")?.expect("ADD returns a result");
    made.ipam_done = true;
    if result.ips.is_empty() {
        return Err(CniError::internal("IPAM plugin returned missing IP config"));
    }
    if conf.is_default_gateway {
        for ip in &result.ips {
            if let Some(gw) = ip.gateway {
                let dst: IpNetwork = if gw.is_ipv4() {
                    "0.0.0.0/0".parse().expect("net")
                } else {
                    "::/0".parse().expect("net")
                };
                if !result.routes.iter().any(|r| r.dst == dst) {
                    result.routes.push(Route {
                        dst,
                        gw: Some(gw),
                        mtu: None,
                        advmss: None,
                        priority: None,
                        table: None,
                        scope: None,
                    });
                }
            }
        }
    }

    // Inside the container: addresses, link up, routes.
    let ctr_link = ctr
        .link(&call.ifname)
        .await
        .map_err(internal("container link"))?
        .ok_or_else(|| CniError::internal("container veth vanished"))?;
    let idx = ctr_link.header.index;
    let has_v6 = result.ips.iter().any(|i| i.address.is_ipv6());
    if has_v6 && !conf.enabledad {
        let key = format!("net/ipv6/conf/{}/accept_dad", call.ifname);
        ns::with_netns(netns_path, || ns::sysctl(&key, "0"))
            .map_err(internal("accept_dad"))?
            .map_err(internal("accept_dad"))?;
    }
    for ip in &result.ips {
        ctr.add_address(idx, ip.address)
            .await
            .map_err(internal(&format!("adding {}", ip.address)))?;
    }
    if !conf.disable_container_interface {
        ctr.set_up(idx, true)
            .await
            .map_err(internal("container link up"))?;
        let gw_of = |v4: bool| {
            result
                .ips
                .iter()
                .find(|i| i.address.is_ipv4() == v4)
                .and_then(|i| i.gateway)
        };
        for r in &result.routes {
            let gw = r.gw.or_else(|| gw_of(r.dst.is_ipv4()));
            ctr.add_route(r.dst, gw, idx, r.mtu)
                .await
                .map_err(internal(&format!("route {}", r.dst)))?;
        }
    }

    if conf.macspoofchk {
        let mac = netlink::parse_mac(&netlink::mac_of(&ctr_link))
            .ok_or_else(|| CniError::internal("container MAC"))?;
        nft::add_macspoof(
            &call.conf.name,
            &call.container_id,
            &call.ifname,
            &host_name,
            mac,
        )
        .map_err(internal("macspoofchk rules"))?;
    }

    // On the host: gateway addresses on the bridge (or its VLAN interface), forwarding, masquerading.
    if conf.is_gateway {
        let (gw_index, gw_dev) = match vlan {
            Some(vid) => {
                host.bridge_vlan(br_index, vid, true)
                    .await
                    .map_err(internal("bridge vlan"))?;
                let name: String = format!("{}.{vid}", conf.bridge).chars().take(15).collect();
                (
                    host.ensure_vlan(&name, br_index, vid)
                        .await
                        .map_err(internal("vlan interface"))?,
                    name,
                )
            }
            None => (br_index, conf.bridge.clone()),
        };
        for ip in &result.ips {
            let Some(gw) = ip.gateway else { continue };
            let gw_net = IpNetwork::new(gw, ip.address.prefix()).expect("prefix");
            ensure_bridge_addr(&host, gw_index, gw_net, conf.force_address, &gw_dev).await?;
            let key = if gw.is_ipv4() {
                "net/ipv4/ip_forward"
            } else {
                "net/ipv6/conf/all/forwarding"
            };
            ns::sysctl(key, "1").map_err(internal(key))?;
        }
    }
    if conf.ip_masq {
        let nets: Vec<IpNetwork> = result.ips.iter().map(|i| i.address).collect();
        nft::add_masquerade(&call.conf.name, &call.container_id, &call.ifname, &nets)
            .map_err(internal("masquerade rules"))?;
    }

    let br = host
        .link_by_index(br_index)
        .await
        .map_err(internal("bridge"))?
        .unwrap_or(br);
    result.interfaces = vec![
        Interface {
            name: conf.bridge.clone(),
            mac: netlink::mac_of(&br),
            mtu: None,
            sandbox: String::new(),
        },
        Interface {
            name: host_name,
            mac: netlink::mac_of(&host_link),
            mtu: None,
            sandbox: String::new(),
        },
        Interface {
            name: call.ifname.clone(),
            mac: netlink::mac_of(&ctr_link),
            mtu: None,
            sandbox: call.netns.clone(),
        },
    ];
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }
    Ok(result)
}

/// Puts the gateway address on the bridge. Another address of the same subnet is replaced with
/// `forceAddress`, and refused without it.
async fn ensure_bridge_addr(
    host: &Netlink,
    index: u32,
    gw: IpNetwork,
    force: bool,
    name: &str,
) -> CniResult<()> {
    let existing = host
        .addresses(index)
        .await
        .map_err(internal("bridge addresses"))?;
    if existing.iter().any(|a| a.ip() == gw.ip()) {
        return Ok(());
    }
    for a in existing.iter().filter(|a| a.is_ipv4() == gw.is_ipv4()) {
        let same_subnet = a.contains(gw.ip()) || gw.contains(a.ip());
        if same_subnet && !is_link_local(a.ip()) {
            if !force {
                return Err(CniError::internal(format!(
                    "{name:?} already has an IP address different from {gw}"
                )));
            }
            host.del_address(index, *a)
                .await
                .map_err(internal("replacing the bridge address"))?;
        }
    }
    if gw.is_ipv6() {
        // Duplicate address detection would keep the gateway tentative, unreachable from the
        // pod, for 1-2 s after ADD returns (measured: the first ping answers after ~2 s). The
        // address is this plugin's by configuration; a duplicate is a configuration error
        // that DAD would not report anyway.
        let key = format!("net/ipv6/conf/{name}/accept_dad");
        ns::sysctl(&key, "0").map_err(internal(&key))?;
    }
    host.add_address(index, gw)
        .await
        .map_err(internal("bridge gateway address"))
}

fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

async fn remove_container_link(call: &Call) -> CniResult<()> {
    if call.netns.is_empty() {
        return Ok(());
    }
    let path = Path::new(&call.netns);
    // A namespace that is already gone took its end of the veth pair with it.
    let Ok(ctr) = Netlink::in_netns(path) else {
        return Ok(());
    };
    if let Some(l) = ctr
        .link(&call.ifname)
        .await
        .map_err(internal("container link"))?
    {
        ctr.del_link(l.header.index)
            .await
            .map_err(internal("deleting the container veth"))?;
    }
    Ok(())
}

impl Plugin for Bridge {
    fn add(&self, call: &Call) -> CniResult<Outcome> {
        let conf = BridgeConf::from_call(call)?;
        let mut made = Made {
            host_veth: None,
            ipam_done: false,
        };
        let r = block_on(add(call, &conf, &mut made));
        if r.is_err() {
            // A failed ADD leaves nothing: no veth, no address, no rule.
            if made.ipam_done {
                let _ = ipam::exec(call, "DEL");
            }
            if made.host_veth.is_some() {
                let _ = block_on(remove_container_link(call));
            }
            for kind in [nft::MASQ, nft::MACSPOOF] {
                let _ = nft::remove(kind, &call.conf.name, &call.container_id, &call.ifname);
            }
        }
        r
    }

    fn del(&self, call: &Call) -> CniResult<()> {
        let _conf = BridgeConf::from_call(call)?;
        ipam::exec(call, "DEL")?;
        block_on(remove_container_link(call))?;
        for kind in [nft::MASQ, nft::MACSPOOF] {
            nft::remove(kind, &call.conf.name, &call.container_id, &call.ifname)
                .map_err(internal("nftables rules"))?;
        }
        Ok(())
    }

    fn check(&self, call: &Call) -> CniResult<()> {
        let conf = BridgeConf::from_call(call)?;
        let prev = call
            .prev_result()?
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs a prevResult"))?;
        ipam::exec(call, "CHECK")?;
        block_on(async {
            let host = Netlink::here().map_err(internal("netlink"))?;
            let br = host
                .link(&conf.bridge)
                .await
                .map_err(internal("bridge"))?
                .ok_or_else(|| CniError::internal(format!("bridge {} not found", conf.bridge)))?;
            let ctr = Netlink::in_netns(Path::new(&call.netns)).map_err(|e| {
                CniError::with_details(code::UNKNOWN_CONTAINER, "netns", e.to_string())
            })?;
            let link = ctr
                .link(&call.ifname)
                .await
                .map_err(internal("container link"))?
                .ok_or_else(|| {
                    CniError::internal(format!("{} not found in the container", call.ifname))
                })?;
            let addrs = ctr
                .addresses(link.header.index)
                .await
                .map_err(internal("addresses"))?;
            for ip in &prev.ips {
                if !addrs.iter().any(|a| a.ip() == ip.address.ip()) {
                    return Err(CniError::internal(format!(
                        "{} is missing on {}",
                        ip.address, call.ifname
                    )));
                }
            }
            if let Some(h) = prev
                .interfaces
                .iter()
                .find(|i| i.sandbox.is_empty() && i.name != conf.bridge)
            {
                let hl = host
                    .link(&h.name)
                    .await
                    .map_err(internal("host veth"))?
                    .ok_or_else(|| CniError::internal(format!("host veth {} not found", h.name)))?;
                if netlink::controller_of(&hl) != Some(br.header.index) {
                    return Err(CniError::internal(format!(
                        "{} is not attached to {}",
                        h.name, conf.bridge
                    )));
                }
            }
            Ok(())
        })
    }

    fn gc(&self, call: &Call) -> CniResult<()> {
        let _conf = BridgeConf::from_call(call)?;
        ipam::exec(call, "GC")?;
        let valid = ipam::hostlocal::valid_attachments(call);
        for t in nft::list_tables().map_err(internal("listing nftables tables"))? {
            if let Some((kind, net, cid, ifname)) = nft::parse_table_name(&t) {
                let keep = valid
                    .iter()
                    .any(|(v, vi)| v == cid && (vi.is_empty() || vi == ifname));
                if (kind == nft::MASQ || kind == nft::MACSPOOF) && net == call.conf.name && !keep {
                    nft::remove(kind, net, cid, ifname).map_err(internal("nftables rules"))?;
                }
            }
        }
        Ok(())
    }

    fn status(&self, call: &Call) -> CniResult<()> {
        let _conf = BridgeConf::from_call(call)?;
        ipam::exec(call, "STATUS").map(|_| ())
    }
}
