//! Static pods from a manifest directory: YAML or JSON `v1 Pod` files, named and identified as the
//! kubelet does (`<name>-<node>`, UID a hash of the manifest, file and node, so an edited file is
//! a new pod). A bad file is reported with its path and field and affects no other pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_rules::dns::{is_dns_label, is_dns_subdomain};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// A static pod read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    /// The manifest; None for pods from the apiserver.
    pub file: Option<PathBuf>,
    pub pod: Pod,
}

/// Desired pods keyed by UID.
pub type Desired = BTreeMap<String, StaticPod>;

/// Parses one manifest. Errors name the field (`spec.containers[0].image: ...`).
pub fn parse(data: &[u8]) -> Result<Pod, String> {
    let trimmed = data.iter().find(|b| !b.is_ascii_whitespace());
    let pod: Pod = if trimmed == Some(&b'{') {
        let de = &mut serde_json::Deserializer::from_slice(data);
        serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))?
    } else {
        let de = serde_yaml::Deserializer::from_slice(data);
        serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))?
    };
    validate(&pod)?;
    Ok(pod)
}

fn validate(pod: &Pod) -> Result<(), String> {
    let name = pod
        .metadata
        .name
        .as_deref()
        .ok_or("metadata.name: Required value")?;
    if !is_dns_subdomain(name) {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be a lowercase RFC 1123 subdomain"
        ));
    }
    if let Some(ns) = &pod.metadata.namespace {
        if !is_dns_label(ns) {
            return Err(format!("metadata.namespace: Invalid value: {ns:?}"));
        }
    }
    let spec = pod.spec.as_ref().ok_or("spec: Required value")?;
    if spec.containers.is_empty() {
        return Err("spec.containers: Required value".into());
    }
    let mut seen = std::collections::HashSet::new();
    let groups = [
        (
            "spec.initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("spec.containers", &spec.containers[..]),
    ];
    for (field, list) in groups {
        for (i, c) in list.iter().enumerate() {
            if !is_dns_label(&c.name) {
                return Err(format!(
                    "{field}[{i}].name: Invalid value: {:?}: must be a lowercase RFC 1123 label",
                    c.name
                ));
            }
            if !seen.insert(c.name.clone()) {
                return Err(format!("{field}[{i}].name: Duplicate value: {:?}", c.name));
            }
            match c.image.as_deref() {
                None | Some("") => return Err(format!("{field}[{i}].image: Required value")),
                Some(img) => {
                    podlet_runtime::image::reference::normalize(img)
                        .map_err(|e| format!("{field}[{i}].image: Invalid value: {e}"))?;
                }
            }
        }
    }
    if spec.host_users == Some(false) {
        for (field, set) in [
            ("hostNetwork", spec.host_network),
            ("hostPID", spec.host_pid),
            ("hostIPC", spec.host_ipc),
        ] {
            if set == Some(true) {
                return Err(format!(
                    "spec.{field}: Forbidden: when `hostUsers` is false"
                ));
            }
        }
    }
    if let Some(p) = spec.restart_policy.as_deref() {
        if !["Always", "OnFailure", "Never"].contains(&p) {
            return Err(format!(
                "spec.restartPolicy: Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ));
        }
    }
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for (field, list) in groups {
        for (i, c) in list.iter().enumerate() {
            for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
                if !volumes.contains(&m.name.as_str()) {
                    return Err(format!(
                        "{field}[{i}].volumeMounts[{j}].name: Not found: {:?}",
                        m.name
                    ));
                }
                if !m.mount_path.starts_with('/') {
                    return Err(format!(
                        "{field}[{i}].volumeMounts[{j}].mountPath: Invalid value: must be absolute"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Gives a parsed manifest its node identity, as the kubelet's file source does.
pub fn to_static(mut pod: Pod, file: &Path, node: &str) -> StaticPod {
    // The identity leaves out container resources: changing only those resizes the pod in
    // place (Kubernetes' in-place resize) instead of replacing it.
    let mut identity = serde_json::to_value(&pod).unwrap_or_default();
    if let Some(cs) = identity
        .pointer_mut("/spec/containers")
        .and_then(|c| c.as_array_mut())
    {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("resources");
            }
        }
    }
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&identity).unwrap_or_default());
    h.update(format!("host:{node}").as_bytes());
    h.update(format!("file:{}", file.display()).as_bytes());
    let uid = hex::encode(&h.finalize()[..16]);
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    pod.metadata.uid = Some(uid.clone());
    let ann = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    ann.insert("kubernetes.io/config.source".into(), "file".into());
    ann.insert("kubernetes.io/config.hash".into(), uid);
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    StaticPod {
        file: Some(file.to_path_buf()),
        pod,
    }
}

/// Reads every manifest in `dir`. Returns the good pods and one error line per bad file.
pub fn scan(dir: &Path, node: &str) -> (Desired, Vec<String>) {
    let mut desired = Desired::new();
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                !name.starts_with('.') && p.is_file()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            Vec::new()
        }
    };
    files.sort();
    let mut names: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for f in files {
        let data = match std::fs::read(&f) {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let pod = match parse(&data) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let sp = to_static(pod, &f, node);
        let key = (
            sp.pod.metadata.namespace.clone().unwrap_or_default(),
            sp.pod.metadata.name.clone().unwrap_or_default(),
        );
        if let Some(first) = names.get(&key) {
            errors.push(format!(
                "{}: metadata.name: Duplicate value: pod {}/{} is already defined by {}",
                f.display(),
                key.0,
                key.1,
                first.display()
            ));
            continue;
        }
        names.insert(key, f.clone());
        let uid = sp.pod.metadata.uid.clone().unwrap_or_default();
        desired.insert(uid, sp);
    }
    (desired, errors)
}

/// Watches `dir` with inotify and publishes the desired pods whenever it changes (and every
/// 20 s as a backstop, like the kubelet's file source). Bad files are logged once per change.
pub async fn watch_dir(
    dir: PathBuf,
    node: String,
    tx: watch::Sender<Desired>,
    mut last_errors: Vec<String>,
) {
    use inotify::{Inotify, WatchMask};
    let _ = std::fs::create_dir_all(&dir);
    let inotify = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("inotify: {e}; falling back to polling {}", dir.display());
            loop {
                publish(&dir, &node, &tx, &mut Vec::new());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mask = WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF;
    if let Err(e) = inotify.watches().add(&dir, mask) {
        tracing::error!("watching {}: {e}", dir.display());
    }
    let mut stream = match inotify.into_event_stream(vec![0u8; 4096]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("inotify stream: {e}");
            return;
        }
    };
    use futures_util::StreamExt;
    publish(&dir, &node, &tx, &mut last_errors);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next()).await;
        if let Ok(None) = ev {
            return;
        }
        // Take whatever else is already queued (an editor's write + rename) in the same rescan,
        // without waiting for more: a manifest dropped in place is one rename.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, stream.next()).await {}
        publish(&dir, &node, &tx, &mut last_errors);
    }
}

fn publish(dir: &Path, node: &str, tx: &watch::Sender<Desired>, last_errors: &mut Vec<String>) {
    let (desired, errors) = scan(dir, node);
    for e in &errors {
        if !last_errors.contains(e) {
            tracing::error!(source = "file", "invalid static pod manifest: {e}");
        }
    }
    *last_errors = errors;
    crate::util::send_if_changed(tx, &desired);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";

    #[test]
    fn yaml_and_json_parse() {
        assert!(parse(GOOD.as_bytes()).is_ok());
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
        assert!(parse(json.as_bytes()).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let bad_type = GOOD.replace(
            "    image: busybox\n",
            "    image: busybox\n    ports:\n    - containerPort: eighty\n",
        );
        let e = parse(bad_type.as_bytes()).unwrap_err();
        assert!(
            e.starts_with("spec.containers[0].ports[0].containerPort"),
            "{e}"
        );
        let no_image = GOOD.replace("    image: busybox\n", "");
        assert_eq!(
            parse(no_image.as_bytes()).unwrap_err(),
            "spec.containers[0].image: Required value"
        );
        let e = parse(b"metadata: [oops").unwrap_err();
        assert!(!e.is_empty());
        let dup = GOOD.replace(
            "  - name: c\n    image: busybox\n",
            "  - name: c\n    image: busybox\n  - name: c\n    image: busybox\n",
        );
        assert!(parse(dup.as_bytes()).unwrap_err().contains("Duplicate"));
    }

    #[test]
    fn static_identity_is_stable_and_changes_with_content() {
        let p = parse(GOOD.as_bytes()).unwrap();
        let a = to_static(p.clone(), Path::new("/m/web.yaml"), "n1");
        let b = to_static(p.clone(), Path::new("/m/web.yaml"), "n1");
        assert_eq!(a, b);
        assert_eq!(a.pod.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(a.pod.metadata.namespace.as_deref(), Some("default"));
        let edited = format!("{GOOD}  restartPolicy: Never\n");
        let c = to_static(
            parse(edited.as_bytes()).unwrap(),
            Path::new("/m/web.yaml"),
            "n1",
        );
        assert_ne!(a.pod.metadata.uid, c.pod.metadata.uid);
        let resized = GOOD.replace(
            "    image: busybox\n",
            "    image: busybox\n    resources:\n      limits: {cpu: 1}\n",
        );
        let r = to_static(
            parse(resized.as_bytes()).unwrap(),
            Path::new("/m/web.yaml"),
            "n1",
        );
        assert_eq!(
            a.pod.metadata.uid, r.pod.metadata.uid,
            "resources only: same pod"
        );
        assert_ne!(a.pod, r.pod);
    }

    #[test]
    fn scan_skips_bad_and_duplicate_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("c.yaml"), "kind: Pod\nspec: 7\n").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "garbage").unwrap();
        let (desired, errors) = scan(dir.path(), "n");
        assert_eq!(desired.len(), 1);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .any(|e| e.contains("b.yaml") && e.contains("Duplicate")));
        assert!(errors
            .iter()
            .any(|e| e.contains("c.yaml") && e.contains("spec")));
    }
}
