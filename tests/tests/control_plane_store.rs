//! End-to-end: the apiserver's storage: restarts of the embedded store, compaction, and two
//! apiservers sharing one real etcd.

use podlet_e2e::apiserver::{status, wait_until, ControlPlane};

#[test]
fn embedded_store_survives_a_kill_and_watches_resume_or_expire() {
    let mut cp = ControlPlane::start_with(&["--etcd-compaction-interval", "1s"]);
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, body) = cp.http(
        "POST",
        cms,
        "application/json",
        br#"{"metadata":{"name":"a"},"data":{"v":"1"}}"#,
    );
    let rv1 = status(&body)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, body) = cp.http(
        "PUT",
        &format!("{cms}/a"),
        "application/json",
        br#"{"metadata":{"name":"a"},"data":{"v":"2"}}"#,
    );
    let rv2 = status(&body)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    cp.restart();
    let (_, body) = cp.http("GET", &format!("{cms}/a"), "", b"");
    let a = status(&body);
    assert_eq!(
        (
            a["data"]["v"].as_str(),
            a["metadata"]["resourceVersion"].as_str()
        ),
        (Some("2"), Some(rv2.as_str()))
    );
    // A watch from the first version replays the change after it.
    let (code, body) = cp.http(
        "GET",
        &format!("{cms}?watch=true&resourceVersion={rv1}&timeoutSeconds=1"),
        "",
        b"",
    );
    assert_eq!(code, 200);
    assert!(
        body.contains("\"MODIFIED\"") && body.contains(&format!("\"resourceVersion\":\"{rv2}\"")),
        "{body}"
    );

    // Compaction runs every second here: soon rv1 is history, and a watch from it gets 410
    // inside the stream.
    for i in 0..3 {
        cp.http(
            "PUT",
            &format!("{cms}/a"),
            "application/json",
            format!(r#"{{"metadata":{{"name":"a"}},"data":{{"v":"{i}"}}}}"#).as_bytes(),
        );
    }
    wait_until("compaction", || {
        let (_, body) = cp.http(
            "GET",
            &format!("{cms}?watch=true&resourceVersion={rv1}&timeoutSeconds=1"),
            "",
            b"",
        );
        body.contains("\"ERROR\"")
            && body.contains("\"code\":410")
            && body.contains("too old resource version")
    });
}

#[test]
fn two_apiservers_share_one_etcd() {
    let Some(etcd) = podlet_control_plane::testing::EtcdServer::start() else {
        return;
    };
    let a = ControlPlane::start_with(&["--etcd-servers", &etcd.url()]);
    let b = ControlPlane::start_with(&["--etcd-servers", &etcd.url()]);
    let out = a.kubectl(33, &["create", "configmap", "shared", "--from-literal=k=v"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rv_a = a
        .kubectl(
            33,
            &[
                "get",
                "cm",
                "shared",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
        )
        .stdout;
    let rv_b = b
        .kubectl(
            27,
            &[
                "get",
                "cm",
                "shared",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
        )
        .stdout;
    assert!(!rv_a.is_empty());
    assert_eq!(rv_a, rv_b, "both read etcd's revision");
    // A watch on B sees a write made through A.
    let out = a.kubectl(33, &["label", "cm", "shared", "via=a"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, body) = b.http(
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv_a}&timeoutSeconds=1"
        ),
        "",
        b"",
    );
    assert!(
        body.contains("\"MODIFIED\"") && body.contains("\"via\":\"a\""),
        "{body}"
    );
    // Stale writes conflict across apiservers too.
    let (code, _) = b.http(
        "PUT",
        "/api/v1/namespaces/default/configmaps/shared",
        "application/json",
        format!(r#"{{"metadata":{{"name":"shared","resourceVersion":"{rv_a}"}}}}"#).as_bytes(),
    );
    assert_eq!(code, 409);
}
