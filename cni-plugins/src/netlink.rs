//! rtnetlink helpers for the plugins: a connection bound to a network namespace, and the few
//! link, address and route operations bridge and loopback need.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

use crate::ns;

/// A handle whose socket lives in the namespace it was opened in.
pub struct Netlink {
    pub handle: Handle,
}

/// An rtnetlink error as the errno the kernel answered (or a plain error when there is none).
pub fn io_err(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(c) => io::Error::from_raw_os_error(-c.get()),
            None => io::Error::other("netlink error"),
        },
        other => io::Error::other(other.to_string()),
    }
}

/// The result, with the error `errno` meaning "nothing to do" (e.g. EEXIST on add).
fn tolerate<T: Default>(r: Result<T, rtnetlink::Error>, errno: i32) -> io::Result<T> {
    match r.map_err(io_err) {
        Err(e) if is_errno(&e, errno) => Ok(T::default()),
        other => other,
    }
}

pub fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

impl Netlink {
    /// A connection in the current network namespace; its task runs on the current runtime.
    pub fn here() -> io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection whose socket is opened inside the network namespace at `path`.
    pub fn in_netns(path: &Path) -> io::Result<Self> {
        // The socket must be created inside the namespace, and registered with this runtime.
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns::with_netns(path, move || {
            let _ctx = rt.enter();
            rtnetlink::new_connection()
        })??;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        tolerate(s.try_next().await, libc::ENODEV)
    }

