//! The cluster DNS address on this node: a /32 on the loopback device labelled
//! `lo:podlet-dns`, so that a pod's packets to it (routed to the node as to any address off its
//! subnet) are delivered to the agent's server here — NodeLocal DNSCache's design, with no DNAT
//! and so no conntrack race on the way. (NodeLocal DNSCache uses a dummy device; the loopback
//! needs no kernel module.)

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::Handle;

/// The label marking the addresses podlet put on the loopback device.
pub const LABEL: &str = "lo:podlet-dns";

fn ctx(what: String) -> impl FnOnce(rtnetlink::Error) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

async fn lo_index(h: &Handle) -> io::Result<u32> {
    let mut links = h.link().get().match_name("lo".to_string()).execute();
    match links.try_next().await.map_err(ctx("finding lo".into()))? {
        Some(l) => Ok(l.header.index),
        None => Err(io::Error::other("no loopback device")),
    }
}

/// The labelled addresses on lo, with their messages (to delete them).
async fn ours(h: &Handle, lo: u32) -> io::Result<Vec<(Ipv4Addr, AddressMessage)>> {
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(lo)
        .execute()
        .try_collect()
        .await
        .map_err(ctx("listing the addresses of lo".into()))?;
    Ok(addrs
        .into_iter()
        .filter(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Label(l) if l == LABEL))
        })
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v4))
                | AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            })?;
            Some((ip, m))
        })
        .collect())
}

/// Gives lo exactly the labelled addresses `want` (IPv4 /32s): missing ones added, others of
/// ours removed, nothing else touched. The loopback is brought up (a fresh namespace's is down).
pub async fn ensure(h: &Handle, want: &[Ipv4Addr]) -> io::Result<()> {
    let lo = lo_index(h).await?;
    h.link()
        .set(rtnetlink::LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(ctx("setting lo up".into()))?;
    let have = ours(h, lo).await?;
    for (ip, m) in &have {
        if !want.contains(ip) {
            h.address()
                .del(m.clone())
                .execute()
                .await
                .map_err(ctx(format!("removing {ip}/32 from lo")))?;
        }
    }
    for ip in want {
        if have.iter().any(|(h, _)| h == ip) {
            continue;
        }
        let mut req = h.address().add(lo, IpAddr::V4(*ip), 32);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Label(LABEL.into()));
        req.execute()
            .await
            .map_err(ctx(format!("adding {ip}/32 to lo (label {LABEL})")))?;
    }
    Ok(())
}

/// Removes the labelled addresses (`podlet cleanup`); returns them.
pub async fn remove(h: &Handle) -> io::Result<Vec<Ipv4Addr>> {
    let lo = lo_index(h).await?;
    let mut gone = Vec::new();
    for (ip, m) in ours(h, lo).await? {
        h.address()
            .del(m)
            .execute()
            .await
            .map_err(ctx(format!("removing {ip}/32 from lo")))?;
        gone.push(ip);
    }
    Ok(gone)
}
