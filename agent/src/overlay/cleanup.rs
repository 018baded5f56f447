//! `podlet cleanup`: removes what the agent made for pod traffic between nodes in this network
//! namespace — its routes (protocol 158), the VXLAN device, the masquerade table — as
//! `kube-proxy --cleanup` and k3s' uninstall script do for theirs. A running agent makes them
//! again within a second, so it is run after the agent has stopped.

use std::io;

use super::{link, routes, MASQ_TABLE};

/// What was removed, one line each, for the user.
pub async fn run() -> io::Result<Vec<String>> {
    let nl = podlet_cni::netlink::Netlink::here()?;
    let mut done = Vec::new();
    let routes = routes::own_routes(&nl.handle).await?;
    let c = routes::sync_routes(&nl.handle, &[]).await?;
    if c.removed > 0 {
        let dsts: Vec<String> = routes.iter().map(|(r, _)| r.dst.to_string()).collect();
        done.push(format!(
            "{} route(s) to other nodes' pods (protocol {}): {}",
            c.removed,
            routes::PROTO,
            dsts.join(", ")
        ));
    }
    if link::remove_vxlan(&nl.handle).await? {
        done.push(format!(
            "the VXLAN device {} (with its FDB and neighbour entries)",
            link::VXLAN_DEV
        ));
    }
    let removed = podlet_cni::nft::remove_table(MASQ_TABLE).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("removing nftables table {MASQ_TABLE}: {e}"),
        )
    })?;
    if removed {
        done.push(format!(
            "the nftables table {MASQ_TABLE} (pod masquerade, every IP family)"
        ));
    }
    Ok(done)
}
