//! End-to-end: the apiserver driven by real kubectl 1.27 and 1.33, raw bad requests, restarts of
//! the embedded store, compaction, and two apiservers sharing one real etcd.

use std::time::{Duration, Instant};

use podlet_e2e::apiserver::ControlPlane;
use serde_json::Value;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ok(out: &podlet_e2e::Output, what: &str) -> String {
    assert_eq!(out.code, 0, "{what}: {}{}", out.stdout, out.stderr);
    out.stdout.clone()
}

const APP: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  labels: {app: web}
data:
  a: "1"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: c
        image: busybox:1.36
"#;

fn drive(cp: &ControlPlane, v: u32) {
    let ns = format!("k{v}");
    let k = |args: &[&str]| cp.kubectl(v, args);
    let kn = |args: &[&str]| {
        let mut a = vec!["-n", ns.as_str()];
        a.extend_from_slice(args);
        cp.kubectl(v, &a)
    };
    assert!(ok(&k(&["create", "namespace", &ns]), "create ns").contains("created"));

    // kubectl's generators (protobuf bodies from 1.33's typed clients, JSON from 1.27's).
    ok(
        &kn(&[
            "create",
            "deployment",
            "gen",
            "--image=busybox:1.36",
            "--replicas=2",
            "--port=8080",
        ]),
        "create deployment",
    );
    ok(
        &kn(&["create", "service", "clusterip", "gensvc", "--tcp=80:8080"]),
        "create service",
    );
    ok(
        &kn(&[
            "expose",
            "deployment",
            "gen",
            "--port=80",
            "--target-port=8080",
            "--name=genexp",
        ]),
        "expose",
    );
    ok(
        &kn(&[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods",
        ]),
        "create role",
    );
    ok(
        &kn(&[
            "create",
            "rolebinding",
            "reader",
            "--role=reader",
            "--user=bob",
        ]),
        "create rolebinding",
    );
    ok(
        &kn(&[
            "create",
            "priorityclass",
            &format!("high-{v}"),
            "--value=1000",
        ]),
        "create priorityclass",
    );
    let dep = ok(
        &kn(&["get", "deployment", "gen", "-o", "json"]),
        "get deployment",
    );
    let dep: Value = serde_json::from_str(&dep).unwrap();
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["selector"]["matchLabels"]["app"], "gen");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.36"
    );
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    let svc = ok(
        &kn(&["get", "service", "genexp", "-o", "json"]),
        "get exposed service",
    );
    let svc: Value = serde_json::from_str(&svc).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["selector"]["app"], "gen");
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10."),
        "{svc}"
    );
    let svc = ok(
        &kn(&["get", "service", "gensvc", "-o", "json"]),
        "get service",
    );
    let svc: Value = serde_json::from_str(&svc).unwrap();
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["name"], "80-8080");
    let rb = ok(
        &kn(&["get", "rolebinding", "reader", "-o", "json"]),
        "get rolebinding",
    );
    assert!(rb.contains("\"name\": \"bob\""), "{rb}");
    ok(
        &kn(&[
            "delete",
            "deployment/gen",
            "service/gensvc",
            "service/genexp",
            "role/reader",
            "rolebinding/reader",
        ]),
        "delete generated",
    );
    ok(
        &k(&["delete", "priorityclass", &format!("high-{v}")]),
        "delete priorityclass",
    );

    // apply twice: the second is a no-op.
    let apply = |what: &str| {
        let out = cp.kubectl_env(v, &["-n", &ns, "apply", "-f", "-"], &[], Some(APP));
        ok(&out, what)
    };
    let first = apply("first apply");
    assert!(
        first.contains("configmap/cfg created") && first.contains("deployment.apps/web created"),
        "{first}"
    );
    let second = apply("second apply");
    assert!(
        second.contains("configmap/cfg unchanged")
            && second.contains("deployment.apps/web unchanged"),
        "{second}"
    );
    // kubectl scale goes through the scale subresource.
    assert!(ok(
        &kn(&["scale", "deployment", "web", "--replicas=3"]),
        "scale"
    )
    .contains("scaled"));
    assert_eq!(
        ok(
            &kn(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
            "replicas"
        ),
        "3"
    );
    ok(
        &kn(&["scale", "deployment", "web", "--replicas=2"]),
        "scale back",
    );
    let yaml = ok(&kn(&["get", "deploy", "web", "-o", "yaml"]), "get -o yaml");
    assert!(
        yaml.contains("replicas: 2") && yaml.contains("generation: 3") && yaml.contains("uid: "),
        "{yaml}"
    );
    assert!(
        yaml.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{yaml}"
    );

    // run, get -o wide with kubectl's columns, label and select.
    assert!(ok(
        &kn(&[
            "run",
            "p",
            "--image=busybox:1.36",
            "--restart=Never",
            "--",
            "sleep",
            "1"
        ]),
        "run"
    )
    .contains("pod/p created"));
    let wide = ok(&kn(&["get", "pods", "-o", "wide"]), "get -o wide");
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[..6],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP"],
        "{wide}"
    );
    assert!(wide.contains("NOMINATED NODE"), "{wide}");
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["p", "0/1", "Pending"], "{wide}");
    assert!(ok(&kn(&["label", "pod", "p", "tier=x"]), "label").contains("pod/p labeled"));
    assert_eq!(
        ok(
            &kn(&["get", "pods", "-l", "tier=x", "-o", "name"]),
            "select"
        )
        .trim(),
        "pod/p"
    );
    assert!(ok(
        &kn(&["get", "pods", "-l", "tier!=x", "-o", "name"]),
        "select"
    )
    .trim()
    .is_empty());
    ok(&kn(&["annotate", "cm", "cfg", "note=hi"]), "annotate");
    assert_eq!(
        ok(
            &kn(&[
                "get",
                "cm",
                "cfg",
                "-o",
                "jsonpath={.metadata.annotations.note}"
            ]),
            "annotation"
        ),
        "hi"
    );

    // edit through an editor script.
    let editor = cp.dir.path().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/a: \"1\"/a: \"5\"/' \"$1\"\n").unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&editor)
        .status()
        .unwrap();
    let e = cp.kubectl_env(
        v,
        &["-n", &ns, "edit", "cm", "cfg"],
        &[("KUBE_EDITOR", editor.to_str().unwrap())],
        None,
    );
    assert!(
        ok(&e, "edit").contains("configmap/cfg edited"),
        "{}",
        e.stdout
    );
    assert_eq!(
        ok(
            &kn(&["get", "cm", "cfg", "-o", "jsonpath={.data.a}"]),
            "get edited"
        ),
        "5"
    );

    let d = ok(&kn(&["describe", "pod", "p"]), "describe");
    assert!(
        d.contains("Name:") && d.contains("Namespace:") && d.contains(&ns) && d.contains("Pending"),
        "{d}"
    );

    // get -w sees a create and a delete.
    let wfile = cp.dir.path().join(format!("watch-{v}"));
    let mut w = cp.kubectl_spawn(v, &["-n", &ns, "get", "cm", "-w"], &wfile);
    wait_until("the watch's initial list", || {
        std::fs::read_to_string(&wfile)
            .unwrap_or_default()
            .contains("cfg")
    });
    ok(
        &kn(&["create", "configmap", "w1", "--from-literal=x=1"]),
        "create cm",
    );
    ok(&kn(&["delete", "configmap", "w1"]), "delete cm");
    wait_until("watch events", || {
        std::fs::read_to_string(&wfile)
            .unwrap_or_default()
            .matches("w1")
            .count()
            >= 2
    });
    let _ = w.kill();
    let _ = w.wait();

    let ex = ok(&k(&["explain", "pod.spec.restartPolicy"]), "explain");
    assert!(
        ex.contains("restartPolicy") && ex.contains("Always"),
        "{ex}"
    );
    let ar = ok(&k(&["api-resources"]), "api-resources");
    assert!(
        ar.lines()
            .any(|l| l.starts_with("deployments") && l.contains("apps/v1")),
        "{ar}"
    );
    assert!(
        ar.lines()
            .any(|l| l.starts_with("pods") && l.contains(" po ")),
        "{ar}"
    );
    let cs = ok(&k(&["get", "componentstatuses"]), "get cs");
    assert!(cs.contains("etcd-0") && cs.contains("Healthy"), "{cs}");

    // Server-side apply, twice.
    for _ in 0..2 {
        let out = cp.kubectl_env(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=ssa",
                "-f",
                "-",
            ],
            &[],
            Some(&APP.replace("name: cfg", "name: ssa")),
        );
        assert!(ok(&out, "apply --server-side").contains("configmap/ssa serverside-applied"));
    }
    let mf = ok(
        &kn(&[
            "get",
            "cm",
            "ssa",
            "-o",
            "jsonpath={.metadata.managedFields[*].operation}",
            "--show-managed-fields",
        ]),
        "managed fields",
    );
    assert_eq!(mf.trim(), "Apply");
    // Another manager's change conflicts with the next apply, unless it forces.
    ok(
        &kn(&[
            "patch",
            "cm",
            "ssa",
            "--type=merge",
            "-p",
            r#"{"data":{"a":"2"}}"#,
        ]),
        "patch by another manager",
    );
    let ssa = |force: bool| {
        let mut args = vec![
            "-n",
            &ns,
            "apply",
            "--server-side",
            "--field-manager=ssa",
            "-f",
            "-",
        ];
        if force {
            args.push("--force-conflicts");
        }
        cp.kubectl_env(v, &args, &[], Some(&APP.replace("name: cfg", "name: ssa")))
    };
    let out = ssa(false);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\"")
            && out.stderr.contains(".data.a"),
        "{}",
        out.stderr
    );
    ok(&ssa(true), "apply --force-conflicts");
    let a = ok(
        &kn(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]),
        "get cm",
    );
    assert_eq!(a, "1");

    // Bad input is refused with Kubernetes' messages, and nothing is stored.
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Bad_Name\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n";
    let out = cp.kubectl_env(v, &["-n", &ns, "create", "-f", "-"], &[], Some(bad));
    assert!(
        out.stderr.contains(
            "The Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ),
        "{}",
        out.stderr
    );
    let unknown = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: strict\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    bogus: 1\n";
    let out = cp.kubectl_env(v, &["-n", &ns, "create", "-f", "-"], &[], Some(unknown));
    assert!(
        out.stderr
            .contains("unknown field \"spec.containers[0].bogus\""),
        "{}",
        out.stderr
    );
    assert!(kn(&["get", "pod", "strict"]).stderr.contains("NotFound"));

    // delete, then the namespace and everything in it.
    let out = cp.kubectl_env(v, &["-n", &ns, "delete", "-f", "-"], &[], Some(APP));
    assert!(ok(&out, "delete -f").contains("deployment.apps \"web\" deleted"));
    assert!(ok(&kn(&["delete", "pod", "p"]), "delete pod").contains("pod \"p\" deleted"));
    assert!(kn(&["get", "pods"]).stderr.contains("No resources found"));
    ok(&k(&["delete", "namespace", &ns]), "delete ns");
    wait_until("the namespace to go", || {
        k(&["get", "namespace", &ns]).stderr.contains("NotFound")
    });
}

