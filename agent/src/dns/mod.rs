//! Cluster DNS on every node, in the agent: no CoreDNS pod. The server answers on the cluster
//! DNS address (`--cluster-dns`, which the control plane reserves as `kube-system/kube-dns`)
//! put on this node's loopback (`link`), from a zone built from the watched Services and
//! EndpointSlices (`zone`), and forwards other names to the node's resolvers (`forward`).

pub mod forward;
pub mod link;
pub mod server;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::config::Config;
use crate::services::ServiceCache;
use server::{Server, Step};

/// A TCP client that sends nothing for this long is dropped (CoreDNS: 10 s read timeout).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The node's upstream resolvers: the nameservers of `--resolv-conf` (none when it is unset).
fn upstreams(cfg: &Config) -> Result<Vec<String>> {
    let Some(path) = &cfg.resolv_conf else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} for the DNS upstreams", path.display()))?;
    Ok(k8s_rules::dns::ResolvConf::parse(&text).0.servers)
}

/// Serves the cluster DNS addresses until the process ends; a failure to set them up (the
/// port taken by another server, say) is logged with its cause and tried again.
pub async fn serve(cfg: Arc<Config>, cache: Arc<ServiceCache>) {
    loop {
        match run(cfg.clone(), cache.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!("cluster DNS: {}", crate::util::chain(&*e));
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

/// Puts the addresses in place and binds them; the serving tasks then run until the process
/// ends.
async fn run(cfg: Arc<Config>, cache: Arc<ServiceCache>) -> Result<()> {
    let ips = server::listen_ips(&cfg.cluster_dns);
    if ips.is_empty() {
        return Ok(());
    }
    let v4: Vec<_> = ips
        .iter()
        .filter_map(|i| match i {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .collect();
    let nl = podlet_cni::netlink::Netlink::here().context("netlink")?;
    link::ensure(&nl.handle, &v4)
        .await
        .context("putting the cluster DNS address on lo")?;
    let forwarder = forward::Forwarder::new(&upstreams(&cfg)?, &cfg.cluster_dns);
    if forwarder.upstreams().is_empty() {
        tracing::warn!(
            "no upstream resolvers (--resolv-conf): names outside the cluster get SERVFAIL"
        );
    }
    let srv = Arc::new(Server::new(forwarder, cfg.dns_ttl));
    let mut sockets = Vec::new();
    let mut listeners = Vec::new();
    // One UDP socket per core on each address (SO_REUSEPORT spreads clients over them).
    let per_ip = std::thread::available_parallelism().map_or(2, |n| n.get());
    for ip in &ips {
        let addr = SocketAddr::new(*ip, 53);
        for _ in 0..per_ip {
            sockets.push(udp_socket(addr).with_context(|| format!("binding udp {addr}"))?);
        }
        listeners.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding tcp {addr}"))?,
        );
    }
    tracing::info!(addresses = ?ips, upstreams = ?srv.forwarder.upstreams(), "cluster DNS serving");
    tokio::spawn(follow_zone(cfg.cluster_domain.clone(), cache, srv.clone()));
    for s in sockets {
        tokio::spawn(serve_udp(Arc::new(s), srv.clone()));
    }
    for l in listeners {
        tokio::spawn(serve_tcp(l, srv.clone()));
    }
    Ok(())
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Bursts of queries wait in the kernel rather than being dropped (capped by rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Rebuilds the zone whenever the watched objects change (a burst of changes is one rebuild).
/// A rebuild is followed by a pause as long as it took, so that under a steady stream of
/// changes (thousands of Services created) rebuilds take at most half of a core and the
/// changes of the pause coalesce into the next one.
async fn follow_zone(domain: String, cache: Arc<ServiceCache>, srv: Arc<Server>) {
    let mut changed = cache.subscribe();
    loop {
        let start = std::time::Instant::now();
        let snap = cache.snapshot();
        let zone = zone::Zone::build(&domain, &snap);
        srv.set_zone(zone);
        let took = start.elapsed();
        if took > Duration::from_millis(1) {
            tokio::time::sleep(took).await;
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, srv: Arc<Server>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cluster DNS: receiving: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        match srv.answer_local(&buf[..n], true) {
            Step::Done(out) => {
                let _ = sock.send_to(&out, peer).await;
            }
            Step::Forward(p) => {
                let (sock, srv) = (sock.clone(), srv.clone());
                tokio::spawn(async move {
                    let out = srv.answer_forwarded(*p, true).await;
                    let _ = sock.send_to(&out, peer).await;
                });
            }
            Step::Drop => {}
        }
    }
}

async fn serve_tcp(l: TcpListener, srv: Arc<Server>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(serve_conn(s, srv.clone()));
            }
            Err(e) => {
                tracing::warn!("cluster DNS: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Length-prefixed messages, answered in order, until the client closes or idles.
async fn serve_conn(mut s: TcpStream, srv: Arc<Server>) {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(l)) => usize::from(l),
            _ => return,
        };
        let mut msg = vec![0u8; len];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, s.read_exact(&mut msg)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let out = match srv.answer_local(&msg, false) {
            Step::Done(out) => out,
            Step::Forward(p) => srv.answer_forwarded(*p, false).await,
            Step::Drop => return,
        };
        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// `podlet cleanup`: the cluster DNS addresses go from lo.
pub async fn cleanup() -> std::io::Result<Vec<String>> {
    let nl = podlet_cni::netlink::Netlink::here()?;
    Ok(link::remove(&nl.handle)
        .await?
        .into_iter()
        .map(|ip| format!("the cluster DNS address {ip}/32 on lo ({})", link::LABEL))
        .collect())
}
