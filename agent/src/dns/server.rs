//! DNS messages in and out: cluster names from the `Zone`, everything else through the
//! `Forwarder`. Answers for cluster names are made without waiting (the UDP loop answers them
//! inline); only forwarded questions go to a task.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::forward::Forwarder;
use super::zone::{Answer, Rec, Zone};

/// How many CNAMEs inside the zone are followed before giving up (a loop of ExternalNames).
const MAX_CHAIN: usize = 8;
/// The payload a UDP answer may have when the question carried no EDNS (RFC 1035).
const CLASSIC_UDP: usize = 512;
/// The EDNS payload advertised and honoured at most (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

pub struct Server {
    zone: RwLock<Arc<Zone>>,
    pub forwarder: Forwarder,
    ttl: u32,
}

/// A question that needs the upstream: the parsed request and what is known so far.
pub struct Pending {
    req: Message,
    /// Records already answered (a CNAME chain out of the zone).
    answers: Vec<Record>,
    /// The question to forward (the original, or the CNAME target).
    ask: Query,
}

/// The outcome of the inline step.
pub enum Step {
    Done(Vec<u8>),
    Forward(Box<Pending>),
    /// Not worth an answer (too short to carry an ID).
    Drop,
}

impl Server {
    pub fn new(forwarder: Forwarder, ttl: u32) -> Self {
        Self {
            zone: RwLock::new(Arc::new(Zone::default())),
            forwarder,
            ttl,
        }
    }

    pub fn set_zone(&self, z: Zone) {
        *self.zone.write().expect("zone lock") = Arc::new(z);
    }

    fn zone(&self) -> Arc<Zone> {
        self.zone.read().expect("zone lock").clone()
    }

    /// Answers `bytes` if the cluster zone can; `udp` bounds the answer's size.
    pub fn answer_local(&self, bytes: &[u8], udp: bool) -> Step {
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) if bytes.len() >= 2 => {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return m.to_vec().map(Step::Done).unwrap_or(Step::Drop);
            }
            Err(_) => return Step::Drop,
        };
        if req.metadata.message_type != MessageType::Query {
            return Step::Drop;
        }
        let refuse = |code| {
            let mut m = response(&req);
            m.metadata.response_code = code;
            encode(m, &req, udp)
        };
        if req.metadata.op_code != OpCode::Query {
            return Step::Done(refuse(ResponseCode::NotImp));
        }
        if req.queries.len() != 1 {
            return Step::Done(refuse(ResponseCode::FormErr));
        }
        let zone = self.zone();
        let mut answers = Vec::new();
        let mut ask = req.queries[0].clone();
        for _ in 0..MAX_CHAIN {
            let name = lower(ask.name());
            let qtype = u16::from(ask.query_type());
            match zone.lookup(&name, qtype) {
                Answer::NotOurs => {
                    return Step::Forward(Box::new(Pending { req, answers, ask }));
                }
                Answer::Records(recs) => {
                    let mut next = None;
                    for r in recs {
                        if let (Rec::Cname(t), false) = (&r, ask.query_type() == RecordType::CNAME)
                        {
                            next = Some(t.clone());
                        }
                        answers.push(Record::from_rdata(ask.name().clone(), self.ttl, rdata(&r)));
                    }
                    match next.and_then(|t| Name::from_ascii(format!("{t}.")).ok()) {
                        Some(target) => ask = Query::query(target, ask.query_type()),
                        None => {
                            let mut m = response(&req);
                            m.metadata.authoritative = true;
                            m.answers = answers;
                            return Step::Done(encode(m, &req, udp));
                        }
                    }
                }
                Answer::NotReady => return Step::Done(refuse(ResponseCode::ServFail)),
                a @ (Answer::NoData | Answer::NxDomain) => {
                    let mut m = response(&req);
                    m.metadata.authoritative = true;
                    let apex = name == zone.domain;
                    if apex && ask.query_type() == RecordType::SOA {
                        answers.push(self.soa(&zone));
                    } else {
                        m.authorities.push(self.soa(&zone));
                        if a == Answer::NxDomain {
                            m.metadata.response_code = ResponseCode::NXDomain;
                        }
                    }
                    m.answers = answers;
                    return Step::Done(encode(m, &req, udp));
                }
            }
        }
        Step::Done(refuse(ResponseCode::ServFail))
    }

    /// Finishes a question the zone left to the upstream resolvers.
    pub async fn answer_forwarded(&self, p: Pending, udp: bool) -> Vec<u8> {
        let up = self.forwarder.resolve(&p.ask).await;
        let mut m = response(&p.req);
        m.metadata.response_code = up.metadata.response_code;
        m.answers = p.answers;
        m.answers.extend(up.answers);
        m.authorities = up.authorities;
        m.additionals = up.additionals;
        encode(m, &p.req, udp)
    }

    /// The zone's SOA (CoreDNS' form: `ns.dns.<zone>`, `hostmaster.<zone>`); its minimum is
    /// the TTL, which bounds how long a negative answer is cached.
    fn soa(&self, zone: &Zone) -> Record {
        let apex = Name::from_ascii(format!("{}.", zone.domain)).unwrap_or_else(|_| Name::root());
        let n = |p: &str| Name::from_ascii(format!("{p}.{}.", zone.domain)).unwrap_or_default();
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa = SOA::new(
            n("ns.dns"),
            n("hostmaster"),
            serial,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Record::from_rdata(apex, self.ttl, RData::SOA(soa))
    }
}

fn lower(n: &Name) -> String {
    let s = n.to_ascii().to_ascii_lowercase();
    match s.strip_suffix('.') {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => s,
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(format!("{s}.")).unwrap_or_default()
}

fn rdata(r: &Rec) -> RData {
    match r {
        Rec::A(ip) => RData::A((*ip).into()),
        Rec::Aaaa(ip) => RData::AAAA((*ip).into()),
        Rec::Cname(t) => RData::CNAME(CNAME(name(t))),
        Rec::Ptr(t) => RData::PTR(PTR(name(t))),
        Rec::Txt(t) => RData::TXT(TXT::new(vec![t.clone()])),
        Rec::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target))),
    }
}

/// A response to `req`: its ID, question and RD bit, recursion available, EDNS answered with
/// EDNS.
fn response(req: &Message) -> Message {
    let mut m = Message::response(req.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(e);
    }
    m
}

/// The wire form; over UDP, cut to the question with TC set when it does not fit the
/// client's payload size (it asks again over TCP).
fn encode(m: Message, req: &Message, udp: bool) -> Vec<u8> {
    let bytes = m.to_vec().unwrap_or_default();
    let limit = req
        .edns
        .as_ref()
        .map(|e| usize::from(e.max_payload().min(EDNS_PAYLOAD)))
        .unwrap_or(CLASSIC_UDP)
        .max(CLASSIC_UDP);
    if !udp || bytes.len() <= limit {
        return bytes;
    }
    m.truncate().to_vec().unwrap_or_default()
}

/// The addresses the server listens on: the IPv4 cluster DNS addresses.
pub fn listen_ips(cluster_dns: &[IpAddr]) -> Vec<IpAddr> {
    cluster_dns
        .iter()
        .copied()
        .filter(IpAddr::is_ipv4)
        .collect()
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
