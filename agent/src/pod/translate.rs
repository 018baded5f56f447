//! Pure translation of pod specs into runtime terms, following Kubernetes' own rules: QoS
//! classes, command/args over ENTRYPOINT/CMD, `$(VAR)` expansion, users and capabilities.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVar, SecurityContext};
use k8s_rules::qos::QosClass;
use k8s_rules::resources::container_resource;
use podlet_runtime::image::ImageConfig;
use podlet_runtime::spec::DEFAULT_CAPABILITIES;

/// The kubelet's OOM score adjustment for a container.
pub fn oom_score_adj(qos: QosClass, container: &Container, memory_capacity: f64) -> i32 {
    match qos {
        QosClass::Guaranteed => -997,
        QosClass::BestEffort => 1000,
        QosClass::Burstable => {
            let req = container_resource(container, "memory").0.value() as f64;
            let adj = 1000 - (1000.0 * req / memory_capacity.max(1.0)) as i64;
            adj.clamp(2, 999) as i32
        }
    }
}

/// Expands `$(VAR)` from `env`; `$$(VAR)` is the escaped literal, unknown references stay as is.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// ConfigMaps and Secrets a pod refers to, as fetched from the apiserver (absent ones are
/// missing), and the service account tokens of its projected volumes by (audience, expiry).
#[derive(Debug, Default)]
pub struct ApiData {
    pub config_maps: std::collections::HashMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: std::collections::HashMap<String, BTreeMap<String, Vec<u8>>>,
    pub tokens: std::collections::HashMap<(String, i64), String>,
}

/// Whether `k` may be an environment variable name (Kubernetes' relaxed rule: printable ASCII
/// without '=').
fn env_name_ok(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// Values a `fieldRef` may name, known to the node.
pub struct PodFields<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub node_name: &'a str,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    pub service_account: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

/// `metadata.labels['key']` or `metadata.annotations['key']` (the kubelet's
/// `ExtractFieldPathAsString`): the value, empty when the key is absent; `None` for other paths.
pub fn subscripted_field(
    path: &str,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    let (map, rest) = if let Some(r) = path.strip_prefix("metadata.labels[") {
        (labels, r)
    } else if let Some(r) = path.strip_prefix("metadata.annotations[") {
        (annotations, r)
    } else {
        return None;
    };
    let key = rest
        .strip_suffix(']')?
        .trim_matches(|c| c == '\'' || c == '"');
    Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
}

/// The container's environment: image env, then the pod's (in order, with `$(VAR)` expansion
/// against what came before), as `NAME=value`.
pub fn environment(
    c: &Container,
    image: &ImageConfig,
    hostname: &str,
    fields: &PodFields<'_>,
    data: &ApiData,
    field_prefix: &str,
) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let mut order: Vec<String> = Vec::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let set =
        |k: String, v: String, order: &mut Vec<String>, env: &mut BTreeMap<String, String>| {
            if !env.contains_key(&k) {
                order.push(k.clone());
            }
            env.insert(k, v);
        };
    for kv in image.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k.to_string(), v.to_string(), &mut order, &mut env);
    }
    set(
        "HOSTNAME".into(),
        hostname.to_string(),
        &mut order,
        &mut env,
    );
    for (i, from) in c.env_from.iter().flatten().enumerate() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (what, name, optional, src) = if let Some(r) = &from.config_map_ref {
            (
                "configmap",
                &r.name,
                r.optional,
                data.config_maps.get(&r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            ("secret", &r.name, r.optional, data.secrets.get(&r.name))
        } else {
            continue;
        };
        match src {
            Some(m) => {
                for (k, v) in m {
                    let key = format!("{prefix}{k}");
                    if env_name_ok(&key) {
                        let v = String::from_utf8_lossy(v).into_owned();
                        set(key, v, &mut order, &mut env);
                    }
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(format!(
                    "{field_prefix}.envFrom[{i}]: {what} {name:?} not found"
                ))
            }
        }
    }
    for (
        i,
        EnvVar {
            name,
            value,
            value_from,
        },
    ) in c.env.iter().flatten().enumerate()
    {
        let v = match (value, value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => fields.name.to_string(),
                        "metadata.namespace" => fields.namespace.to_string(),
                        "metadata.uid" => fields.uid.to_string(),
                        "spec.nodeName" => fields.node_name.to_string(),
                        "spec.serviceAccountName" => fields.service_account.to_string(),
                        "status.hostIP" => fields.host_ip.to_string(),
                        "status.podIP" => fields.pod_ip.to_string(),
                        other if subscripted_field(other, fields.labels, fields.annotations)
                            .is_some() =>
                        {
                            subscripted_field(other, fields.labels, fields.annotations)
                                .unwrap_or_default()
                        }
                        other => {
                            return Err(format!(
                                "{field_prefix}.env[{i}].valueFrom.fieldRef.fieldPath: Unsupported value: {other:?}"
                            ))
                        }
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    match data.config_maps.get(&r.name).map(|m| m.get(&r.key)) {
                        Some(Some(v)) => String::from_utf8_lossy(v).into_owned(),
                        _ if r.optional == Some(true) => continue,
                        Some(None) => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, fields.namespace, r.name
                            ))
                        }
                        None => return Err(format!("configmap {:?} not found", r.name)),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    match data.secrets.get(&r.name).map(|m| m.get(&r.key)) {
                        Some(Some(v)) => String::from_utf8_lossy(v).into_owned(),
                        _ if r.optional == Some(true) => continue,
                        Some(None) => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, fields.namespace, r.name
                            ))
                        }
                        None => return Err(format!("secret {:?} not found", r.name)),
                    }
                } else {
                    return Err(format!(
                        "{field_prefix}.env[{i}].valueFrom: Unsupported value: resourceFieldRef"
                    ));
                }
            }
            (None, None) => String::new(),
        };
        set(name.clone(), v, &mut order, &mut env);
    }
    let list = order.iter().map(|k| format!("{k}={}", env[k])).collect();
    Ok((list, env))
}