    pub async fn link_by_index(&self, index: u32) -> io::Result<Option<LinkMessage>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        tolerate(s.try_next().await, libc::ENODEV)
    }

    /// Creates the bridge if missing and brings it up; returns it.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        promisc: bool,
        vlan_filtering: bool,
    ) -> io::Result<LinkMessage> {
        if self.link(name).await?.is_none() {
            let mut b = LinkBridge::new(name);
            if vlan_filtering {
                b = b.vlan_filtering(true);
            }
            let mut msg = b.up();
            if let Some(m) = mtu {
                msg = msg.mtu(m);
            }
            // Another ADD may have created it concurrently.
            tolerate(
                self.handle.link().add(msg.build()).execute().await,
                libc::EEXIST,
            )?;
        }
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| io::Error::other(format!("bridge {name} vanished")))?;
        if !is_bridge(&link) {
            return Err(io::Error::other(format!(
                "{name} already exists but is not a bridge"
            )));
        }
        let idx = link.header.index;
        let mut set = LinkUnspec::new_with_index(idx).up();
        if promisc {
            set = set.promiscuous(true);
        }
        if !link.header.flags.contains(LinkFlags::Up) || promisc {
            self.handle
                .link()
                .set(set.build())
                .execute()
                .await
                .map_err(io_err)?;
        }
        Ok(link)
    }

    /// Creates a veth pair: `host` here (enslaved to `master`, up) and `peer` moved straight into
    /// the namespace `netns`, in one request.
    pub async fn add_veth(
        &self,
        host: &str,
        peer: &str,
        netns: &std::fs::File,
        master: u32,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> io::Result<()> {
        let mut p = LinkUnspec::new_with_name(peer).setns_by_fd(netns.as_raw_fd());
        if let Some(m) = mtu {
            p = p.mtu(m);
        }
        if let Some(mac) = peer_mac {
            p = p.address(mac.to_vec());
        }
        let mut msg = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .controller(master)
            .up();
        if let Some(m) = mtu {
            msg = msg.mtu(m);
        }
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(io_err)
    }

    /// Turns VLAN filtering on for an existing bridge.
    pub async fn enable_vlan_filtering(&self, name: &str, index: u32) -> io::Result<()> {
        let msg = LinkBridge::new(name)
            .index(index)
            .vlan_filtering(true)
            .build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(io_err)
    }

    /// Makes `vid` the port's untagged PVID (on a VLAN-filtering bridge); with `self_` the VLAN
    /// is added to the bridge device itself, tagged.
    pub async fn bridge_vlan(&self, index: u32, vid: u16, self_: bool) -> io::Result<()> {
        use netlink_packet_route::link::BridgeVlanInfoFlags;
        let mut b = rtnetlink::LinkBridgeVlan::new(index);
        b = if self_ {
            b.vlan(vid, BridgeVlanInfoFlags::empty()).bridge_self()
        } else {
            b.vlan(
                vid,
                BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
            )
        };
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(io_err)
    }

    /// A VLAN interface `name` on `parent` (created if missing, brought up); returns its index.
    pub async fn ensure_vlan(&self, name: &str, parent: u32, vid: u16) -> io::Result<u32> {
        if self.link(name).await?.is_none() {
            let msg = rtnetlink::LinkVlan::new(name, parent, vid).up().build();
            // Another ADD may have created it concurrently.
            tolerate(self.handle.link().add(msg).execute().await, libc::EEXIST)?;
        }
        let l = self
            .link(name)
            .await?
            .ok_or_else(|| io::Error::other(format!("{name} vanished")))?;
        if !l.header.flags.contains(LinkFlags::Up) {
            self.set_up(l.header.index, true).await?;
        }
        Ok(l.header.index)
    }

    pub async fn set_up(&self, index: u32, up: bool) -> io::Result<()> {
        let m = if up {
            LinkUnspec::new_with_index(index).up()
        } else {
            LinkUnspec::new_with_index(index).down()
        };
        self.handle
            .link()
            .set(m.build())
            .execute()
            .await
            .map_err(io_err)
    }

    pub async fn set_hairpin(&self, index: u32) -> io::Result<()> {
        let m = rtnetlink::LinkBridgePort::new(index).hairpin(true).build();
        self.handle
            .link()
            .set_port(m)
            .execute()
            .await
            .map_err(io_err)
    }

    pub async fn del_link(&self, index: u32) -> io::Result<()> {
        tolerate(self.handle.link().del(index).execute().await, libc::ENODEV)
    }

    pub async fn addresses(&self, index: u32) -> io::Result<Vec<IpNetwork>> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(io_err)? {
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    if let Ok(n) = IpNetwork::new(*ip, m.header.prefix_len) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds an address; an address already present is fine.
    pub async fn add_address(&self, index: u32, net: IpNetwork) -> io::Result<()> {
        tolerate(
            self.handle
                .address()
                .add(index, net.ip(), net.prefix())
                .execute()
                .await,
            libc::EEXIST,
        )
    }

    pub async fn del_address(&self, index: u32, net: IpNetwork) -> io::Result<()> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s.try_next().await.map_err(io_err)? {
            let hit = m.header.prefix_len == net.prefix()
                && m.attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == net.ip()));
            if hit {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// Adds a route through `index` (via `gw` when given); an existing one is fine.
    pub async fn add_route(
        &self,
        dst: IpNetwork,
        gw: Option<IpAddr>,
        index: u32,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut b = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .map_err(|e| io::Error::other(format!("route {dst}: {e}")))?
            .output_interface(index);
        if let Some(g) = gw {
            b = b
                .gateway(g)
                .map_err(|e| io::Error::other(format!("route {dst} via {g}: {e}")))?;
        }
        let mut msg = b.build();
        if let Some(m) = mtu {
            msg.attributes
                .push(netlink_packet_route::route::RouteAttribute::Metrics(vec![
                    netlink_packet_route::route::RouteMetric::Mtu(m),
                ]));
        }
        tolerate(self.handle.route().add(msg).execute().await, libc::EEXIST)
    }
}

pub fn vlan_filtering(link: &LinkMessage) -> bool {
    use netlink_packet_route::link::{InfoBridge, LinkInfo};
    link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i,
            LinkInfo::Data(InfoData::Bridge(opts)) if opts.iter().any(|o| matches!(o, InfoBridge::VlanFiltering(true))))))
    })
}

pub fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i,
            netlink_packet_route::link::LinkInfo::Kind(netlink_packet_route::link::InfoKind::Bridge))))
    })
}

pub fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn controller_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    (parts.len() == 6 && s.split(':').count() == 6).then(|| {
        let mut m = [0u8; 6];
        m.copy_from_slice(&parts);
        m
    })
}

/// A current-thread runtime for a plugin's netlink work.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
