//! End-to-end: who may do what: TLS client certificates, static and service-account tokens,
//! RBAC, and nodes joining with a bootstrap token and an auto-approved CSR.

use std::time::Duration;

use podlet_e2e::apiserver::{ok, status, wait_until, ControlPlane};

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
