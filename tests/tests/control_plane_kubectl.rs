//! End-to-end: the apiserver driven by real kubectl 1.27 and 1.33 (generators, apply, scale,
//! edit, watch, server-side apply, explain, bad input).

use podlet_e2e::apiserver::{ok, wait_until, ControlPlane};
use serde_json::Value;

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
    // Only p: the deployments above have pods of their own now that their controllers run.
    let wide = ok(&kn(&["get", "pods", "p", "-o", "wide"]), "get -o wide");
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
        &kn(&["get", "pods", "-l", "tier!=x,run=p", "-o", "name"]),
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
    assert!(kn(&["get", "pod", "p"]).stderr.contains("NotFound"));
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

/// A dual-stack apiserver (a range of each family) as kubectl sees it: a generated service is
/// single-stack of the primary family, a patch to RequireDualStack adds an address of the
/// other, and a patch back to SingleStack takes it away again.
#[test]
fn kubectl_creates_and_upgrades_dual_stack_services() {
    let cp =
        ControlPlane::start_with(&["--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112"]);
    let k = |args: &[&str]| cp.kubectl(33, args);
    let field = |path: &str| -> Vec<String> {
        let out = ok(
            &k(&["get", "service", "x", "-o", &format!("jsonpath={{{path}}}")]),
            path,
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
    };
    ok(
        &k(&["create", "service", "clusterip", "x", "--tcp=80"]),
        "create service",
    );
    let ips = field(".spec.clusterIPs");
    assert!(ips.len() == 1 && ips[0].starts_with("10.96."), "{ips:?}");
    assert_eq!(field(".spec.ipFamilies"), ["IPv4"]);

    let up = r#"{"spec":{"ipFamilyPolicy":"RequireDualStack"}}"#;
    ok(
        &k(&["patch", "service", "x", "-p", up]),
        "patch to dual-stack",
    );
    let dual = field(".spec.clusterIPs");
    assert_eq!(dual.len(), 2, "{dual:?}");
    assert_eq!(dual[0], ips[0]);
    assert!(dual[1].starts_with("fd00:10:96::"), "{dual:?}");
    assert_eq!(field(".spec.ipFamilies"), ["IPv4", "IPv6"]);

    let down = r#"{"spec":{"ipFamilyPolicy":"SingleStack"}}"#;
    ok(
        &k(&["patch", "service", "x", "-p", down]),
        "patch to single-stack",
    );
    assert_eq!(field(".spec.clusterIPs"), ips);

    // Upstream's refusal, as kubectl prints it.
    let out = k(&[
        "patch",
        "service",
        "x",
        "-p",
        r#"{"spec":{"ipFamilies":["IPv6"]}}"#,
    ]);
    let err = &out.stderr;
    assert!(
        err.contains("expected an IPv6 value as indicated by `ipFamilies[0]`"),
        "{err}"
    );
}

/// An IPv6-only apiserver: kubernetes and kube-dns take the first and tenth addresses of the
/// IPv6 range, and a generated service gets an IPv6 address.
#[test]
fn kubectl_on_an_ipv6_only_apiserver() {
    let cp = ControlPlane::start_with(&["--service-cluster-ip-range=fd00:10:96::/112"]);
    let k = |args: &[&str]| cp.kubectl(33, args);
    let get = |ns: &str, name: &str, path: &str| {
        ok(
            &k(&[
                "-n",
                ns,
                "get",
                "service",
                name,
                "-o",
                &format!("jsonpath={{{path}}}"),
            ]),
            path,
        )
    };
    assert_eq!(
        get("default", "kubernetes", ".spec.clusterIP"),
        "fd00:10:96::1"
    );
    assert_eq!(
        get("kube-system", "kube-dns", ".spec.clusterIP"),
        "fd00:10:96::a"
    );
    assert_eq!(
        get("default", "kubernetes", ".spec.ipFamilies"),
        r#"["IPv6"]"#
    );
    // Pods reach the apiserver at that address: its serving certificate names it.
    let sans = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cp.data_dir().join("pki/apiserver.crt"))
        .output()
        .expect("running openssl");
    let sans = String::from_utf8_lossy(&sans.stdout);
    assert!(sans.contains("IP Address:FD00:10:96:0:0:0:0:1"), "{sans}");
    ok(
        &k(&["create", "service", "clusterip", "x", "--tcp=80"]),
        "create service",
    );
    assert!(get("default", "x", ".spec.clusterIP").starts_with("fd00:10:96::"));
    let refused = k(&[
        "create",
        "service",
        "clusterip",
        "y",
        "--tcp=80",
        "--clusterip=10.96.0.5",
    ]);
    assert!(
        refused
            .stderr
            .contains(r#"spec.clusterIPs[0]: Invalid value: []string{"10.96.0.5"}: IPv4 is not configured on this cluster"#),
        "{}",
        refused.stderr
    );
}
