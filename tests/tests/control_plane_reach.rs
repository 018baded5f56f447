//! The apiserver reached at every address it listens on: listening on `0.0.0.0` in a network
//! namespace, its serving certificate names the namespace's addresses (curl verifies it, as a
//! joining worker's client does), `--tls-san` adds names (the certificate is made again, by
//! the same CA), and `--advertise-address` is what the admin kubeconfig and the `kubernetes`
//! Endpoints name.

use podlet_e2e::apiserver::ControlPlane;
use podlet_e2e::cluster::Netns;
use podlet_e2e::{privileged, sh_ip};

/// `curl --cacert` (so the certificate's names are checked) of `/healthz` at `url`, maybe with
/// `--resolve`: Ok(body) or Err(curl's complaint).
fn healthz(cp: &ControlPlane, url: &str, resolve: Option<&str>) -> Result<String, String> {
    let ca = cp.ca().display().to_string();
    let mut args = vec!["-sS", "--max-time", "10", "--cacert", ca.as_str()];
    if let Some(r) = resolve {
        args.extend(["--resolve", r]);
    }
    let url = format!("{url}/healthz");
    args.push(&url);
    let out = cp.curl(&args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn apiserver_listening_everywhere_is_valid_at_every_address_and_tls_san() {
    if !privileged() {
        return;
    }
    let ns = Netns::new();
    let pid = ns.pid();
    // A veth pair with both ends inside (this kernel has no dummy links).
    sh_ip(
        pid,
        &[
            "link", "add", "lab0", "type", "veth", "peer", "name", "lab1",
        ],
    );
    sh_ip(pid, &["link", "set", "lab1", "up"]);
    sh_ip(pid, &["addr", "add", "10.98.0.1/24", "dev", "lab0"]);
    sh_ip(pid, &["addr", "add", "10.98.1.1/24", "dev", "lab0"]);
    sh_ip(pid, &["link", "set", "lab0", "up"]);

    // Starting waits for /healthz at https://10.98.0.1:6443 with the CA checked: the bug was
    // `certificate not valid for name "10.98.0.1"` here.
    let mut cp = ControlPlane::start_in_netns_listening(pid, "10.98.0.1", "0.0.0.0", &[]);
    assert_eq!(
        healthz(&cp, "https://10.98.1.1:6443", None).as_deref(),
        Ok("ok")
    );
    assert_eq!(
        healthz(&cp, "https://127.0.0.1:6443", None).as_deref(),
        Ok("ok")
    );
    let kc = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    assert!(kc.contains("server: https://10.98.0.1:6443"), "{kc}");
    let out = cp.kubectl(33, &["get", "namespace", "default", "-o", "name"]);
    assert_eq!(out.stdout.trim(), "namespace/default", "{}", out.stderr);

    let lab = Some("api.lab.test:6443:10.98.0.1");
    let err = healthz(&cp, "https://api.lab.test:6443", lab).unwrap_err();
    assert!(err.contains("certificate") || err.contains("SSL"), "{err}");
    let ca = std::fs::read(cp.ca()).unwrap();

    cp.restart_with(&[
        "--tls-san",
        "api.lab.test,10.98.7.7",
        "--advertise-address",
        "10.98.1.1",
    ]);
    assert_eq!(std::fs::read(cp.ca()).unwrap(), ca, "the same CA");
    assert_eq!(
        healthz(&cp, "https://api.lab.test:6443", lab).as_deref(),
        Ok("ok")
    );
    let kc = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    assert!(kc.contains("server: https://10.98.1.1:6443"), "{kc}");
    let out = cp.kubectl(
        33,
        &[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[0].addresses[0].ip}",
        ],
    );
    assert_eq!(out.stdout.trim(), "10.98.1.1", "{}", out.stderr);

    // A bad name is refused, naming the flag.
    cp.kill();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "--"])
        .arg(podlet_e2e::podlet_bin())
        .args([
            "control-plane",
            "--listen",
            "0.0.0.0:6443",
            "--tls-san",
            "bad name",
            "--data-dir",
        ])
        .arg(cp.data_dir())
        .arg("--admin-kubeconfig")
        .arg(cp.kubeconfig())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-san: \"bad name\""), "{stderr}");
}