#[test]
fn kubectl_1_27_and_1_33_drive_the_api() {
    let cp = ControlPlane::start();
    drive(&cp, 33);
    drive(&cp, 27);
}

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

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

#[test]
fn tls_authentication_and_rbac() {
    use podlet_e2e::apiserver::VIEWER_TOKEN;
    let cp = ControlPlane::start();
    // Anonymous: health is public, the API is not.
    assert_eq!(cp.http_as(None, "GET", "/healthz").0, 200);
    let (code, body) = cp.http_as(None, "GET", "/api/v1/namespaces/default/pods");
    assert_eq!(
        (code, status(&body)["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    // A user with no bindings gets Kubernetes' 403.
    let pods = "/api/v1/namespaces/default/pods";
    let (code, body) = cp.http_as(Some(VIEWER_TOKEN), "GET", pods);
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        status(&body)["message"],
        "pods is forbidden: User \"viewer\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // The admin (client certificate from the admin kubeconfig) binds the view role in default.
    let rb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: viewer\n  namespace: default\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: view\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: viewer\n";
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(rb)),
        "bind view",
    );
    assert_eq!(cp.http_as(Some(VIEWER_TOKEN), "GET", pods).0, 200);
    assert_eq!(
        cp.http_as(
            Some(VIEWER_TOKEN),
            "GET",
            "/api/v1/namespaces/kube-system/pods"
        )
        .0,
        403
    );
    let (code, body) = cp.http_as(
        Some(VIEWER_TOKEN),
        "DELETE",
        "/api/v1/namespaces/default/configmaps/x",
    );
    assert_eq!(code, 403);
    assert!(status(&body)["message"]
        .as_str()
        .unwrap()
        .contains("configmaps \"x\" is forbidden: User \"viewer\" cannot delete"));

    // kubectl auth can-i answers from the same authorizer, for both users.
    let viewer_kc = cp.dir.path().join("viewer.kubeconfig");
    std::fs::write(
        &viewer_kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: v, namespace: default}}\ncurrent-context: c\nusers:\n- name: v\n  user:\n    token: {VIEWER_TOKEN}\n",
            cp.url(),
            cp.ca().display()
        ),
    )
    .unwrap();
    for v in [27, 33] {
        assert_eq!(
            ok(
                &cp.kubectl(v, &["auth", "can-i", "create", "pods"]),
                "admin can-i"
            )
            .trim(),
            "yes"
        );
        let as_viewer = |args: &[&str]| {
            let mut a = vec!["--kubeconfig", viewer_kc.to_str().unwrap()];
            a.extend_from_slice(args);
            cp.kubectl(v, &a)
        };
        let yes = as_viewer(&["auth", "can-i", "list", "pods"]);
        assert_eq!(yes.stdout.trim(), "yes", "{}", yes.stderr);
        let no = as_viewer(&["auth", "can-i", "create", "pods"]);
        assert_eq!((no.code, no.stdout.trim()), (1, "no"), "{}", no.stderr);
        let denied = as_viewer(&["get", "pods", "-n", "kube-system"]);
        assert!(
            denied
                .stderr
                .contains("pods is forbidden: User \"viewer\" cannot list resource \"pods\""),
            "{}",
            denied.stderr
        );
    }
    let who = cp.kubectl(
        33,
        &[
            "--kubeconfig",
            viewer_kc.to_str().unwrap(),
            "auth",
            "whoami",
        ],
    );
    assert!(
        who.stdout.contains("viewer"),
        "{}{}",
        who.stdout,
        who.stderr
    );
}

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
fn service_account_tokens_authenticate_until_the_account_goes() {
    let cp = ControlPlane::start();
    ok(
        &cp.kubectl(33, &["create", "serviceaccount", "builder"]),
        "create sa",
    );
    let pods = "/api/v1/namespaces/default/pods";
    for v in [27, 33] {
        let token = ok(
            &cp.kubectl(v, &["create", "token", "builder"]),
            "create token",
        );
        let token = token.trim();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        let (code, body) = cp.http_as(Some(token), "GET", pods);
        assert_eq!(code, 403, "{body}");
        assert!(status(&body)["message"]
            .as_str()
            .unwrap()
            .contains("User \"system:serviceaccount:default:builder\" cannot list"));
    }
    let short = cp.kubectl(33, &["create", "token", "builder", "--duration=1m"]);
    assert!(
        short
            .stderr
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        short.stderr
    );
    let rb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: builder-view\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: view\nsubjects:\n- kind: ServiceAccount\n  name: builder\n  namespace: default\n";
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(rb)),
        "bind view",
    );
    let token = ok(&cp.kubectl(33, &["create", "token", "builder"]), "token")
        .trim()
        .to_string();
    assert_eq!(cp.http_as(Some(&token), "GET", pods).0, 200);
    let (_, body) = cp
        .try_http_as(
            Some(&token),
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            "application/json",
            br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        )
        .unwrap();
    let who = status(&body);
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:default:builder"
    );
    assert!(who["status"]["userInfo"]["groups"]
        .to_string()
        .contains("system:serviceaccounts:default"));
    // Forged or foreign tokens are nobody; a deleted account's tokens stop working.
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(cp.http_as(Some(&forged), "GET", pods).0, 401);
    ok(
        &cp.kubectl(33, &["delete", "serviceaccount", "builder"]),
        "delete sa",
    );
    assert_eq!(cp.http_as(Some(&token), "GET", pods).0, 401);
}

