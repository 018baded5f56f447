//! The portmap plugin (chained): forwards host ports to the pod with nftables DNAT, from other
//! hosts and from this one, and cleans up on DEL by the attachment's table name.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::nft::{self, PortMapping};
use crate::skel::{Call, Plugin};
use crate::spec::{code, CniError, CniResult, Outcome};
use crate::{ipam, ns};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mapping {
    host_port: i64,
    container_port: i64,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(rename = "hostIP", default)]
    host_ip: Option<String>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn mappings(call: &Call) -> CniResult<Vec<PortMapping>> {
    let Some(raw) = call.runtime_config("portMappings") else {
        return Ok(Vec::new());
    };
    let list: Vec<Mapping> = serde_json::from_value(raw.clone()).map_err(|e| {
        CniError::with_details(
            code::INVALID_CONFIG,
            "invalid runtimeConfig.portMappings",
            e.to_string(),
        )
    })?;
    list.into_iter()
        .map(|m| {
            let port = |p: i64, what: &str| {
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| invalid(format!("invalid {what} {p}")))
            };
            let protocol = match m
                .protocol
                .as_deref()
                .unwrap_or("tcp")
                .to_ascii_lowercase()
                .as_str()
            {
                "tcp" => libc::IPPROTO_TCP as u8,
                "udp" => libc::IPPROTO_UDP as u8,
                "sctp" => libc::IPPROTO_SCTP as u8,
                other => return Err(invalid(format!("unknown port protocol {other:?}"))),
            };
            let host_ip = match m
                .host_ip
                .as_deref()
                .filter(|h| !h.is_empty() && *h != "0.0.0.0" && *h != "::")
            {
                Some(h) => Some(
                    h.parse::<IpAddr>()
                        .map_err(|_| invalid(format!("invalid hostIP {h:?}")))?,
                ),
                None => None,
            };
            Ok(PortMapping {
                host_port: port(m.host_port, "hostPort")?,
                container_port: port(m.container_port, "containerPort")?,
                protocol,
                host_ip,
            })
        })
        .collect()
}

fn snat(call: &Call) -> bool {
    call.raw
        .get("snat")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

pub struct Portmap;

impl Plugin for Portmap {
    fn add(&self, call: &Call) -> CniResult<Outcome> {
        let prev = call
            .prev_result()?
            .ok_or_else(|| invalid("portmap must be called as a chained plugin (no prevResult)"))?;
        let maps = mappings(call)?;
        if maps.is_empty() {
            return Ok(prev);
        }
        // The pod's addresses: those on interfaces inside the sandbox (or all, if unattributed).
        let pod_ips: Vec<IpAddr> = prev
            .ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => prev
                    .interfaces
                    .get(i)
                    .is_some_and(|itf| !itf.sandbox.is_empty()),
                None => true,
            })
            .map(|ip| ip.address.ip())
            .collect();
        if pod_ips.is_empty() {
            return Err(invalid("prevResult has no container address to forward to"));
        }
        if snat(call) && pod_ips.iter().any(IpAddr::is_ipv4) {
            // Connections to 127.0.0.1:<hostPort> are DNATed out of the host's interfaces.
            for itf in prev.interfaces.iter().filter(|i| i.sandbox.is_empty()) {
                let _ = ns::sysctl(&format!("net/ipv4/conf/{}/route_localnet", itf.name), "1");
            }
        }
        nft::add_hostports(
            &call.conf.name,
            &call.container_id,
            &call.ifname,
            &maps,
            &pod_ips,
            snat(call),
        )
        .map_err(|e| CniError::internal(format!("host port rules: {e}")))?;
        Ok(prev)
    }

    fn del(&self, call: &Call) -> CniResult<()> {
        nft::remove(
            nft::HOSTPORT,
            &call.conf.name,
            &call.container_id,
            &call.ifname,
        )
        .map_err(|e| CniError::internal(format!("host port rules: {e}")))
    }

    fn check(&self, call: &Call) -> CniResult<()> {
        if mappings(call)?.is_empty() {
            return Ok(());
        }
        let name = nft::table_name(
            nft::HOSTPORT,
            &call.conf.name,
            &call.container_id,
            &call.ifname,
        )
        .map_err(|e| CniError::internal(e.to_string()))?;
        let tables = nft::list_tables().map_err(|e| CniError::internal(e.to_string()))?;
        if !tables
            .iter()
            .any(|t| t.as_str() == name.to_str().unwrap_or_default())
        {
            return Err(CniError::internal(format!(
                "host port rules for {} are missing",
                call.container_id
            )));
        }
        Ok(())
    }

    fn gc(&self, call: &Call) -> CniResult<()> {
        let valid = ipam::hostlocal::valid_attachments(call);
        for t in nft::list_tables().map_err(|e| CniError::internal(e.to_string()))? {
            if let Some((kind, net, cid, ifname)) = nft::parse_table_name(&t) {
                let keep = valid
                    .iter()
                    .any(|(v, vi)| v == cid && (vi.is_empty() || vi == ifname));
                if kind == nft::HOSTPORT && net == call.conf.name && !keep {
                    nft::remove(nft::HOSTPORT, net, cid, ifname)
                        .map_err(|e| CniError::internal(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}
