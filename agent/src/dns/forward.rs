//! Names outside the cluster: forwarded to the node's resolvers (`--resolv-conf`), one after
//! the other, over UDP and over TCP when an answer comes back truncated, with a cache (CoreDNS'
//! `forward . /etc/resolv.conf` and `cache 30` of the kubeadm Corefile).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets before the next is asked.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Answers are kept at most this long (CoreDNS `cache 30`), negative ones too.
const MAX_TTL: u32 = 30;
/// Entries kept at most; past it the expired go, and if none has, all.
const MAX_ENTRIES: usize = 10_000;

type Key = (String, u16, u16);

struct Entry {
    msg: Message,
    stored: Instant,
    ttl: u32,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Entry>>,
}

impl Forwarder {
    /// Forwards to `servers` on port 53, leaving out the cluster DNS addresses themselves
    /// (a node whose resolv.conf names the cluster DNS must not ask itself).
    pub fn new(servers: &[String], own: &[IpAddr]) -> Self {
        let upstreams = servers
            .iter()
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .filter(|ip| !own.contains(ip))
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        Self::with_upstreams(upstreams)
    }

    pub fn with_upstreams(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream's answer to `q` (from the cache while it lasts): answers, authorities,
    /// additionals and response code; SERVFAIL when no upstream answered.
    pub async fn resolve(&self, q: &Query) -> Message {
        let key = (
            q.name().to_lowercase().to_ascii(),
            u16::from(q.query_type()),
            u16::from(q.query_class()),
        );
        if let Some(m) = self.cached(&key) {
            return m;
        }
        for up in &self.upstreams {
            match ask(*up, q).await {
                Ok(mut m) => {
                    // Clients keep an answer no longer than the cache does.
                    for r in records(&mut m) {
                        r.ttl = r.ttl.min(MAX_TTL);
                    }
                    self.store(key, &m);
                    return m;
                }
                Err(e) => tracing::debug!(upstream = %up, "forwarding {}: {e}", q.name()),
            }
        }
        let mut m = Message::response(0, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = ResponseCode::ServFail;
        m
    }

    fn cached(&self, key: &Key) -> Option<Message> {
        let cache = self.cache.lock().expect("dns cache lock");
        let e = cache.get(key)?;
        let age = e.stored.elapsed().as_secs() as u32;
        if age >= e.ttl {
            return None;
        }
        let mut m = e.msg.clone();
        for r in records(&mut m) {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(m)
    }

    fn store(&self, key: Key, m: &Message) {
        let rcode = m.metadata.response_code;
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            return;
        }
        let ttl = m
            .answers
            .iter()
            .chain(m.authorities.iter())
            .map(|r| r.ttl)
            .min()
            .unwrap_or(MAX_TTL)
            .min(MAX_TTL);
        if ttl == 0 {
            return;
        }
        let mut cache = self.cache.lock().expect("dns cache lock");
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Entry {
                msg: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

fn records(m: &mut Message) -> impl Iterator<Item = &mut hickory_proto::rr::Record> {
    m.answers
        .iter_mut()
        .chain(m.authorities.iter_mut())
        .chain(m.additionals.iter_mut())
}

/// One upstream, UDP then TCP if the answer was truncated.
async fn ask(up: SocketAddr, q: &Query) -> std::io::Result<Message> {
    let mut req = Message::query();
    req.metadata.recursion_desired = true;
    req.add_query(q.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    req.set_edns(edns);
    let bytes = req.to_vec().map_err(std::io::Error::other)?;
    let local: SocketAddr = match up.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let m = loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        // Stray datagrams (an old answer, a spoof) are skipped, as resolvers do.
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == req.metadata.id && m.queries == req.queries => break m,
            _ => continue,
        }
    };
    if !m.metadata.truncation {
        return Ok(m);
    }
    tokio::time::timeout(TIMEOUT, ask_tcp(up, &bytes, req.metadata.id))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer over TCP"))?
}

async fn ask_tcp(up: SocketAddr, bytes: &[u8], id: u16) -> std::io::Result<Message> {
    let mut s = TcpStream::connect(up).await?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await?;
    let len = s.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    let m = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if m.metadata.id != id {
        return Err(std::io::Error::other("answer for another query"));
    }
    Ok(m)
}
