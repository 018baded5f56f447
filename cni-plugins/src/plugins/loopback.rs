//! The loopback plugin: brings `lo` of the container's network namespace up (and down on DEL).

use std::path::Path;

use crate::netlink::{block_on, Netlink};
use crate::skel::{Call, Plugin};
use crate::spec::{code, CniError, CniResult, Interface, IpConfig, Outcome};

pub struct Loopback;

async fn set_lo(netns: &str, up: bool) -> CniResult<bool> {
    let nl = Netlink::in_netns(Path::new(netns)).map_err(|e| {
        CniError::with_details(
            code::UNKNOWN_CONTAINER,
            format!("failed to open netns {netns:?}"),
            e.to_string(),
        )
    })?;
    let lo = nl
        .link("lo")
        .await
        .map_err(|e| CniError::internal(format!("lo: {e}")))?
        .ok_or_else(|| CniError::internal("no lo in the namespace"))?;
    nl.set_up(lo.header.index, up)
        .await
        .map_err(|e| CniError::internal(format!("lo: {e}")))?;
    Ok(true)
}

impl Plugin for Loopback {
    fn add(&self, call: &Call) -> CniResult<Outcome> {
        block_on(set_lo(&call.netns, true))?;
        Ok(Outcome {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                mtu: None,
                sandbox: call.netns.clone(),
            }],
            ips: vec![
                IpConfig {
                    address: "127.0.0.1/8".parse().expect("net"),
                    gateway: None,
                    interface: Some(0),
                },
                IpConfig {
                    address: "::1/128".parse().expect("net"),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            ..Default::default()
        })
    }

    fn del(&self, call: &Call) -> CniResult<()> {
        if call.netns.is_empty() || !Path::new(&call.netns).exists() {
            return Ok(());
        }
        // A namespace that disappears meanwhile is as good as done.
        match block_on(set_lo(&call.netns, false)) {
            Err(e) if e.code == code::UNKNOWN_CONTAINER => Ok(()),
            r => r.map(|_| ()),
        }
    }

    fn check(&self, call: &Call) -> CniResult<()> {
        block_on(async {
            let nl = Netlink::in_netns(Path::new(&call.netns)).map_err(|e| {
                CniError::with_details(code::UNKNOWN_CONTAINER, "netns", e.to_string())
            })?;
            let lo = nl
                .link("lo")
                .await
                .map_err(|e| CniError::internal(e.to_string()))?
                .ok_or_else(|| CniError::internal("no lo"))?;
            if !lo
                .header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up)
            {
                return Err(CniError::internal("lo is down"));
            }
            Ok(())
        })
    }
}
