//! End-to-end: `podlet image` against archives built by the test, hostile ones included.

use std::process::Command;

use podlet_e2e::{busybox_archive, privileged, workspace, TestNode};
use sha2::{Digest, Sha256};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A raw tar with the given (name, type, link, data) entries: names are written into the header
/// directly because well-behaved tar writers refuse `..`.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend([0u8; 1024]);
    out
}

/// A docker-archive whose single layer is `layer`.
fn docker_archive(layer: &[u8], name: &str) -> Vec<u8> {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
        sha(layer)
    );
    let cfg_name = format!("{}.json", sha(config.as_bytes()));
    let manifest =
        format!(r#"[{{"Config":"{cfg_name}","RepoTags":["{name}"],"Layers":["l/layer.tar"]}}]"#);
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.json", manifest.as_bytes()),
        (cfg_name.as_str(), config.as_bytes()),
        ("l/layer.tar", layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn store_files(node: &TestNode) -> Vec<String> {
    let mut out = Vec::new();
    for d in [
        "root/images/layers",
        "root/images/blobs/sha256",
        "root/images/tmp",
    ] {
        for e in std::fs::read_dir(node.path(d)).unwrap().flatten() {
            out.push(e.path().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_layers_are_refused_and_leave_nothing() {
    if !privileged() {
        return;
    }
    let node = TestNode::with_busybox();
    let before = store_files(&node);
    let victim = node.path("victim");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tar-slip",
            raw_tar(&[("../../../../tmp/escaped", tar::EntryType::Regular, "", b"x")]),
            "path contains '..'",
        ),
        (
            "symlink-escape",
            raw_tar(&[
                ("bin/", tar::EntryType::Directory, "", b""),
                (
                    "evil",
                    tar::EntryType::Symlink,
                    victim.to_str().unwrap(),
                    b"",
                ),
                ("evil/owned", tar::EntryType::Regular, "", b"x"),
            ]),
            "goes through a symlink",
        ),
        (
            "hardlink-out",
            raw_tar(&[("shadow", tar::EntryType::Link, "/etc/shadow", b"")]),
            "hardlink target is not in this layer",
        ),
        (
            "device",
            raw_tar(&[("sda", tar::EntryType::Block, "", b"")]),
            "device nodes are not allowed",
        ),
    ];
    std::fs::create_dir(&victim).unwrap();
    for (name, layer, reason) in cases {
        let archive = node.path(&format!("{name}.tar"));
        std::fs::write(
            &archive,
            docker_archive(&layer, &format!("hostile/{name}:1")),
        )
        .unwrap();
        let out = node.podlet(&["image", "import", archive.to_str().unwrap()]);
        assert_ne!(out.code, 0, "{name} was accepted");
        assert!(out.stderr.contains(reason), "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains("layer 0"),
            "{name}: error names the layer: {}",
            out.stderr
        );
        assert_eq!(store_files(&node), before, "{name} left files in the store");
        assert!(!node.podlet(&["image", "ls"]).stdout.contains("hostile"));
    }
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    assert!(!std::path::Path::new("/tmp/escaped").exists());
}

#[test]
fn corrupted_blob_is_rejected() {
    if !privileged() {
        return;
    }
    let node = TestNode::with_busybox();
    let before = store_files(&node);
    // Flip one byte of the layer blob inside an OCI archive: the digest check must catch it.
    let dir = node.path("oci");
    std::fs::create_dir(&dir).unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(busybox_archive())
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let blobs = dir.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut data = std::fs::read(&biggest).unwrap();
    let n = data.len();
    data[n - 10] ^= 0xff;
    std::fs::write(&biggest, data).unwrap();
    let out = node.podlet(&[
        "image",
        "import",
        "--name",
        "corrupt:1",
        dir.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("digest") || out.stderr.contains("layer 0"),
        "{}",
        out.stderr
    );
    assert_eq!(store_files(&node), before);
}

#[test]
fn docker_archive_import_ls_and_rm() {
    if !privileged() {
        return;
    }
    let node = TestNode::with_busybox();
    let archive = node.path("docker.tar");
    let st = Command::new("bash")
        .arg(workspace().join("hack/busybox-image.sh"))
        .arg(&archive)
        .arg("registry.local:5000/tools/bb:2")
        .env("FORMAT", "docker")
        .output()
        .unwrap();
    assert!(st.status.success());
    let out = node.podlet(&["image", "import", archive.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ls = node.podlet(&["image", "ls"]).stdout;
    assert!(
        ls.contains("registry.local:5000/tools/bb:2")
            && ls.contains("docker.io/library/busybox:1.36"),
        "{ls}"
    );
    // Same content as busybox: the layer is shared, so removing one name keeps the other usable.
    let layers = std::fs::read_dir(node.path("root/images/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 1);
    assert_eq!(
        node.podlet(&["image", "rm", "registry.local:5000/tools/bb:2"])
            .code,
        0
    );
    assert_eq!(
        std::fs::read_dir(node.path("root/images/layers"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(node.podlet(&["image", "rm", "busybox:1.36"]).code, 0);
    assert_eq!(
        std::fs::read_dir(node.path("root/images/layers"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(node.path("root/images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let out = node.podlet(&["image", "rm", "busybox:1.36"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not found"));
}

/// A second layer on top of busybox that deletes a file (whiteout) and replaces a directory's
/// content (opaque): a pod must see the merged result.
#[test]
fn whiteouts_and_opaque_dirs_apply_in_the_container() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    let dir = node.path("docker");
    std::fs::create_dir(&dir).unwrap();
    let st = Command::new("bash")
        .arg(workspace().join("hack/busybox-image.sh"))
        .arg(node.path("base.tar"))
        .env("FORMAT", "docker")
        .output()
        .unwrap();
    assert!(st.status.success());
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(node.path("base.tar"))
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let base_layer = manifest[0]["Layers"][0].as_str().unwrap().to_string();
    let top = raw_tar(&[
        ("bin/.wh.vi", tar::EntryType::Regular, "", b""),
        ("etc/", tar::EntryType::Directory, "", b""),
        ("etc/.wh..wh..opq", tar::EntryType::Regular, "", b""),
        ("etc/only-in-top", tar::EntryType::Regular, "", b"top\n"),
    ]);
    std::fs::create_dir(dir.join("top")).unwrap();
    std::fs::write(dir.join("top/layer.tar"), &top).unwrap();
    let base = std::fs::read(dir.join(&base_layer)).unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"],"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}","sha256:{}"]}}}}"#,
        sha(&base),
        sha(&top)
    );
    let cfg_name = format!("{}.json", sha(config.as_bytes()));
    std::fs::write(dir.join(&cfg_name), &config).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        format!(r#"[{{"Config":"{cfg_name}","RepoTags":["layered:1"],"Layers":["{base_layer}","top/layer.tar"]}}]"#),
    )
    .unwrap();
    let out = node.podlet(&["image", "import", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    node.write_manifest(
        "layered.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: layered\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: layered:1\n    command: [\"sleep\", \"1000\"]\n",
    );
    node.wait_running("layered");
    let out = node.podlet(&["exec", "layered-e2e", "--", "sh", "-c", "ls /etc | tr '\\n' ' '; test -e /bin/vi && echo vi-present; test -e /bin/ls && echo ls-present"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listing = out.stdout.lines().next().unwrap_or_default();
    assert!(listing.contains("only-in-top"), "{listing}");
    assert!(
        !listing.contains("passwd") && !listing.contains("group"),
        "opaque /etc still shows the base layer: {listing}"
    );
    assert!(!out.stdout.contains("vi-present"), "whiteout ignored");
    assert!(out.stdout.contains("ls-present"));
}
