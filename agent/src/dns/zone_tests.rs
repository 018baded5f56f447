use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::services::Snapshot;

fn snap(objs: Vec<serde_json::Value>) -> Snapshot {
    let mut s = Snapshot::default();
    for o in objs {
        let key = (
            o["metadata"]["namespace"].as_str().unwrap().to_string(),
            o["metadata"]["name"].as_str().unwrap().to_string(),
        );
        if o["kind"] == "Service" {
            s.services
                .insert(key, Arc::new(serde_json::from_value(o).unwrap()));
        } else {
            s.slices
                .insert(key, Arc::new(serde_json::from_value(o).unwrap()));
        }
    }
    s.synced = true;
    s
}

fn zone() -> Zone {
    Zone::build(
        "Cluster.Local.",
        &snap(vec![
            json!({"kind": "Service", "metadata": {"namespace": "default", "name": "web"},
                   "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                      {"port": 81}]}}),
            json!({"kind": "Service", "metadata": {"namespace": "db", "name": "pg"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}}),
            json!({"kind": "EndpointSlice", "metadata": {"namespace": "db", "name": "pg-abc",
                       "labels": {"kubernetes.io/service-name": "pg"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
                   "endpoints": [
                       {"addresses": ["10.244.1.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                       {"addresses": ["10.244.2.6"], "conditions": {}},
                       {"addresses": ["10.244.2.7"], "hostname": "pg-2", "conditions": {"ready": false}}]}),
            // Another service's slice in the same namespace is not pg's.
            json!({"kind": "EndpointSlice", "metadata": {"namespace": "db", "name": "other-x",
                       "labels": {"kubernetes.io/service-name": "other"}},
                   "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.9.9"]}]}),
            json!({"kind": "Service", "metadata": {"namespace": "default", "name": "ext"},
                   "spec": {"type": "ExternalName", "externalName": "Example.COM."}}),
            json!({"kind": "Service", "metadata": {"namespace": "default", "name": "empty"},
                   "spec": {"clusterIP": "None"}}),
        ]),
    )
}

fn a(s: &str) -> Rec {
    Rec::A(s.parse().unwrap())
}

#[test]
fn cluster_ip_service_a_srv_ptr() {
    let z = zone();
    assert_eq!(
        z.lookup("web.default.svc.cluster.local", 1),
        Answer::Records(vec![a("10.96.0.20")])
    );
    // An IPv4-only service exists for AAAA: no data, not NXDOMAIN.
    assert_eq!(
        z.lookup("web.default.svc.cluster.local", 28),
        Answer::NoData
    );
    assert_eq!(
        z.lookup("_http._tcp.web.default.svc.cluster.local", 33),
        Answer::Records(vec![Rec::Srv {
            priority: 0,
            weight: 100,
            port: 80,
            target: "web.default.svc.cluster.local".into()
        }])
    );
    assert_eq!(
        z.lookup("20.0.96.10.in-addr.arpa", 12),
        Answer::Records(vec![Rec::Ptr("web.default.svc.cluster.local".into())])
    );
    // Unnamed ports have no SRV name; unknown names are NXDOMAIN; ancestors exist.
    assert_eq!(
        z.lookup("_81._tcp.web.default.svc.cluster.local", 33),
        Answer::NxDomain
    );
    assert_eq!(
        z.lookup("nope.default.svc.cluster.local", 1),
        Answer::NxDomain
    );
    assert_eq!(z.lookup("default.svc.cluster.local", 1), Answer::NoData);
    assert_eq!(z.lookup("svc.cluster.local", 1), Answer::NoData);
    assert_eq!(z.lookup("cluster.local", 1), Answer::NoData);
}

#[test]
fn headless_service_ready_endpoints_hostnames_srv() {
    let z = zone();
    // Ready (and unset, which means ready) endpoints; not the one marked not ready.
    assert_eq!(
        z.lookup("pg.db.svc.cluster.local", 1),
        Answer::Records(vec![a("10.244.1.5"), a("10.244.2.6")])
    );
    assert_eq!(
        z.lookup("pg-0.pg.db.svc.cluster.local", 1),
        Answer::Records(vec![a("10.244.1.5")])
    );
    assert_eq!(
        z.lookup("10-244-2-6.pg.db.svc.cluster.local", 1),
        Answer::Records(vec![a("10.244.2.6")])
    );
    assert_eq!(
        z.lookup("pg-2.pg.db.svc.cluster.local", 1),
        Answer::NxDomain
    );
    let Answer::Records(srv) = z.lookup("_sql._tcp.pg.db.svc.cluster.local", 33) else {
        panic!("no SRV");
    };
    assert_eq!(srv.len(), 2);
    assert!(srv.contains(&Rec::Srv {
        priority: 0,
        weight: 50,
        port: 5432,
        target: "pg-0.pg.db.svc.cluster.local".into()
    }));
    // PTR only for endpoints with a hostname.
    assert_eq!(
        z.lookup("5.1.244.10.in-addr.arpa", 12),
        Answer::Records(vec![Rec::Ptr("pg-0.pg.db.svc.cluster.local".into())])
    );
    assert_eq!(z.lookup("6.2.244.10.in-addr.arpa", 12), Answer::NotOurs);
    // A headless service without endpoints exists, empty.
    assert_eq!(
        z.lookup("empty.default.svc.cluster.local", 1),
        Answer::NoData
    );
}

#[test]
fn external_name_version_pods_and_outside_names() {
    let z = zone();
    assert_eq!(
        z.lookup("ext.default.svc.cluster.local", 1),
        Answer::Records(vec![Rec::Cname("example.com".into())])
    );
    assert_eq!(
        z.lookup("dns-version.cluster.local", 16),
        Answer::Records(vec![Rec::Txt("1.1.0".into())])
    );
    assert_eq!(
        z.lookup("10-244-1-5.default.pod.cluster.local", 1),
        Answer::Records(vec![a("10.244.1.5")])
    );
    assert_eq!(
        z.lookup("10-244-1-5.default.pod.cluster.local", 28),
        Answer::NoData
    );
    assert_eq!(
        z.lookup("fd00--1.default.pod.cluster.local", 28),
        Answer::Records(vec![Rec::Aaaa("fd00::1".parse().unwrap())])
    );
    assert_eq!(
        z.lookup("not-an-ip.default.pod.cluster.local", 1),
        Answer::NxDomain
    );
    assert_eq!(z.lookup("example.com", 1), Answer::NotOurs);
    assert_eq!(z.lookup("notcluster.local", 1), Answer::NotOurs);
    assert_eq!(z.lookup("8.8.8.8.in-addr.arpa", 12), Answer::NotOurs);
}

#[test]
fn reverse_names() {
    assert_eq!(
        reverse_name("10.96.0.1".parse().unwrap()),
        "1.0.96.10.in-addr.arpa"
    );
    let v6 = reverse_name("2001:db8::1".parse().unwrap());
    assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
    assert!(v6.ends_with("8.b.d.0.1.0.0.2.ip6.arpa"), "{v6}");
}
