//! End-to-end: the control plane's work on workloads: scheduling, limit ranges and quotas,
//! garbage collection, and services' cluster IPs.

use std::time::Duration;

use podlet_e2e::apiserver::{ok, status, wait_until, ControlPlane};

#[test]
fn kubectl_run_lands_on_a_node_that_fits() {
    let cp = ControlPlane::start();
    let node = |name: &str, cpu: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}}}\nspec:\n{extra}status:\n  capacity: {{cpu: \"{cpu}\", memory: 4Gi, pods: \"110\"}}\n  allocatable: {{cpu: \"{cpu}\", memory: 4Gi, pods: \"110\"}}\n")
    };
    let nodes = [
        node("small", "1", "  {}\n"),
        node(
            "big",
            "4",
            "  taints: [{key: dedicated, value: gpu, effect: NoSchedule}]\n",
        ),
        node("cordoned", "8", "  unschedulable: true\n"),
    ]
    .join("---\n");
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(&nodes)),
        "nodes",
    );
    let where_is = |pod: &str| {
        cp.kubectl(33, &["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
            .stdout
    };
    // Fits only on "small": "big" is tainted and "cordoned" is cordoned.
    ok(
        &cp.kubectl(33, &["run", "a", "--image=busybox:1.36", "--restart=Never"]),
        "run a",
    );
    wait_until("a to be bound", || where_is("a") == "small");
    // Too big for "small"; tolerating the taint, it goes to "big".
    let big = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\nspec:\n  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n  containers:\n  - name: c\n    image: busybox:1.36\n    resources: {requests: {cpu: \"2\"}}\n";
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(big)),
        "pod b",
    );
    wait_until("b to be bound", || where_is("b") == "big");
    // Fits nowhere: Unschedulable with kube-scheduler's message, then placed once a node fits.
    let huge = big
        .replace("name: b", "name: huge")
        .replace("cpu: \"2\"", "cpu: \"6\"");
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(&huge)),
        "pod huge",
    );
    wait_until("huge to be unschedulable", || {
        cp.kubectl(
            33,
            &[
                "get",
                "pod",
                "huge",
                "-o",
                "jsonpath={.status.conditions[0].reason}",
            ],
        )
        .stdout
            == "Unschedulable"
    });
    let msg = cp
        .kubectl(
            33,
            &[
                "get",
                "pod",
                "huge",
                "-o",
                "jsonpath={.status.conditions[0].message}",
            ],
        )
        .stdout;
    assert!(
        msg.starts_with("0/3 nodes are available:")
            && msg.contains("Insufficient cpu")
            && msg.contains("node(s) were unschedulable"),
        "{msg}"
    );
    ok(&cp.kubectl(33, &["uncordon", "cordoned"]), "uncordon");
    wait_until("huge to be bound", || where_is("huge") == "cordoned");
    let cs = ok(&cp.kubectl(33, &["get", "cs"]), "get cs");
    assert!(cs.contains("scheduler") && cs.contains("Healthy"), "{cs}");
}

#[test]
fn limit_ranges_and_resource_quotas_are_enforced() {
    let cp = ControlPlane::start();
    let setup = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: q\n---\napiVersion: v1\nkind: LimitRange\nmetadata:\n  name: lr\n  namespace: q\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m}\n    defaultRequest: {cpu: 250m}\n    max: {cpu: \"1\"}\n---\napiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: compute\n  namespace: q\nspec:\n  hard: {pods: \"2\", requests.cpu: 600m}\n";
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(setup)),
        "setup",
    );
    let kq = |args: &[&str]| {
        let mut a = vec!["-n", "q"];
        a.extend_from_slice(args);
        cp.kubectl(33, &a)
    };
    ok(
        &kq(&["run", "a", "--image=busybox:1.36", "--restart=Never"]),
        "run a",
    );
    assert_eq!(
        ok(
            &kq(&[
                "get",
                "pod",
                "a",
                "-o",
                "jsonpath={.spec.containers[0].resources}"
            ]),
            "defaults"
        ),
        r#"{"limits":{"cpu":"500m"},"requests":{"cpu":"250m"}}"#
    );
    ok(
        &kq(&["run", "b", "--image=busybox:1.36", "--restart=Never"]),
        "run b",
    );
    let c = kq(&["run", "c", "--image=busybox:1.36", "--restart=Never"]);
    assert!(
        c.stderr.contains("pods \"c\" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=250m, used: pods=2,requests.cpu=500m, limited: pods=2,requests.cpu=600m"),
        "{}",
        c.stderr
    );
    let used = ok(
        &kq(&["get", "quota", "compute", "-o", "jsonpath={.status.used}"]),
        "quota status",
    );
    assert_eq!(used, r#"{"pods":"2","requests.cpu":"500m"}"#);
    ok(&kq(&["delete", "pod", "b"]), "delete b");
    let big = kq(&[
        "run",
        "big",
        "--image=busybox:1.36",
        "--restart=Never",
        "--overrides",
        r#"{"spec":{"containers":[{"name":"big","image":"busybox:1.36","resources":{"limits":{"cpu":"2"}}}]}}"#,
    ]);
    assert!(
        big.stderr
            .contains("maximum cpu usage per Container is 1, but limit is 2"),
        "{}",
        big.stderr
    );
}

