use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::json;

use super::*;
use crate::dns::forward::Forwarder;
use crate::services::Snapshot;

fn snapshot(endpoints: usize) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Default::default()
    };
    let svc = |name: &str, spec: serde_json::Value| {
        let v = json!({"metadata": {"namespace": "default", "name": name}, "spec": spec});
        (
            ("default".to_string(), name.to_string()),
            Arc::new(serde_json::from_value(v).unwrap()),
        )
    };
    s.services.extend([
        svc("web", json!({"clusterIP": "10.96.0.20"})),
        svc("many", json!({"clusterIP": "None"})),
        svc(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.test"}),
        ),
    ]);
    let eps: Vec<_> = (0..endpoints)
        .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 200, i % 200 + 1)]}))
        .collect();
    let slice = json!({"metadata": {"namespace": "default", "name": "many-1",
                           "labels": {"kubernetes.io/service-name": "many"}},
                       "addressType": "IPv4", "endpoints": eps});
    s.slices.insert(
        ("default".into(), "many-1".into()),
        Arc::new(serde_json::from_value(slice).unwrap()),
    );
    s
}

fn server(upstream: Option<SocketAddr>, endpoints: usize) -> Server {
    let srv = Server::new(Forwarder::with_upstreams(upstream.into_iter().collect()), 5);
    srv.set_zone(Zone::build("cluster.local", &snapshot(endpoints)));
    srv
}

fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn done(s: Step) -> Message {
    match s {
        Step::Done(b) => Message::from_vec(&b).unwrap(),
        _ => panic!("not answered locally"),
    }
}

#[test]
fn cluster_names_answered_authoritatively() {
    let srv = server(None, 3);
    let m = done(srv.answer_local(
        &query("WEB.default.svc.cluster.local.", RecordType::A, None),
        true,
    ));
    assert_eq!(m.metadata.id, 4242);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 5);
    assert_eq!(m.answers[0].data, RData::A("10.96.0.20".parse().unwrap()));
    // The owner name is the question's, as asked.
    assert_eq!(
        m.answers[0].name.to_ascii(),
        "WEB.default.svc.cluster.local."
    );

    let nx = done(srv.answer_local(
        &query("nope.default.svc.cluster.local.", RecordType::A, None),
        true,
    ));
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(nx.authorities[0].name.to_ascii(), "cluster.local.");

    let nodata = done(srv.answer_local(
        &query("web.default.svc.cluster.local.", RecordType::AAAA, None),
        true,
    ));
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities.len(), 1);

    let soa = done(srv.answer_local(&query("cluster.local.", RecordType::SOA, None), true));
    assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
}

#[test]
fn big_answers_truncate_over_udp_only() {
    let srv = server(None, 100);
    let q = query("many.default.svc.cluster.local.", RecordType::A, None);
    let udp = done(srv.answer_local(&q, true));
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    let tcp = done(srv.answer_local(&q, false));
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
    // An EDNS client with room gets what fits its size (100 × 16 bytes > 1232: still cut).
    let small = done(srv.answer_local(
        &query("many.default.svc.cluster.local.", RecordType::A, Some(4096)),
        true,
    ));
    assert!(small.metadata.truncation);
    assert!(small.edns.is_some());
    let srv = server(None, 40);
    let fits = done(srv.answer_local(
        &query("many.default.svc.cluster.local.", RecordType::A, Some(4096)),
        true,
    ));
    assert!(!fits.metadata.truncation);
    assert_eq!(fits.answers.len(), 40);
}

#[test]
fn garbage_and_unsynced() {
    let srv = server(None, 1);
    let m = done(srv.answer_local(&[0x12, 0x34, 0xff], true));
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(matches!(srv.answer_local(&[1], true), Step::Drop));
    let cold = Server::new(Forwarder::with_upstreams(vec![]), 5);
    cold.set_zone(Zone::build("cluster.local", &Snapshot::default()));
    let m = done(cold.answer_local(
        &query("web.default.svc.cluster.local.", RecordType::A, None),
        true,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

/// A real upstream on loopback: answers every A question with 192.0.2.7 (TTL 60), counting.
async fn stub_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut m = Message::response(req.metadata.id, req.metadata.op_code);
            m.queries = req.queries.clone();
            let q = &req.queries[0];
            if q.name().to_ascii() == "missing.test." {
                m.metadata.response_code = ResponseCode::NXDomain;
            } else {
                m.answers.push(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A("192.0.2.7".parse().unwrap()),
                ));
            }
            sock.send_to(&m.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, count)
}

async fn ask(srv: &Server, name: &str, t: RecordType) -> Message {
    match srv.answer_local(&query(name, t, None), true) {
        Step::Forward(p) => Message::from_vec(&srv.answer_forwarded(*p, true).await).unwrap(),
        Step::Done(b) => Message::from_vec(&b).unwrap(),
        Step::Drop => panic!("dropped"),
    }
}

#[tokio::test]
async fn other_names_forwarded_and_cached() {
    let (up, count) = stub_upstream().await;
    let srv = server(Some(up), 1);
    let m = ask(&srv, "www.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.id, 4242);
    assert!(!m.metadata.authoritative && m.metadata.recursion_available);
    assert_eq!(m.answers[0].data, RData::A("192.0.2.7".parse().unwrap()));
    // Kept 30 s at most, whatever the upstream's TTL.
    let again = ask(&srv, "WWW.example.test.", RecordType::A).await;
    assert_eq!(again.answers.len(), 1);
    assert!(again.answers[0].ttl <= 30);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the second came from the cache"
    );
    let nx = ask(&srv, "missing.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    // An ExternalName service: its CNAME, then the target's address from upstream.
    let ext = ask(&srv, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(ext.answers.len(), 2, "{ext:?}");
    assert_eq!(ext.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(ext.answers[1].name.to_ascii(), "example.test.");
    // No upstream answering: SERVFAIL.
    let dead = Server::new(
        Forwarder::with_upstreams(vec!["127.0.0.1:9".parse().unwrap()]),
        5,
    );
    dead.set_zone(Zone::build("cluster.local", &snapshot(1)));
    let m = ask(&dead, "www.example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}
