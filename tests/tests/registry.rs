//! End-to-end: pulls from a real registry (Debian's docker-registry, started by the test inside
//! the node's network namespace, on its 127.0.0.1). Images are pushed with oci-client from the
//! busybox archive: plain, gzip and zstd layers, an image index, basic auth.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use podlet_e2e::{busybox_archive, privileged, workspace, TestNode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADDR: &str = "127.0.0.1:5000";

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A docker-registry in the node's network namespace; killed and removed on drop.
struct Registry {
    child: Child,
    /// The token server, for bearer authentication.
    tokens: Option<Child>,
    dir: tempfile::TempDir,
    netns: u32,
    auth: RegistryAuth,
}

impl Registry {
    fn start(node: &TestNode, user: Option<(&str, &str)>) -> Registry {
        Self::start_with(node, user, false)
    }

    /// With bearer authentication: a token server on 127.0.0.1:5001 gives `user` its tokens.
    fn start_with(node: &TestNode, user: Option<(&str, &str)>, bearer: bool) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("podlet-registry-")
            .tempdir()
            .unwrap();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\nhttp:\n  addr: {ADDR}\n",
            dir.path().display()
        );
        let mut tokens = None;
        let auth = match user {
            Some((u, p)) if bearer => {
                let cert = dir.path().join("token.pem");
                let mut child = Command::new("nsenter")
                    .args([
                        "-t",
                        &node.holder_pid().to_string(),
                        "-n",
                        "--",
                        "/usr/bin/python3",
                    ])
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/python/token_server.py"
                    ))
                    .arg("5001")
                    .arg(&cert)
                    .args([u, p])
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                std::io::BufRead::read_line(
                    &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                    &mut line,
                )
                .unwrap();
                tokens = Some(child);
                assert_eq!(line, "serving\n", "the token server did not start");
                cfg.push_str(&format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:5001/token\n    service: podlet-e2e-registry\n    issuer: podlet-e2e\n    rootcertbundle: {}\n",
                    cert.display()
                ));
                RegistryAuth::Basic(u.into(), p.into())
            }
            Some((u, p)) => {
                let hash = bcrypt::hash(p, 5).unwrap();
                std::fs::write(dir.path().join("htpasswd"), format!("{u}:{hash}\n")).unwrap();
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: podlet-e2e\n    path: {}/htpasswd\n",
                    dir.path().display()
                ));
                RegistryAuth::Basic(u.into(), p.into())
            }
            None => RegistryAuth::Anonymous,
        };
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("nsenter")
            .args(["-t", &node.holder_pid().to_string(), "-n", "--"])
            .arg(workspace().join("target/tools/usr/bin/docker-registry"))
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (hack/deps.sh unpacks it into target/tools)");
        let r = Registry {
            child,
            tokens,
            dir,
            netns: node.holder_pid(),
            auth,
        };
        node.wait_for("the registry", Duration::from_secs(20), || {
            let o = Command::new("nsenter")
                .args([
                    "-t",
                    &r.netns.to_string(),
                    "-n",
                    "--",
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                ])
                .args(["-w", "%{http_code}", &format!("http://{ADDR}/v2/")])
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&o.stdout).into_owned();
            (code == "200" || code == "401").then_some(())
        });
        r
    }

    /// Runs `f` on a thread inside the registry's network namespace.
    fn in_netns<T: Send + 'static>(
        &self,
        f: impl FnOnce(oci_client::Client) -> T + Send + 'static,
    ) -> T {
        let pid = self.netns;
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let client = oci_client::Client::new(oci_client::client::ClientConfig {
                protocol: oci_client::client::ClientProtocol::Http,
                ..Default::default()
            });
            f(client)
        })
        .join()
        .unwrap()
    }

    fn push_blob(&self, repo: &str, data: Vec<u8>) -> String {
        let digest = sha256(&data);
        let (r, d, auth) = (self.reference(repo, "x"), digest.clone(), self.auth.clone());
        self.in_netns(move |c| {
            rt().block_on(async {
                c.auth(&r, &auth, oci_client::RegistryOperation::Push)
                    .await
                    .unwrap();
                c.push_blob(&r, &data, &d).await.unwrap();
            })
        });
        digest
    }

    fn push_manifest(&self, repo: &str, tag: &str, body: Vec<u8>, media_type: &str) -> String {
        let digest = sha256(&body);
        let (r, auth, mt) = (
            self.reference(repo, tag),
            self.auth.clone(),
            media_type.to_string(),
        );
        self.in_netns(move |c| {
            rt().block_on(async {
                c.auth(&r, &auth, oci_client::RegistryOperation::Push)
                    .await
                    .unwrap();
                c.push_manifest_raw(&r, body, mt.parse().unwrap())
                    .await
                    .unwrap();
            })
        });
        digest
    }

    fn reference(&self, repo: &str, tag: &str) -> Reference {
        Reference::with_tag(ADDR.into(), repo.into(), tag.into())
    }

    /// Pushes the busybox archive's image as `repo:tag`, its layer compressed as asked
    /// ("" plain, "gzip", "zstd"), plus `extra` bytes appended to a second layer when given.
    /// Returns the manifest's digest and the layer blobs' digests.
    fn push_busybox(
        &self,
        repo: &str,
        tag: &str,
        compression: &str,
        extra: Option<Vec<u8>>,
    ) -> (String, Vec<String>) {
        let img = BusyboxImage::read();
        let mut layers = vec![img.layer.clone()];
        let mut diff_ids = vec![sha256(&img.layer)];
        if let Some(e) = extra {
            diff_ids.push(sha256(&e));
            layers.push(e);
        }
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for l in layers {
            let (blob, mt) = match compression {
                // Docker schema 2: gzip layers under Docker's media types.
                "gzip" | "docker" => {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut enc, &l).unwrap();
                    let mt = if compression == "docker" {
                        "application/vnd.docker.image.rootfs.diff.tar.gzip"
                    } else {
                        "application/vnd.oci.image.layer.v1.tar+gzip"
                    };
                    (enc.finish().unwrap(), mt)
                }
                "zstd" => (
                    zstd::encode_all(&l[..], 3).unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
                _ => (l, "application/vnd.oci.image.layer.v1.tar"),
            };
            let size = blob.len();
            let d = self.push_blob(repo, blob);
            descs.push(json!({"mediaType": mt, "digest": d, "size": size}));
            digests.push(d);
        }
        let mut config: Value = serde_json::from_slice(&img.config).unwrap();
        config["rootfs"]["diff_ids"] = json!(diff_ids);
        let config = serde_json::to_vec(&config).unwrap();
        let config_size = config.len();
        let config_digest = self.push_blob(repo, config);
        let (manifest_type, config_type) = if compression == "docker" {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config_size},
            "layers": descs,
        });
        let digest = self.push_manifest(
            repo,
            tag,
            serde_json::to_vec(&manifest).unwrap(),
            manifest_type,
        );
        (digest, digests)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Completed GETs of a blob, from the registry's access log: bytes written by each.
    fn blob_gets_written(&self, digest: &str) -> Vec<u64> {
        std::fs::read_to_string(self.dir.path().join("registry.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("msg=\"response completed\"")
                    && l.contains("http.request.method=GET")
                    && l.contains(&format!("/blobs/{digest}\""))
            })
            .map(|l| {
                l.split("http.response.written=")
                    .nth(1)
                    .and_then(|w| w.split_whitespace().next())
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }

    fn blob_gets(&self, digest: &str) -> usize {
        self.blob_gets_written(digest).len()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for c in std::iter::once(&mut self.child).chain(self.tokens.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The busybox archive's config and (uncompressed) layer.
struct BusyboxImage {
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl BusyboxImage {
    fn read() -> Self {
        let dir = tempfile::tempdir().unwrap();
        tar::Archive::new(std::fs::File::open(busybox_archive()).unwrap())
            .unpack(dir.path())
            .unwrap();
        let blob = |d: &str| {
            std::fs::read(
                dir.path()
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap()
        };
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let m: Value =
            serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap()))
                .unwrap();
        let layer = blob(m["layers"][0]["digest"].as_str().unwrap());
        // The archive's layer may be compressed; the pushes decide compression themselves.
        let layer = if layer.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer[..]), &mut out)
                .unwrap();
            out
        } else {
            layer
        };
        BusyboxImage {
            config: blob(m["config"]["digest"].as_str().unwrap()),
            layer,
        }
    }
}