fn openssl_csr(dir: &std::path::Path, name: &str, subject: &str) -> String {
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.csr")))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join(format!("{name}.csr"))).unwrap())
}

#[test]
fn nodes_join_with_a_bootstrap_token_and_an_auto_approved_csr() {
    let cp = ControlPlane::start();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-abcdef\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: \"true\"\n";
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(secret)),
        "bootstrap token",
    );
    let token = "abcdef.0123456789abcdef";
    assert_eq!(
        cp.http_as(Some("abcdef.0000000000000000"), "GET", "/api").0,
        401
    );
    let csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let post = |req: &str, signer: &str| {
        let body = format!(
            r#"{{"apiVersion":"certificates.k8s.io/v1","kind":"CertificateSigningRequest","metadata":{{"generateName":"node-csr-"}},"spec":{{"request":"{req}","signerName":"{signer}","usages":["digital signature","client auth"],"username":"forged"}}}}"#
        );
        let (code, body) = cp
            .try_http_as(
                Some(token),
                "POST",
                csrs,
                "application/json",
                body.as_bytes(),
            )
            .unwrap();
        assert_eq!(code, 201, "{body}");
        let v = status(&body);
        assert_eq!(
            v["spec"]["username"], "system:bootstrap:abcdef",
            "the requester is the server's to say"
        );
        v["metadata"]["name"].as_str().unwrap().to_string()
    };
    let dir = cp.dir.path();
    let node_csr = post(
        &openssl_csr(dir, "node", "/O=system:nodes/CN=system:node:n1"),
        "kubernetes.io/kube-apiserver-client-kubelet",
    );
    let mut cert = String::new();
    wait_until("the node's certificate", || {
        let (_, body) = cp.http_as(Some(token), "GET", &format!("{csrs}/{node_csr}"));
        let v = status(&body);
        match v["status"]["certificate"].as_str() {
            Some(c) => {
                assert_eq!(v["status"]["conditions"][0]["reason"], "AutoApproved");
                cert = c.to_string();
                true
            }
            None => false,
        }
    });
    use base64::Engine;
    std::fs::write(
        dir.join("node.crt"),
        base64::engine::general_purpose::STANDARD
            .decode(&cert)
            .unwrap(),
    )
    .unwrap();
    // The signed certificate authenticates the node.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        ])
        .arg("--cacert")
        .arg(cp.ca())
        .arg("--cert")
        .arg(dir.join("node.crt"))
        .arg("--key")
        .arg(dir.join("node.key"))
        .arg(format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            cp.url()
        ))
        .output()
        .unwrap();
    let who = status(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:n1");
    assert!(who["status"]["userInfo"]["groups"]
        .to_string()
        .contains("system:nodes"));

    // What the node may do: the Node authorizer and NodeRestriction.
    let as_node = |method: &str, path: &str, body: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-X",
                method,
                "-H",
                "Content-Type: application/json",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
            ])
            .args(if body.is_empty() {
                vec![]
            } else {
                vec!["--data", body]
            })
            .arg("--cacert")
            .arg(cp.ca())
            .arg("--cert")
            .arg(dir.join("node.crt"))
            .arg("--key")
            .arg(dir.join("node.key"))
            .arg(format!("{}{path}", cp.url()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (b, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), b.to_string())
    };
    let node_json =
        |n: &str| format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{n}"}}}}"#);
    assert_eq!(as_node("POST", "/api/v1/nodes", &node_json("n1")).0, 201);
    let (code, body) = as_node("POST", "/api/v1/nodes", &node_json("n2"));
    assert_eq!(code, 403);
    assert!(
        status(&body)["message"]
            .as_str()
            .unwrap()
            .contains("node \"n1\" is not allowed to modify node \"n2\""),
        "{body}"
    );
    assert_eq!(
        as_node("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", "").0,
        200
    );
    let (code, body) = as_node(
        "POST",
        "/api/v1/namespaces/default/pods",
        r#"{"metadata":{"name":"sneaky"},"spec":{"nodeName":"n1","containers":[{"name":"c","image":"busybox:1.36"}]}}"#,
    );
    assert_eq!(code, 403);
    assert!(body.contains("can only create mirror pods"), "{body}");
    // Secrets: only those its pods use.
    ok(
        &cp.kubectl(
            33,
            &["create", "secret", "generic", "s1", "--from-literal=k=v"],
        ),
        "secret",
    );
    assert_eq!(
        as_node("GET", "/api/v1/namespaces/default/secrets/s1", "").0,
        403
    );
    let pod = "apiVersion: v1
