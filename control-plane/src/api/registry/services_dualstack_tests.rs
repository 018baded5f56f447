//! Dual-stack Services through the in-process apiserver on the embedded store: what creates
//! default and allocate on single-stack, dual-stack and IPv6-only clusters, upstream's refusals,
//! and updates that upgrade, downgrade or try to change the primary address or family.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::testing::cluster::{Answer, Cluster};

const SVCS: &str = "/api/v1/namespaces/default/services";
const V4: &str = "10.96.0.0/24";
const DUAL: &str = "10.96.0.0/24,fd00:10:96::/112";
const DUAL6: &str = "fd00:10:96::/112,10.96.0.0/24";
const V6: &str = "fd00:10:96::/112";

async fn create(c: &Cluster, name: &str, spec: Value) -> Answer {
    let mut spec = spec;
    if spec["type"] != "ExternalName" && spec["ports"].is_null() {
        spec["ports"] = json!([{"port": 80}]);
    }
    let body = json!({"metadata": {"name": name}, "spec": spec});
    c.call(Method::POST, SVCS, Some(&body)).await
}

async fn patch(c: &Cluster, name: &str, patch: Value) -> Answer {
    c.call_as(
        Method::PATCH,
        &format!("{SVCS}/{name}"),
        Some(&patch),
        "application/merge-patch+json",
    )
    .await
}

fn family(ip: &Value) -> &'static str {
    let ip: std::net::IpAddr = ip.as_str().unwrap().parse().unwrap();
    k8s_rules::cidrs::family_name(ip)
}

/// Whether `ip` is free: a service asking for exactly it gets it (and gives it back).
async fn is_free(c: &Cluster, ip: &str) -> bool {
    let probe = create(c, "probe", json!({"clusterIP": ip})).await;
    if probe.code == StatusCode::CREATED {
        c.call(Method::DELETE, &format!("{SVCS}/probe"), None).await;
        return true;
    }
    let m = probe.body["message"].as_str().unwrap_or_default();
    assert!(m.contains("provided IP is already allocated"), "{ip}: {m}");
    false
}

/// What a create must give: the policy, the families, and the given addresses (None: any of
/// the right families, Some([]) none at all).
struct Want {
    policy: Option<&'static str>,
    families: &'static [&'static str],
    ips: Option<&'static [&'static str]>,
}