#[test]
fn deleting_an_owner_cascades_orphans_or_waits_as_asked() {
    let cp = ControlPlane::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    let create = |name: &str, owner: Option<(&str, &str)>, finalizer: bool| -> String {
        let mut meta = serde_json::json!({"name": name});
        if let Some((oname, uid)) = owner {
            meta["ownerReferences"] = serde_json::json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": oname, "uid": uid}]);
        }
        if finalizer {
            meta["finalizers"] = serde_json::json!(["example.com/hold"]);
        }
        let (code, body) = cp.http(
            "POST",
            cms,
            "application/json",
            serde_json::json!({"metadata": meta}).to_string().as_bytes(),
        );
        assert_eq!(code, 201, "{body}");
        status(&body)["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let exists = |name: &str| cp.http("GET", &format!("{cms}/{name}"), "", b"").0 == 200;

    // Background (kubectl's default): the dependents follow the owner.
    let uid = create("owner", None, false);
    create("dep1", Some(("owner", &uid)), false);
    create("dep2", Some(("owner", &uid)), false);
    ok(&cp.kubectl(33, &["delete", "cm", "owner"]), "delete owner");
    wait_until("dependents collected", || {
        !exists("dep1") && !exists("dep2")
    });

    // Orphan: the dependent stays, without the reference.
    let uid = create("owner2", None, false);
    create("dep3", Some(("owner2", &uid)), false);
    ok(
        &cp.kubectl(33, &["delete", "cm", "owner2", "--cascade=orphan"]),
        "orphan",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(exists("dep3"));
    let (_, body) = cp.http("GET", &format!("{cms}/dep3"), "", b"");
    assert!(
        status(&body)["metadata"]["ownerReferences"].is_null(),
        "{body}"
    );

    // Foreground: the owner waits for its dependents, one of which waits for its finalizer.
    let uid = create("owner3", None, false);
    create("dep4", Some(("owner3", &uid)), true);
    ok(
        &cp.kubectl(
            33,
            &[
                "delete",
                "cm",
                "owner3",
                "--cascade=foreground",
                "--wait=false",
            ],
        ),
        "foreground",
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, body) = cp.http("GET", &format!("{cms}/owner3"), "", b"");
    let o = status(&body);
    assert!(!o["metadata"]["deletionTimestamp"].is_null(), "{body}");
    assert!(o["metadata"]["finalizers"]
        .to_string()
        .contains("foregroundDeletion"));
    let (_, body) = cp.http("GET", &format!("{cms}/dep4"), "", b"");
    assert!(
        !status(&body)["metadata"]["deletionTimestamp"].is_null(),
        "{body}"
    );
    ok(
        &cp.kubectl(
            33,
            &[
                "patch",
                "cm",
                "dep4",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        ),
        "release dep4",
    );
    wait_until("dep4 and then owner3 to go", || {
        !exists("dep4") && !exists("owner3")
    });
}

#[test]
fn services_get_cluster_ips_and_the_kubernetes_service_exists() {
    let cp = ControlPlane::start();
    let k = ok(
        &cp.kubectl(33, &["get", "svc", "kubernetes"]),
        "get svc kubernetes",
    );
    let row: Vec<&str> = k.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"],
        "{k}"
    );
    let ep = ok(
        &cp.kubectl(
            33,
            &[
                "get",
                "endpoints",
                "kubernetes",
                "-o",
                "jsonpath={.subsets[0].ports[0].port}",
            ],
        ),
        "endpoints",
    );
    assert_eq!(ep, cp.port.to_string());
    let svc = |name: &str, ip: &str| {
        let ip_line = if ip.is_empty() {
            String::new()
        } else {
            format!("  clusterIP: {ip}\n")
        };
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{ip_line}  selector: {{app: {name}}}\n  ports:\n  - port: 80\n")
    };
    ok(
        &cp.kubectl_env(
            33,
            &["apply", "-f", "-"],
            &[],
            Some(&format!("{}---\n{}", svc("a", ""), svc("b", ""))),
        ),
        "services",
    );
    let ip = |name: &str| {
        cp.kubectl(
            33,
            &["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"],
        )
        .stdout
    };
    let (a, b) = (ip("a"), ip("b"));
    assert!(
        a.starts_with("10.") && b.starts_with("10.") && a != b,
        "{a} {b}"
    );
    let range: Vec<u8> = a.split('.').map(|o| o.parse().unwrap()).collect();
    assert!(
        range[0] == 10 && (96..112).contains(&range[1]),
        "{a} is in 10.96.0.0/12"
    );
    // Taken addresses are refused; a deleted service's address is free again.
    let taken = cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(&svc("c", &a)));
    assert!(
        taken.stderr.contains("provided IP is already allocated"),
        "{}",
        taken.stderr
    );
    ok(&cp.kubectl(33, &["delete", "svc", "a"]), "delete a");
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(&svc("c", &a))),
        "reuse",
    );
    assert_eq!(ip("c"), a);
    // The cluster IP cannot change.
    let moved = cp.http(
        "PATCH",
        "/api/v1/namespaces/default/services/c",
        "application/merge-patch+json",
        br#"{"spec":{"clusterIP":"10.96.0.77","clusterIPs":["10.96.0.77"]}}"#,
    );
    assert_eq!(moved.0, 422, "{}", moved.1);
}