kind: Pod
metadata:
  name: uses-s1
spec:
  nodeName: n1
  containers:
  - name: c
    image: busybox:1.36
    envFrom: [{secretRef: {name: s1}}]
  volumes:
  - name: s
    secret: {secretName: s1}
";
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(pod)),
        "pod using s1",
    );
    assert_eq!(
        as_node("GET", "/api/v1/namespaces/default/secrets/s1", "").0,
        200
    );
    assert_eq!(
        as_node(
            "PATCH",
            "/api/v1/namespaces/default/pods/uses-s1/status",
            r#"{"status":{"phase":"Running"}}"#
        )
        .0,
        415
    );
    let other = pod
        .replace("uses-s1", "elsewhere")
        .replace("nodeName: n1", "nodeName: n2");
    ok(
        &cp.kubectl_env(33, &["apply", "-f", "-"], &[], Some(&other)),
        "pod on n2",
    );
    assert_eq!(
        as_node(
            "GET",
            "/api/v1/namespaces/default/pods/elsewhere/status",
            ""
        )
        .0,
        403
    );
    assert_eq!(
        as_node("GET", "/api/v1/namespaces/default/pods/uses-s1/status", "").0,
        200
    );

    // Other client certificates wait for an administrator.
    let jane = post(
        &openssl_csr(dir, "jane", "/CN=jane"),
        "kubernetes.io/kube-apiserver-client",
    );
    std::thread::sleep(Duration::from_millis(500));
    let get = cp.kubectl(33, &["get", "csr", &jane]);
    assert!(ok(&get, "get csr").contains("Pending"), "{}", get.stdout);
    for v in [27, 33] {
        ok(
            &cp.kubectl(v, &["certificate", "approve", &jane]),
            "approve",
        );
    }
    wait_until("jane's certificate", || {
        cp.kubectl(33, &["get", "csr", &jane])
            .stdout
            .contains("Approved,Issued")
    });
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
