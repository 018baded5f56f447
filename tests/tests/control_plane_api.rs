//! End-to-end: the API on the wire: raw bad requests, conflicts and pagination, and the
//! official Python client.

use podlet_e2e::apiserver::{status, ControlPlane};

#[test]
fn bad_requests_get_status_errors_and_store_nothing() {
    let cp = ControlPlane::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    let post = |path: &str, body: &[u8]| cp.http("POST", path, "application/json", body);

    let (code, body) = post(cms, b"{not json");
    assert_eq!(
        (code, status(&body)["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    let (code, body) = post(
        cms,
        br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#,
    );
    assert_eq!(code, 400, "{body}");
    let big = vec![b'a'; 10 << 20];
    let (code, body) = post(cms, &big);
    assert_eq!(
        (code, status(&body)["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );
    let (code, body) = post(
        cms,
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"-Not-DNS-"}}"#,
    );
    let s = status(&body);
    assert_eq!(
        (code, s["reason"].as_str()),
        (422, Some("Invalid")),
        "{body}"
    );
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
    let (code, body) = post(
        &format!("{cms}?fieldValidation=Strict"),
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"s"},"dataa":{}}"#,
    );
    assert_eq!(code, 400);
    assert!(body.contains("unknown field \\\"dataa\\\""), "{body}");
    let (code, body) = post(
        "/api/v1/namespaces/nope/configmaps",
        br#"{"metadata":{"name":"a"}}"#,
    );
    assert_eq!(
        (code, status(&body)["message"].as_str()),
        (404, Some("namespaces \"nope\" not found"))
    );

    // Conflicts: duplicates and stale updates.
    let (code, body) = post(cms, br#"{"metadata":{"name":"good"},"data":{"a":"1"}}"#);
    assert_eq!(code, 201, "{body}");
    let created = status(&body);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = post(cms, br#"{"metadata":{"name":"good"}}"#);
    assert_eq!(
        (code, status(&body)["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let update = |rv: &str, a: &str| {
        cp.http(
            "PUT",
            &format!("{cms}/good"),
            "application/json",
            format!(
                r#"{{"metadata":{{"name":"good","resourceVersion":"{rv}"}},"data":{{"a":"{a}"}}}}"#
            )
            .as_bytes(),
        )
    };
    assert_eq!(update(&rv, "2").0, 200);
    let (code, body) = update(&rv, "3");
    let s = status(&body);
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")));
    assert!(s["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));
    let (code, body) = cp.http("GET", &format!("{cms}/missing"), "", b"");
    assert_eq!(
        (code, status(&body)["details"]["name"].as_str()),
        (404, Some("missing"))
    );

    // Only the one good object made it (beside the cluster CA every namespace has).
    let (_, body) = cp.http("GET", cms, "", b"");
    let list = status(&body);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["good", "kube-root-ca.crt"]);
    assert_eq!(list["items"][0]["data"]["a"], "2");

    // Pagination: limit and continue walk the whole list.
    for i in 0..5 {
        post(
            cms,
            format!(r#"{{"metadata":{{"name":"page-{i}"}}}}"#).as_bytes(),
        );
    }
    let mut seen = Vec::new();
    let mut cont = String::new();
    loop {
        let (_, body) = cp.http("GET", &format!("{cms}?limit=2&continue={cont}"), "", b"");
        let l = status(&body);
        seen.extend(
            l["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match l["metadata"]["continue"].as_str() {
            Some(c) => {
                cont = c
                    .replace('=', "%3D")
                    .replace('+', "%2B")
                    .replace('/', "%2F")
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
}

#[test]
fn the_official_python_client_works() {
    let cp = ControlPlane::start();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(podlet_e2e::workspace().join("tests/python/client.py"))
        .arg(cp.kubeconfig())
        .output()
        .expect("running /usr/bin/python3 (hack/deps.sh installs python3-kubernetes)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("ok"), "{text}");
}