/// The process's argv (Kubernetes' rules for command/args against ENTRYPOINT/CMD).
pub fn argv(c: &Container, image: &ImageConfig, env: &BTreeMap<String, String>) -> Vec<String> {
    let expand_all = |v: &Vec<String>| v.iter().map(|a| expand(a, env)).collect::<Vec<_>>();
    let mut out = Vec::new();
    match (&c.command, &c.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            out.extend(expand_all(cmd));
            out.extend(args.as_ref().map(expand_all).unwrap_or_default());
        }
        (_, Some(args)) if !args.is_empty() => {
            out.extend(image.entrypoint.clone().unwrap_or_default());
            out.extend(expand_all(args));
        }
        _ => {
            out.extend(image.entrypoint.clone().unwrap_or_default());
            out.extend(image.cmd.clone().unwrap_or_default());
        }
    }
    out
}

/// Looks `name` up in a passwd/group style file of the image (never following a symlink out).
fn lookup(rootfs: &Path, file: &str, name: &str) -> Option<Vec<String>> {
    let p = rootfs.join(file);
    let meta = std::fs::symlink_metadata(&p).ok()?;
    if !meta.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(p).ok()?;
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(name))
}

fn groups_of(rootfs: &Path, user: &str) -> Vec<u32> {
    let p = rootfs.join("etc/group");
    let Ok(meta) = std::fs::symlink_metadata(&p) else {
        return Vec::new();
    };
    if !meta.is_file() {
        return Vec::new();
    }
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == user))
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .collect()
}

/// Resolves (uid, gid, supplementary gids) from the security contexts and the image's `User`.
pub fn user(
    rootfs: &Path,
    image_user: Option<&str>,
    pod_sc: Option<&k8s_openapi::api::core::v1::PodSecurityContext>,
    sc: Option<&SecurityContext>,
) -> Result<(u32, u32, Vec<u32>), String> {
    let (mut uid, mut gid, mut name) = (0u32, 0u32, Some("root".to_string()));
    let mut gid_set = false;
    if let Some(u) = image_user.filter(|u| !u.is_empty()) {
        let (user_part, group_part) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        if let Ok(n) = user_part.parse::<u32>() {
            uid = n;
            name = lookup(rootfs, "etc/passwd", user_part).map(|_| user_part.to_string());
            if let Some(f) = std::fs::read_to_string(rootfs.join("etc/passwd"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
                        .find(|f| f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n))
                })
            {
                gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0);
                name = f.first().cloned();
            }
        } else {
            let f = lookup(rootfs, "etc/passwd", user_part).ok_or_else(|| {
                format!("image user {user_part:?} is not in the image's /etc/passwd")
            })?;
            uid = f
                .get(2)
                .and_then(|x| x.parse().ok())
                .ok_or("malformed /etc/passwd")?;
            gid = f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0);
            name = Some(user_part.to_string());
        }
        if let Some(g) = group_part {
            gid_set = true;
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => lookup(rootfs, "etc/group", g)
                    .and_then(|f| f.get(2).and_then(|x| x.parse().ok()))
                    .ok_or_else(|| format!("image group {g:?} is not in the image's /etc/group"))?,
            };
        }
    }
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    if let Some(u) = run_as_user {
        uid = u32::try_from(u).map_err(|_| format!("runAsUser {u} is out of range"))?;
        if !gid_set {
            gid = 0;
        }
        name = None;
    }
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    if let Some(g) = run_as_group {
        gid = u32::try_from(g).map_err(|_| format!("runAsGroup {g} is out of range"))?;
    }
    let run_as_non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if run_as_non_root && uid == 0 {
        return Err(if run_as_user.is_some() {
            "container's runAsUser breaks non-root policy".into()
        } else {
            "container has runAsNonRoot and image will run as root".into()
        });
    }
    let mut extra: Vec<u32> = name.map(|n| groups_of(rootfs, &n)).unwrap_or_default();
    if let Some(p) = pod_sc {
        extra.extend(
            p.supplemental_groups
                .iter()
                .flatten()
                .filter_map(|g| u32::try_from(*g).ok()),
        );
        if let Some(fs) = p.fs_group.and_then(|g| u32::try_from(g).ok()) {
            extra.push(fs);
        }
    }
    extra.sort_unstable();
    extra.dedup();
    extra.retain(|g| *g != gid);
    Ok((uid, gid, extra))
}