const fn want(policy: &'static str, families: &'static [&'static str]) -> Want {
    Want {
        policy: Some(policy),
        families,
        ips: None,
    }
}

#[tokio::test]
async fn creates_default_the_ip_fields_and_allocate_each_family() {
    let none: &[&str] = &[];
    let cases: Vec<(&str, Value, Want)> = vec![
        (V4, json!({}), want("SingleStack", &["IPv4"])),
        (DUAL, json!({}), want("SingleStack", &["IPv4"])),
        (DUAL6, json!({}), want("SingleStack", &["IPv6"])),
        (V6, json!({}), want("SingleStack", &["IPv6"])),
        (
            DUAL,
            json!({"ipFamilyPolicy": "PreferDualStack"}),
            want("PreferDualStack", &["IPv4", "IPv6"]),
        ),
        (
            DUAL6,
            json!({"ipFamilyPolicy": "RequireDualStack"}),
            want("RequireDualStack", &["IPv6", "IPv4"]),
        ),
        (
            V4,
            json!({"ipFamilyPolicy": "PreferDualStack"}),
            want("PreferDualStack", &["IPv4"]),
        ),
        (
            DUAL,
            json!({"ipFamilies": ["IPv6"]}),
            want("SingleStack", &["IPv6"]),
        ),
        (
            DUAL,
            json!({"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
            want("PreferDualStack", &["IPv6", "IPv4"]),
        ),
        (
            DUAL,
            json!({"type": "NodePort", "ipFamilyPolicy": "RequireDualStack"}),
            want("RequireDualStack", &["IPv4", "IPv6"]),
        ),
        (
            DUAL,
            json!({"clusterIP": "fd00:10:96::50"}),
            Want {
                policy: Some("SingleStack"),
                families: &["IPv6"],
                ips: Some(&["fd00:10:96::50"]),
            },
        ),
        (
            DUAL,
            json!({"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50", "fd00:10:96::50"],
                      "ipFamilyPolicy": "RequireDualStack"}),
            Want {
                policy: Some("RequireDualStack"),
                families: &["IPv4", "IPv6"],
                ips: Some(&["10.96.0.50", "fd00:10:96::50"]),
            },
        ),
        // The primary address given, the secondary allocated.
        (
            DUAL,
            json!({"clusterIP": "10.96.0.51", "ipFamilyPolicy": "PreferDualStack"}),
            want("PreferDualStack", &["IPv4", "IPv6"]),
        ),
        // Headless: families by policy, no addresses; without a selector both families, even
        // on a single-stack cluster (as upstream).
        (
            V4,
            json!({"clusterIP": "None", "selector": {"app": "x"}}),
            Want {
                policy: Some("SingleStack"),
                families: &["IPv4"],
                ips: Some(&["None"]),
            },
        ),
        (
            V4,
            json!({"clusterIP": "None"}),
            Want {
                policy: Some("RequireDualStack"),
                families: &["IPv4", "IPv6"],
                ips: Some(&["None"]),
            },
        ),
        (
            DUAL6,
            json!({"clusterIP": "None", "selector": {"app": "x"}, "ipFamilyPolicy": "PreferDualStack"}),
            Want {
                policy: Some("PreferDualStack"),
                families: &["IPv6", "IPv4"],
                ips: Some(&["None"]),
            },
        ),
        (
            DUAL,
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
            Want {
                policy: None,
                families: &[],
                ips: Some(none),
            },
        ),
    ];
    for (i, (cidrs, spec, want)) in cases.into_iter().enumerate() {
        let c = Cluster::with_service_cidrs(cidrs).await;
        let a = create(&c, &format!("s{i}"), spec.clone()).await;
        let what = format!("case {i} on {cidrs}: {spec}");
        assert_eq!(a.code, StatusCode::CREATED, "{what}: {}", a.body);
        let s = &a.body["spec"];
        assert_eq!(s["ipFamilyPolicy"].as_str(), want.policy, "{what}: {s}");
        let families: Vec<&str> = s["ipFamilies"]
            .as_array()
            .map(|a| a.iter().map(|f| f.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(families, want.families, "{what}: {s}");
        let ips = s["clusterIPs"].as_array().cloned().unwrap_or_default();
        match want.ips {
            Some(exact) => assert_eq!(
                ips,
                exact.iter().map(|ip| json!(ip)).collect::<Vec<_>>(),
                "{what}"
            ),
            None => {
                let got: Vec<&str> = ips.iter().map(family).collect();
                assert_eq!(got, want.families, "{what}: {s}");
            }
        }
        match ips.first() {
            Some(first) => assert_eq!(&s["clusterIP"], first, "{what}"),
            None => assert!(s["clusterIP"].is_null(), "{what}: {s}"),
        }
        for ip in ips.iter().filter(|ip| *ip != "None") {
            assert!(
                !is_free(&c, ip.as_str().unwrap()).await,
                "{what}: {ip} is not held"
            );
        }
    }
}

#[tokio::test]
async fn a_single_stack_create_without_the_new_fields_is_as_before() {
    let c = Cluster::new().await;
    let a = create(&c, "web", json!({"selector": {"app": "web"}})).await;
    assert_eq!(a.code, StatusCode::CREATED, "{}", a.body);
    let s = a.body["spec"].as_object().unwrap();
    let keys: Vec<&str> = s.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "clusterIP",
            "clusterIPs",
            "internalTrafficPolicy",
            "ipFamilies",
            "ipFamilyPolicy",
            "ports",
            "selector",
            "sessionAffinity",
            "type"
        ]
    );
    assert_eq!(s["clusterIPs"], json!([s["clusterIP"]]));
    assert_eq!(s["ipFamilies"], json!(["IPv4"]));
    assert_eq!(s["ipFamilyPolicy"], "SingleStack");
    assert_eq!(s["internalTrafficPolicy"], "Cluster");
}

#[tokio::test]
async fn upstreams_refusals_with_upstreams_messages() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (V4, json!({"ipFamilyPolicy": "RequireDualStack"}),
            r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#),
        (V4, json!({"ipFamilies": ["IPv6"]}),
            r#"spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster"#),
        (V6, json!({"ipFamilies": ["IPv4"]}),
            r#"spec.ipFamilies[0]: Invalid value: "IPv4": not configured on this cluster"#),
        (V4, json!({"clusterIP": "fd00::5"}),
            r#"spec.clusterIPs[0]: Invalid value: []string{"fd00::5"}: IPv6 is not configured on this cluster"#),
        (DUAL, json!({"ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
            r#"spec.ipFamilies[1]: Duplicate value: "IPv4""#),
        (DUAL, json!({"ipFamilies": ["IPv5"]}),
            r#"spec.ipFamilies[0]: Unsupported value: "IPv5": supported values: "IPv4", "IPv6""#),
        (DUAL, json!({"ipFamilyPolicy": "DualStack"}),
            r#"spec.ipFamilyPolicy: Unsupported value: "DualStack": supported values: "PreferDualStack", "RequireDualStack", "SingleStack""#),
        (DUAL, json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "10.96.0.6"], "ipFamilyPolicy": "RequireDualStack"}),
            r#"spec.clusterIPs: Invalid value: []string{"10.96.0.5", "10.96.0.6"}: may specify no more than one IP for each IP family"#),
        (DUAL, json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00:10:96::5", "10.96.0.6"]}),
            r#"spec.clusterIPs: Invalid value: []string{"10.96.0.5", "fd00:10:96::5", "10.96.0.6"}: may only hold up to 2 values"#),
        (DUAL, json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}),
            r#"spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"#),
        (DUAL, json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00:10:96::5"]}),
            r#"spec.ipFamilyPolicy: Invalid value: "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"#),
        (DUAL, json!({"ipFamilies": ["IPv6"], "clusterIP": "10.96.0.5"}),
            "spec.clusterIPs[0]: Invalid value: \"10.96.0.5\": expected an IPv6 value as indicated by `ipFamilies[0]`"),
        (DUAL, json!({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.6"]}),
            "spec.clusterIPs: Invalid value: []string{\"10.96.0.6\"}: first value must match `clusterIP`"),
        (DUAL, json!({"clusterIPs": ["10.96.0.6"]}),
            "spec.clusterIPs: Invalid value: []string{\"10.96.0.6\"}: must be empty when `clusterIP` is not specified"),
        (DUAL, json!({"clusterIP": "None", "clusterIPs": ["None", "fd00:10:96::5"]}),
            r#"spec.clusterIPs: Invalid value: []string{"None", "fd00:10:96::5"}: 'None' must be the first and only value"#),
        (DUAL, json!({"clusterIP": "10.96.0.300"}),
            r#"spec.clusterIPs[0]: Invalid value: "10.96.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#),
        (DUAL, json!({"type": "NodePort", "clusterIP": "None"}),
            r#"spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services"#),
        (DUAL, json!({"type": "ExternalName", "externalName": "db.example.com", "ipFamilyPolicy": "SingleStack"}),
            "spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services"),
        (DUAL, json!({"type": "ExternalName", "externalName": "db.example.com", "clusterIP": "10.96.0.5"}),
            "spec.clusterIPs: Forbidden: may not be set for ExternalName services"),
        (DUAL, json!({"clusterIP": "10.97.0.5", "ipFamilyPolicy": "PreferDualStack"}),
            r#"spec.clusterIPs: Invalid value: []string{"10.97.0.5", ""}: failed to allocate IP 10.97.0.5: the provided IP (10.97.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/24"#),
        (DUAL, json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:10:97::5"], "ipFamilyPolicy": "PreferDualStack"}),
            r#"spec.clusterIPs: Invalid value: []string{"10.96.0.20", "fd00:10:97::5"}: failed to allocate IP fd00:10:97::5: the provided IP (fd00:10:97::5) is not in the valid range. The range of valid IPs is fd00:10:96::/112"#),
    ];
    for (i, (cidrs, spec, message)) in cases.into_iter().enumerate() {
        let c = Cluster::with_service_cidrs(cidrs).await;
        let name = format!("s{i}");
        let a = create(&c, &name, spec.clone()).await;
        let what = format!("case {i} on {cidrs}: {spec}");
        assert_eq!(
            a.code,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            a.body
        );
        assert_eq!(
            a.body["message"],
            format!("Service \"{name}\" is invalid: {message}"),
            "{what}"
        );
        assert_eq!(
            a.body["details"]["causes"][0]["field"],
            message.split(':').next().unwrap(),
            "{what}"
        );
    }
    // A failed dual-stack create gives back the address it had taken.
    let c = Cluster::with_service_cidrs(DUAL).await;
    let a = create(
        &c,
        "half",
        json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:10:97::5"],
        "ipFamilyPolicy": "PreferDualStack"}),
    )
    .await;
    assert_eq!(a.code, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    assert!(is_free(&c, "10.96.0.20").await);
}

#[tokio::test]
async fn updates_upgrade_and_downgrade_and_keep_the_primary() {
    let c = Cluster::with_service_cidrs(DUAL).await;
    let a = create(&c, "web", json!({"selector": {"app": "web"}})).await;
    assert_eq!(a.code, StatusCode::CREATED, "{}", a.body);
    let primary = a.body["spec"]["clusterIP"].as_str().unwrap().to_string();

    // SingleStack → PreferDualStack: the secondary family and an address of it.
    let up = patch(
        &c,
        "web",
        json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
    )
    .await;
    assert_eq!(up.code, StatusCode::OK, "{}", up.body);
    let s = &up.body["spec"];
    assert_eq!(s["ipFamilies"], json!(["IPv4", "IPv6"]));
    assert_eq!(s["clusterIPs"][0], primary.as_str());
    let secondary = s["clusterIPs"][1].as_str().unwrap().to_string();
    assert_eq!(family(&s["clusterIPs"][1]), "IPv6");
    assert!(!is_free(&c, &secondary).await);

    // Sent again whole, or without the new fields (an older client's PUT): unchanged.
    let mut again = up.body.clone();
    let put = c
        .call(Method::PUT, &format!("{SVCS}/web"), Some(&again))
        .await;
    assert_eq!(put.code, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["spec"], up.body["spec"]);
    for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        again["spec"].as_object_mut().unwrap().remove(f);
    }
    again["metadata"]["resourceVersion"] = put.body["metadata"]["resourceVersion"].clone();
    let put = c
        .call(Method::PUT, &format!("{SVCS}/web"), Some(&again))
        .await;
    assert_eq!(put.code, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["spec"], up.body["spec"]);

    // Fewer addresses without SingleStack: refused, in upstream's words.
    let refused = patch(&c, "web", json!({"spec": {"clusterIPs": [primary]}})).await;
    assert_eq!(
        refused.code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(
        refused.body["message"],
        "Service \"web\" is invalid: spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be 'SingleStack' to release the secondary cluster IP"
    );
    // The primary address and family never change (another address than the random one the
    // service got).
    let other = ["10.96.0.77", "10.96.0.78"]
        .into_iter()
        .find(|a| *a != primary)
        .unwrap();
    let moved = patch(
        &c,
        "web",
        json!({"spec": {"clusterIP": other, "clusterIPs": [other, secondary]}}),
    )
    .await;
    assert_eq!(
        moved.code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        moved.body
    );
    assert_eq!(
        moved.body["message"],
        format!("Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{{\"{other}\", \"{secondary}\"}}: may not change once set")
    );
    let swapped = patch(&c, "web", json!({"spec": {"ipFamilies": ["IPv6", "IPv4"], "clusterIPs": [secondary, primary], "clusterIP": secondary}})).await;
    assert_eq!(
        swapped.code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        swapped.body
    );
    let fields: Vec<&Value> = swapped.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["field"])
        .collect();
    assert_eq!(
        fields,
        [
            &json!("spec.clusterIPs[0]"),
            &json!("spec.clusterIPs[1]"),
            &json!("spec.ipFamilies[0]"),
            &json!("spec.ipFamilies[0]")
        ]
    );
    assert!(swapped.body["message"].as_str().unwrap().contains(
        r#"spec.ipFamilies[0]: Invalid value: []core.IPFamily{"IPv6", "IPv4"}: may not change once set"#), "{}", swapped.body);

    // → SingleStack: the secondary is trimmed and given back.
    let down = patch(
        &c,
        "web",
        json!({"spec": {"ipFamilyPolicy": "SingleStack"}}),
    )
    .await;
    assert_eq!(down.code, StatusCode::OK, "{}", down.body);
    let s = &down.body["spec"];
    assert_eq!(s["clusterIPs"], json!([primary]));
    assert_eq!(s["ipFamilies"], json!(["IPv4"]));
    assert!(
        is_free(&c, &secondary).await,
        "the secondary address is released"
    );
    assert!(!is_free(&c, &primary).await);

    // RequireDualStack again, then deleted: every family's address is given back.
    let up = patch(
        &c,
        "web",
        json!({"spec": {"ipFamilyPolicy": "RequireDualStack"}}),
    )
    .await;
    assert_eq!(up.code, StatusCode::OK, "{}", up.body);
    let secondary = up.body["spec"]["clusterIPs"][1]
        .as_str()
        .unwrap()
        .to_string();
    let gone = c.call(Method::DELETE, &format!("{SVCS}/web"), None).await;
    assert_eq!(gone.code, StatusCode::OK, "{}", gone.body);
    assert!(is_free(&c, &primary).await && is_free(&c, &secondary).await);
}

#[tokio::test]
async fn turning_external_name_gives_every_address_back_and_back_allocates() {
    let c = Cluster::with_service_cidrs(DUAL6).await;
    let a = create(&c, "db", json!({"ipFamilyPolicy": "PreferDualStack"})).await;
    assert_eq!(a.code, StatusCode::CREATED, "{}", a.body);
    let ips: Vec<String> = a.body["spec"]["clusterIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 2);
    let ext = patch(
        &c,
        "db",
        json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
    )
    .await;
    assert_eq!(ext.code, StatusCode::OK, "{}", ext.body);
    for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        assert!(ext.body["spec"][f].is_null(), "{f}: {}", ext.body["spec"]);
    }
    for ip in &ips {
        assert!(is_free(&c, ip).await, "{ip}");
    }
    let back = patch(
        &c,
        "db",
        json!({"spec": {"type": "ClusterIP", "externalName": null}}),
    )
    .await;
    assert_eq!(back.code, StatusCode::OK, "{}", back.body);
    let s = &back.body["spec"];
    assert_eq!(s["ipFamilyPolicy"], "SingleStack");
    assert_eq!(s["ipFamilies"], json!(["IPv6"]));
    assert_eq!(family(&s["clusterIP"]), "IPv6");
    assert!(!is_free(&c, s["clusterIP"].as_str().unwrap()).await);
}

#[tokio::test]
async fn a_headless_service_stored_without_cluster_ips_still_updates() {
    let c = Cluster::new().await;
    // As podlet stored headless services before dual-stack: no clusterIPs, no families.
    let old = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "old", "namespace": "default", "uid": "u1",
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": "None", "selector": {"app": "old"},
                 "sessionAffinity": "None", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}});
    let key = crate::api::resources::SERVICES.key(Some("default"), "old");
    c.store()
        .create(&key, serde_json::to_vec(&old).unwrap())
        .await
        .unwrap();
    let a = patch(&c, "old", json!({"metadata": {"labels": {"x": "y"}}})).await;
    assert_eq!(a.code, StatusCode::OK, "{}", a.body);
    let s = &a.body["spec"];
    assert_eq!(s["clusterIPs"], json!(["None"]));
    assert_eq!(s["ipFamilyPolicy"], "SingleStack");
    assert_eq!(s["ipFamilies"], json!(["IPv4"]));
    // And a whole PUT without clusterIPs, as an older client sends it.
    let mut put = old.clone();
    put["metadata"]["resourceVersion"] = a.body["metadata"]["resourceVersion"].clone();
    let b = c
        .call(Method::PUT, &format!("{SVCS}/old"), Some(&put))
        .await;
    assert_eq!(b.code, StatusCode::OK, "{}", b.body);
    assert_eq!(b.body["spec"]["clusterIPs"], json!(["None"]));
}
