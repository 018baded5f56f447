//! The routes podlet owns to other nodes' pods, both IP families, over rtnetlink. Like every
//! `sync_*` of `link`, `sync_routes` changes only what differs from what is wanted.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::link::{ctx, Changes};

/// The route protocol number that marks podlet's routes (`ip route show proto 158`): what
/// carries it is podlet's to replace or remove, nothing else is touched.
pub const PROTO: u8 = 158;

/// A route podlet owns: `dst via gw dev oif [onlink] proto 158`, `dst` and `via` of one family
/// (Linux has no IPv4 gateway for an IPv6 route outside nexthop objects, and refuses even
/// those: `IPv6 routes can not use an IPv4 nexthop`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNetwork,
    pub via: IpAddr,
    pub oif: u32,
    pub onlink: bool,
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => via = Some(IpAddr::V6(*g)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(Route {
        dst: IpNetwork::new(dst?, m.header.destination_prefix_length).ok()?,
        via: via?,
        oif: oif?,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
    })
}

/// podlet's routes in the main table, IPv4 then IPv6.
pub async fn own_routes(h: &Handle) -> io::Result<Vec<(Route, RouteMessage)>> {
    let mut all: Vec<RouteMessage> = Vec::new();
    for filter in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let family: Vec<RouteMessage> = h
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(ctx("listing routes".into()))?;
        all.extend(family);
    }
    Ok(all
        .into_iter()
        .filter(|m| {
            u8::from(m.header.protocol) == PROTO && m.header.table == RouteHeader::RT_TABLE_MAIN
        })
        .filter_map(|m| Some((route_of(&m)?, m)))
        .collect())
}

fn message(r: &Route) -> io::Result<RouteMessage> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("route to {} via {}: mixed IP families", r.dst, r.via),
        )
    };
    // The builder would take an IPv6 gateway for an IPv4 route (RTA_VIA), which this is not.
    if r.dst.is_ipv4() != r.via.is_ipv4() {
        return Err(bad());
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix())
        .map_err(|_| bad())?
        .gateway(r.via)
        .map_err(|_| bad())?
        .output_interface(r.oif)
        .protocol(RouteProtocol::from(PROTO));
    if r.onlink {
        b = b.onlink();
    }
    Ok(b.build())
}

/// Makes podlet's routes exactly `want`.
pub async fn sync_routes(h: &Handle, want: &[Route]) -> io::Result<Changes> {
    let have = own_routes(h).await?;
    let mut changes = Changes::default();
    for (r, m) in &have {
        if !want.contains(r) {
            h.route()
                .del(m.clone())
                .execute()
                .await
                .map_err(ctx(format!("removing the route to {}", r.dst)))?;
            changes.removed += 1;
        }
    }
    for r in want {
        if have.iter().any(|(h, _)| h == r) {
            continue;
        }
        // Replace: a route to the same range by another way (a podCIDR that moved) is swapped
        // in one step.
        h.route()
            .add(message(r)?)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("adding the route to {} via {}", r.dst, r.via)))?;
        changes.added += 1;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_message_reads_back_as_the_route_in_both_families() {
        for (dst, via, onlink) in [
            ("10.244.2.0/24", "10.100.1.12", false),
            ("fd00:10:244:2::/64", "fd00:10:244:2::", true),
        ] {
            let r = Route {
                dst: dst.parse().unwrap(),
                via: via.parse().unwrap(),
                oif: 7,
                onlink,
            };
            let m = message(&r).unwrap();
            assert_eq!(u8::from(m.header.protocol), PROTO);
            assert_eq!(route_of(&m), Some(r));
        }
        let mixed = Route {
            dst: "fd00:10:244:2::/64".parse().unwrap(),
            via: "10.100.1.12".parse().unwrap(),
            oif: 7,
            onlink: false,
        };
        let e = message(&mixed).unwrap_err();
        assert!(e.to_string().contains("mixed IP families"), "{e}");
    }
}