/// containerd's default capabilities with the container's `add`/`drop` applied.
pub fn capabilities(sc: Option<&SecurityContext>) -> Vec<String> {
    let norm = |c: &String| {
        let up = c.to_uppercase();
        if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        }
    };
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    if let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) {
        let drop: Vec<String> = c.drop.iter().flatten().map(norm).collect();
        if drop.iter().any(|d| d == "CAP_ALL") {
            caps.clear();
        } else {
            caps.retain(|x| !drop.contains(x));
        }
        for a in c.add.iter().flatten().map(norm) {
            if a == "CAP_ALL" {
                // All that this node holds: a runtime cannot grant more.
                caps = caps::read(None, caps::CapSet::Bounding)
                    .unwrap_or_else(|_| caps::all())
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
            } else if !caps.contains(&a) {
                caps.push(a);
            }
        }
    }
    caps
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    /// A container with the given requests and limits (shared by the resource tests).
    pub(crate) fn ctr(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Container {
        let m = |v: &[(&str, &str)]| {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|(k, q)| (k.to_string(), Quantity(q.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: m(req),
                limits: m(lim),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn oom_scores() {
        let c = ctr(&[("memory", "1Gi")], &[]);
        let cap = 4.0 * 1024.0 * 1024.0 * 1024.0;
        assert_eq!(oom_score_adj(QosClass::Burstable, &c, cap), 750);
        assert_eq!(oom_score_adj(QosClass::Guaranteed, &c, cap), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, &c, cap), 1000);
        let huge = ctr(&[("memory", "8Gi")], &[]);
        assert_eq!(oom_score_adj(QosClass::Burstable, &huge, cap), 2);
    }

    #[test]
    fn command_and_args_override_image() {
        let img = ImageConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let env: BTreeMap<String, String> = [("X".to_string(), "1".to_string())].into();
        let mut c = Container::default();
        assert_eq!(argv(&c, &img, &env), ["/ep", "default"]);
        c.args = Some(vec!["a$(X)".into(), "$$(X)".into()]);
        assert_eq!(argv(&c, &img, &env), ["/ep", "a1", "$(X)"]);
        c.command = Some(vec!["sh".into()]);
        c.args = None;
        assert_eq!(argv(&c, &img, &env), ["sh"]);
    }

    #[test]
    fn env_merges_and_expands() {
        let img = ImageConfig {
            env: Some(vec!["PATH=/bin".into(), "A=img".into()]),
            ..Default::default()
        };
        let c = Container {
            env: Some(vec![
                EnvVar {
                    name: "A".into(),
                    value: Some("pod".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "B".into(),
                    value: Some("$(A)-$(PATH)-$(NOPE)".into()),
                    value_from: None,
                },
                // How the Job controller passes JOB_COMPLETION_INDEX.
                EnvVar {
                    name: "INDEX".into(),
                    value: None,
                    value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                        field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                            field_path:
                                "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                                    .into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    }),
                },
            ]),
            ..Default::default()
        };
        let annotations = BTreeMap::from([(
            "batch.kubernetes.io/job-completion-index".to_string(),
            "2".to_string(),
        )]);
        let f = PodFields {
            name: "p",
            namespace: "ns",
            uid: "u",
            node_name: "n",
            host_ip: "",
            pod_ip: "",
            service_account: "",
            labels: None,
            annotations: Some(&annotations),
        };
        let (list, _) =
            environment(&c, &img, "p", &f, &ApiData::default(), "spec.containers[0]").unwrap();
        assert_eq!(
            list,
            [
                "PATH=/bin",
                "A=pod",
                "HOSTNAME=p",
                "B=pod-/bin-$(NOPE)",
                "INDEX=2"
            ]
        );
    }

    #[test]
    fn users_resolve_from_image_and_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "www:x:34:\nextra:x:50:www\n").unwrap();
        assert_eq!(
            user(dir.path(), Some("www"), None, None).unwrap(),
            (33, 34, vec![50])
        );
        assert_eq!(
            user(dir.path(), Some("1000:1000"), None, None).unwrap(),
            (1000, 1000, vec![])
        );
        let sc = SecurityContext {
            run_as_user: Some(7),
            run_as_non_root: Some(true),
            ..Default::default()
        };
        assert_eq!(user(dir.path(), None, None, Some(&sc)).unwrap().0, 7);
        let nonroot = SecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        assert!(user(dir.path(), None, None, Some(&nonroot))
            .unwrap_err()
            .contains("runAsNonRoot"));
        assert!(user(dir.path(), Some("nobody"), None, None).is_err());
    }

    #[test]
    fn capability_add_drop() {
        use k8s_openapi::api::core::v1::Capabilities;
        let sc = SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        };
        assert_eq!(capabilities(Some(&sc)), ["CAP_NET_ADMIN"]);
        assert_eq!(capabilities(None).len(), 14);
    }
}