fn node_with_registry_config(extra: &str) -> TestNode {
    let node = TestNode::with_busybox();
    std::fs::write(
        node.path("config.yaml"),
        format!("registries:\n  insecure: [\"{ADDR}\"]\n{extra}"),
    )
    .unwrap();
    node
}

fn images_left(node: &TestNode) -> (usize, usize, Vec<String>) {
    let count = |p: &str| {
        std::fs::read_dir(node.path(p))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let partials = std::fs::read_dir(node.path("root/images/downloads"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (
        count("root/images/blobs/sha256"),
        count("root/images/layers"),
        partials,
    )
}

#[test]
fn pulls_by_tag_digest_index_and_zstd_and_rejects_a_corrupt_blob() {
    if !privileged() {
        return;
    }
    let node = node_with_registry_config(&format!("  mirrors:\n    docker.io: [\"{ADDR}\"]\n"));
    let reg = Registry::start(&node, None);

    // By tag: a plain layer the image's own digest identifies.
    let (digest, _) = reg.push_busybox("library/tools", "1", "", None);
    let out = node.podlet(&["image", "pull", &format!("{ADDR}/library/tools:1")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&digest), "{}", out.stdout);
    let ls = node.podlet(&["image", "ls"]).stdout;
    assert!(ls.contains(&format!("{ADDR}/library/tools:1")), "{ls}");
    // The same layer as the imported busybox: unpacked once, shared.
    assert_eq!(images_left(&node).1, 1);

    // A short name is docker.io/library/…, fetched from docker.io's mirror.
    let out = node.podlet(&["image", "pull", "tools:1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("docker.io/library/tools:1 "),
        "{}",
        out.stdout
    );

    // By digest.
    let out = node.podlet(&["image", "pull", &format!("{ADDR}/library/tools@{digest}")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A digest that does not match what the registry serves is refused.
    let other = format!("sha256:{}", "0".repeat(64));
    let out = node.podlet(&["image", "pull", &format!("{ADDR}/library/tools@{other}")]);
    assert_ne!(out.code, 0);

    // gzip and zstd layers, and a Docker schema-2 manifest, each with a second layer on top.
    for comp in ["gzip", "zstd", "docker"] {
        let extra = tar_with_file(&format!("/{comp}.txt"), comp.as_bytes());
        let (d, layers) = reg.push_busybox("library/tools", comp, comp, Some(extra));
        let out = node.podlet(&["image", "pull", &format!("{ADDR}/library/tools:{comp}")]);
        assert_eq!(out.code, 0, "{comp}: {}", out.stderr);
        assert!(out.stdout.contains(&d));
        for l in &layers {
            assert!(node
                .path(&format!(
                    "root/images/blobs/sha256/{}",
                    l.trim_start_matches("sha256:")
                ))
                .exists());
        }
    }

    // An index: this platform's manifest is picked; the image is known by the index's digest.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let (ours, _) = reg.push_busybox("library/multi", "ours", "gzip", None);
    let (theirs, _) = reg.push_busybox(
        "library/multi",
        "theirs",
        "zstd",
        Some(tar_with_file("/other", b"x")),
    );
    let size = |d: &str| std::fs::metadata(reg.blob_path(d)).unwrap().len();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": theirs, "size": size(&theirs), "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": ours, "size": size(&ours), "platform": {"os": "linux", "architecture": arch}},
        ],
    });
    let index_digest = reg.push_manifest(
        "library/multi",
        "1",
        serde_json::to_vec(&index).unwrap(),
        "application/vnd.oci.image.index.v1+json",
    );
    let out = node.podlet(&["image", "pull", &format!("{ADDR}/library/multi:1")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&index_digest), "{}", out.stdout);
    let gone = reg.blob_gets(&ours);
    assert_eq!(gone, 0, "the platform manifest is a manifest, not a blob");

    // A corrupt blob: a digest error naming it, and nothing of the image left behind.
    let before = images_left(&node);
    let (_, layers) = reg.push_busybox(
        "library/bad",
        "1",
        "gzip",
        Some(tar_with_file("/bad", b"bad")),
    );
    let bad = reg.blob_path(&layers[1]);
    let mut data = std::fs::read(&bad).unwrap();
    let n = data.len();
    data[n - 20] ^= 0xff;
    std::fs::write(&bad, data).unwrap();
    let out = node.podlet(&["image", "pull", &format!("{ADDR}/library/bad:1")]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("digest"), "{}", out.stderr);
    assert!(out.stderr.contains(&layers[1]), "{}", out.stderr);
    let after = images_left(&node);
    // The good layer blob may stay (it is verified content); no layer, no partial, no name.
    assert_eq!(after.1, before.1, "no layer unpacked");
    assert!(after.2.is_empty(), "partial downloads left: {:?}", after.2);
    assert!(!node.podlet(&["image", "ls"]).stdout.contains("library/bad"));

    // inspect, export as an OCI archive, remove, import it back.
    let multi = format!("{ADDR}/library/multi:1");
    let info: Value =
        serde_json::from_str(&node.podlet(&["image", "inspect", &multi]).stdout).unwrap();
    assert_eq!(info["manifestDigest"], index_digest.as_str());
    assert_eq!(info["platformManifest"], ours.as_str());
    let archive = node.path("multi.tar");
    let out = node.podlet(&["image", "export", &multi, "-o", archive.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(node.podlet(&["image", "rm", &multi]).code, 0);
    let out = node.podlet(&["image", "import", archive.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(node
        .podlet(&["image", "ls"])
        .stdout
        .contains("library/multi:1"));

    // prune: no pod runs here, so every image goes, and every blob and layer with them.
    let out = node.podlet(&["image", "prune"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(node.podlet(&["image", "ls"]).stdout.lines().count(), 1);
    let (blobs, layers, partials) = images_left(&node);
    assert_eq!((blobs, layers, partials.len()), (0, 0, 0));
}

/// A one-file tar layer.
fn tar_with_file(path: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, path.trim_start_matches('/'), content)
        .unwrap();
    b.into_inner().unwrap()
}

#[test]
fn pods_pull_by_policy_with_credentials_and_share_downloads() {
    if !privileged() {
        return;
    }
    let mut node = node_with_registry_config("serializeImagePulls: false\n");
    let reg = Registry::start(&node, Some(("e2e", "s3cret")));
    let (_, layers) = reg.push_busybox(
        "team/app",
        "1",
        "gzip",
        Some(tar_with_file("/app", b"app\n")),
    );
    // Node-level credentials, in the kubelet's place for them.
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("e2e:s3cret");
    std::fs::write(
        node.path("root/config.json"),
        json!({"auths": {ADDR: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    node.start_agent();

    // Two pods asking for the same image at once: each blob is fetched once.
    for name in ["one", "two"] {
        node.write_manifest(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {ADDR}/team/app:1\n    command: [sh, -c, 'cat /app; exec sleep 1000']\n"),
        );
    }
    for name in ["one", "two"] {
        node.wait_running(name);
    }
    for l in &layers {
        assert_eq!(reg.blob_gets(l), 1, "blob {l} fetched more than once");
    }
    let logs = node.podlet(&["logs", "one-e2e"]);
    assert_eq!(logs.stdout, "app\n");

    // Never with a missing image: ErrImageNeverPull, and no request to the registry.
    node.write_manifest(
        "never.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: never\nspec:\n  containers:\n  - name: c\n    image: {ADDR}/team/never:1\n    imagePullPolicy: Never\n"),
    );
    // A missing image with IfNotPresent: ErrImagePull, then ImagePullBackOff.
    node.write_manifest(
        "missing.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: missing\nspec:\n  containers:\n  - name: c\n    image: {ADDR}/team/missing:1\n"),
    );
    let waiting = |pod: &str| {
        node.pods()
            .into_iter()
            .find(|p| p["metadata"]["name"] == pod)
            .and_then(|p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    .as_str()
                    .map(str::to_string)
            })
    };
    node.wait_for("ErrImageNeverPull", Duration::from_secs(30), || {
        (waiting("never-e2e").as_deref() == Some("ErrImageNeverPull")).then_some(())
    });
    node.wait_for("ImagePullBackOff", Duration::from_secs(30), || {
        (waiting("missing-e2e").as_deref() == Some("ImagePullBackOff")).then_some(())
    });
    let log = std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap();
    assert!(!log.contains("team/never"), "Never asked the registry");
    node.remove_manifest("never.yaml");
    node.remove_manifest("missing.yaml");
    node.remove_manifest("one.yaml");
    node.remove_manifest("two.yaml");
}

#[test]
fn image_gc_removes_unused_images_and_keeps_used_ones() {
    if !privileged() {
        return;
    }
    let mut node = node_with_registry_config("");
    let reg = Registry::start(&node, None);
    let (_, layers) = reg.push_busybox(
        "team/old",
        "1",
        "gzip",
        Some(tar_with_file("/old", b"old\n")),
    );
    let out = node.podlet(&["image", "pull", &format!("{ADDR}/team/old:1")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, layer_dirs, _) = images_left(&node);
    assert_eq!(layer_dirs, 2);
    // Any usage is above a 1% threshold: everything unused goes, down to 0%.
    node.agent_args.extend(
        [
            "--image-gc-high-threshold=1",
            "--image-gc-low-threshold=0",
            "--image-minimum-gc-age=0s",
            "--image-gc-period=1s",
        ]
        .map(String::from),
    );
    node.start_agent();
    node.write_manifest(
        "user.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: user\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [sleep, '1000']\n",
    );
    node.wait_running("user");
    // The image record goes first and its blobs in the same pass just after: wait for both.
    let blob = |l: &String| {
        node.path(&format!(
            "root/images/blobs/sha256/{}",
            l.trim_start_matches("sha256:")
        ))
    };
    node.wait_for(
        "the unused image and its blobs to go",
        Duration::from_secs(30),
        || {
            let ls = node.podlet(&["image", "ls"]).stdout;
            (!ls.contains("team/old") && layers[1..].iter().all(|l| !blob(l).exists()))
                .then_some(ls)
        },
    );
    // Its own layer and blobs went with it; the used image and its layer stay.
    let ls = node.podlet(&["image", "ls"]).stdout;
    assert!(ls.contains("docker.io/library/busybox:1.36"), "{ls}");
    assert_eq!(images_left(&node).1, 1);
    assert!(
        node.pod("user").unwrap()["status"]["containerStatuses"][0]["state"]["running"].is_object()
    );
    node.remove_manifest("user.yaml");
    drop(reg);
}

#[test]
fn a_pull_killed_midway_resumes_from_what_it_had() {
    if !privileged() {
        return;
    }
    let node = node_with_registry_config("");
    let reg = Registry::start(&node, None);
    // 128 MiB that does not compress, so the download takes a while.
    let mut big = vec![0u8; 128 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let size = big.len() as u64;
    let (_, layers) = reg.push_busybox("team/big", "1", "", Some(tar_with_file("/big", &big)));
    drop(big);
    let big_blob = layers[1].clone();
    let partial = node.path(&format!(
        "root/images/downloads/{}.partial",
        big_blob.trim_start_matches("sha256:")
    ));
    let image = format!("{ADDR}/team/big:1");
    let mut pull = node
        .command(&["image", "pull", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let had = node.wait_for("part of the blob on disk", Duration::from_secs(60), || {
        let n = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        (n > 1 << 20).then_some(n)
    });
    // SIGKILL: no chance to clean up, as when the agent dies.
    let _ = pull.kill();
    let _ = pull.wait();
    assert!(
        had < size,
        "the download finished before it could be interrupted"
    );
    assert!(partial.exists());
    assert!(!node.podlet(&["image", "ls"]).stdout.contains("team/big"));

    let out = node.podlet(&["image", "pull", &image]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!partial.exists());
    // The second request asked for the rest only.
    let written = reg.blob_gets_written(&big_blob);
    let last = *written.last().expect("a completed GET of the blob");
    assert!(
        last < size,
        "the resumed download fetched everything again: {written:?}"
    );
    let run = node.podlet(&["image", "inspect", &image]);
    assert_eq!(run.code, 0);
}

#[test]
fn cluster_pods_pull_with_image_pull_secrets_and_report_events() {
    let Some(node) =
        TestNode::all_in_one_with_config(&format!("registries:\n  insecure: [\"{ADDR}\"]\n"))
    else {
        return;
    };
    let reg = Registry::start(&node, Some(("e2e", "s3cret")));
    reg.push_busybox(
        "team/private",
        "1",
        "zstd",
        Some(tar_with_file("/private", b"private\n")),
    );
    node.wait_for(
        "the default service account",
        Duration::from_secs(30),
        || (node.kubectl(33, &["get", "sa", "default"]).code == 0).then_some(()),
    );
    let out = node.kubectl(
        33,
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            &format!("--docker-server={ADDR}"),
            "--docker-username=e2e",
            "--docker-password=s3cret",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pod = |name: &str, secret: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{}  containers:\n  - name: c\n    image: {ADDR}/team/private:1\n    imagePullPolicy: Always\n    command: [sh, -c, 'cat /private; exec sleep 1000']\n",
            if secret { "  imagePullSecrets: [{name: regcred}]\n" } else { "" }
        )
    };
    for (name, secret) in [("with", true), ("without", false)] {
        let out = node.kubectl_stdin(33, &["apply", "-f", "-"], Some(&pod(name, secret)));
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let p = node.wait_pod("with", "with Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert_eq!(
        p["status"]["containerStatuses"][0]["image"],
        format!("{ADDR}/team/private:1")
    );
    let out = node.kubectl(33, &["logs", "with"]);
    assert_eq!(out.stdout, "private\n");
    // Without credentials the registry refuses: ErrImagePull, then ImagePullBackOff.
    node.wait_pod("without", "ImagePullBackOff", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    let events = node.get_json(&["events"]).unwrap();
    let of = |pod: &str| -> Vec<(String, String)> {
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == pod)
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let with = of("with");
    assert!(
        with.iter()
            .any(|(r, m)| r == "Pulling" && m.contains("Pulling image")),
        "{with:?}"
    );
    assert!(
        with.iter().any(|(r, m)| r == "Pulled"
            && m.contains("Successfully pulled image")
            && m.contains("Image size:")),
        "{with:?}"
    );
    let without = of("without");
    assert!(
        without
            .iter()
            .any(|(r, m)| r == "Failed" && m.contains("Failed to pull image")),
        "{without:?}"
    );
    assert!(without.iter().any(|(r, _)| r == "BackOff"), "{without:?}");
    let out = node.kubectl(33, &["delete", "pod", "with", "without"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn bearer_token_auth_gets_a_token_with_the_credentials() {
    if !privileged() {
        return;
    }
    let node = node_with_registry_config("");
    let reg = Registry::start_with(&node, Some(("e2e", "t0ken")), true);
    reg.push_busybox("team/tok", "1", "gzip", None);
    let image = format!("{ADDR}/team/tok:1");
    // Anonymous: the token server refuses, and so does the registry.
    let out = node.podlet(&["image", "pull", &image]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    // With credentials (a Docker config given to this pull): a bearer token, then the image.
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("e2e:t0ken");
    let creds = node.path("creds.json");
    std::fs::write(&creds, json!({"auths": {ADDR: {"auth": auth}}}).to_string()).unwrap();
    let out = node.podlet(&["image", "pull", &image, "--creds", creds.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let log = std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("msg=\"authorized request\"")
            && l.contains("http.request.method=GET")
            && l.contains("http.request.uri=/v2/team/tok/manifests/1 ")
            && l.contains("useragent=podlet/")),
        "no manifest GET of podlet's authorized by a token: {}",
        log.lines()
            .filter(|l| l.contains("/manifests/"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
