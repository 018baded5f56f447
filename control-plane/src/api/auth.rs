//! Authentication (client certificates, static bearer tokens) and RBAC authorization from the
//! Roles and bindings in the store, with Kubernetes' default roles bootstrapped at start.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use super::resources::{self, Resource};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, uid: &str, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User {
            name: name.into(),
            uid: uid.into(),
            groups,
        }
    }
}

/// The verified client certificate's identity, set on each request by the TLS listener.
#[derive(Debug, Clone)]
pub struct CertIdentity(pub Option<(String, Vec<String>)>);

/// Static bearer tokens (`--token-auth-file`: `token,user,uid,"group1,group2"` per line, as
/// kube-apiserver reads it).
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, User>);

impl Tokens {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut out = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (fields, groups) = match line.split_once(",\"") {
                Some((a, g)) => (a, g.trim_end_matches('"')),
                None => (line, ""),
            };
            let f: Vec<&str> = fields.split(',').collect();
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                anyhow::bail!(
                    "{} line {}: want token,user,uid[,\"groups\"]",
                    path.display(),
                    i + 1
                );
            }
            let mut groups: Vec<String> = groups
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect();
            if f.len() > 3 && !f[3].is_empty() {
                groups.push(f[3].to_string());
            }
            out.insert(f[0].to_string(), User::new(f[1], f[2], groups));
        }
        Ok(Tokens(out))
    }

    pub fn get(&self, token: &str) -> Option<&User> {
        self.0.get(token)
    }
}

/// What a request asks to do, as RBAC sees it.
#[derive(Debug, Clone)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

fn list_has(v: &Value, want: &str) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().any(|x| x == "*" || x == want))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    match a {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let full = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            list_has(&rule["verbs"], verb)
                && list_has(&rule["apiGroups"], group)
                && (list_has(&rule["resources"], &full)
                    || (!subresource.is_empty()
                        && list_has(&rule["resources"], &format!("*/{subresource}"))))
                && rule["resourceNames"]
                    .as_array()
                    .is_none_or(|n| n.is_empty() || n.iter().any(|x| x == name.as_str()))
        }
        Attributes::NonResource { verb, path } => {
            list_has(&rule["verbs"], verb)
                && rule["nonResourceURLs"].as_array().is_some_and(|urls| {
                    urls.iter().filter_map(Value::as_str).any(|u| {
                        u == "*"
                            || u == path
                            || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                    })
                })
        }
    }
}

fn subject_matches(s: &Value, user: &User, binding_ns: &str) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str() {
        Some("User") => name == user.name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = s["namespace"].as_str().unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// Where `r`'s objects in `ns` (or all of them) are kept.
fn prefix_of(r: &Resource, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("{}{ns}/", r.prefix()),
        None => r.prefix(),
    }
}

async fn objects(store: &dyn Store, r: &Resource, ns: Option<&str>) -> Vec<Value> {
    let prefix = prefix_of(r, ns);
    store
        .list(&prefix, None)
        .await
        .map(|(kvs, _)| {
            kvs.iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// RBAC objects decoded once per version: every request's authorization reads the bindings
/// and roles from the store (so several apiservers on one etcd agree at once), and decoding
/// them all anew was a large part of each request's cost.
static RBAC_DECODED: std::sync::Mutex<Option<Memo>> = std::sync::Mutex::new(None);
/// Key → (the version decoded, the object).
type Memo = std::collections::HashMap<String, (crate::store::Rev, std::sync::Arc<Value>)>;
/// Entries kept at most; beyond, the memo starts again.
const RBAC_MEMO: usize = 20_000;

fn decoded(kv: &crate::store::KeyValue) -> Option<std::sync::Arc<Value>> {
    let mut memo = RBAC_DECODED.lock().expect("rbac memo lock");
    let memo = memo.get_or_insert_with(Default::default);
    if let Some((rev, v)) = memo.get(&kv.key) {
        if *rev == kv.mod_rev {
            return Some(v.clone());
        }
    }
    let v = std::sync::Arc::new(serde_json::from_slice::<Value>(&kv.value).ok()?);
    if memo.len() >= RBAC_MEMO {
        memo.clear();
    }
    memo.insert(kv.key.clone(), (kv.mod_rev, v.clone()));
    Some(v)
}

/// The bindings (or roles) under `r` in `ns`, decoded through the memo.
async fn rbac_objects(
    store: &dyn Store,
    r: &Resource,
    ns: Option<&str>,
) -> Vec<std::sync::Arc<Value>> {
    let prefix = prefix_of(r, ns);
    store
        .list(&prefix, None)
        .await
        .map(|(kvs, _)| kvs.iter().filter_map(decoded).collect())
        .unwrap_or_default()
}

async fn role_rules(store: &dyn Store, role_ref: &Value, ns: &str) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let r = match role_ref["kind"].as_str() {
        Some("ClusterRole") => &resources::CLUSTERROLES,
        _ => &resources::ROLES,
    };
    let key = r.key(Some(ns), name);
    match store.get(&key).await {
        Ok(Some(kv)) => decoded(&kv)
            .and_then(|v| v["rules"].as_array().cloned())
            .unwrap_or_default(),
        _ => vec![],
    }
}

/// Node authorizer, then RBAC: allowed when a ClusterRoleBinding, or a RoleBinding in the request's namespace, binds
/// the user to a role with a matching rule. Returns the reason when allowed.
pub async fn authorize(store: &dyn Store, user: &User, a: &Attributes) -> Option<String> {
    if let Some(reason) = node_authorize(store, user, a).await {
        return Some(reason);
    }
    for b in rbac_objects(store, &resources::CLUSTERROLEBINDINGS, None).await {
        if !b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, ""))
        {
            continue;
        }
        for rule in role_rules(store, &b["roleRef"], "").await {
            if rule_allows(&rule, a) {
                return Some(format!(
                    "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{}\"",
                    b["metadata"]["name"].as_str().unwrap_or_default(),
                    b["roleRef"]["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    if let Attributes::Resource { namespace, .. } = a {
        if !namespace.is_empty() {
            for b in rbac_objects(store, &resources::ROLEBINDINGS, Some(namespace)).await {
                if !b["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| subject_matches(s, user, namespace))
                {
                    continue;
                }
                for rule in role_rules(store, &b["roleRef"], namespace).await {
                    if rule_allows(&rule, a) {
                        return Some(format!(
                            "RBAC: allowed by RoleBinding \"{}/{namespace}\"",
                            b["metadata"]["name"].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    None
}

/// Kubernetes' message for a denied request.
pub fn forbidden_message(user: &User, a: &Attributes, qualified: &str) -> String {
    match a {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let what = if name.is_empty() {
                qualified.to_string()
            } else {
                format!("{qualified} \"{name}\"")
            };
            let res = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{namespace}\"")
            };
            format!(
                "{what} is forbidden: User \"{}\" cannot {verb} resource \"{res}\" in API group \"{group}\" {scope}",
                user.name
            )
        }
        Attributes::NonResource { verb, path } => format!(
            "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
            user.name
        ),
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Kubernetes' default ClusterRoles and ClusterRoleBindings (the ones this API can use).
pub fn default_rbac() -> (Vec<Value>, Vec<Value>) {
    let workloads = json!([
        {"apiGroups": [""], "resources": ["pods", "pods/log", "pods/status", "services", "endpoints", "configmaps", "serviceaccounts", "events", "persistentvolumeclaims", "replicationcontrollers"], "verbs": READ},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/status", "daemonsets", "daemonsets/status", "statefulsets"], "verbs": READ},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": READ},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": READ},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": READ},
    ]);
    let edit = json!([
        {"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/eviction", "services", "endpoints", "configmaps", "secrets", "serviceaccounts", "serviceaccounts/token", "events", "persistentvolumeclaims"], "verbs": WRITE},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "replicasets", "replicasets/scale", "daemonsets", "statefulsets"], "verbs": WRITE},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": WRITE},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": WRITE},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": WRITE},
    ]);
    let mut admin = edit.as_array().unwrap().clone();
    admin.push(json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": WRITE}));
    admin.push(json!({"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]}));
    let mut edit_all = edit.as_array().unwrap().clone();
    edit_all.extend(workloads.as_array().unwrap().iter().cloned());
    admin.extend(workloads.as_array().unwrap().iter().cloned());
    let roles = vec![
        (
            "cluster-admin",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        ("admin", json!(admin)),
        ("edit", json!(edit_all)),
        ("view", workloads),
        (
            "system:discovery",
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        (
            "system:basic-user",
            json!([{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]}, {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
        ),
        (
            "system:public-info-viewer",
            json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
    ];
    let csr = "certificatesigningrequests";
    let roles = [
        roles,
        vec![
            ("system:node-bootstrapper", json!([{"apiGroups": ["certificates.k8s.io"], "resources": [csr], "verbs": ["create", "get", "list", "watch"]}])),
            ("system:certificates.k8s.io:certificatesigningrequests:nodeclient", json!([{"apiGroups": ["certificates.k8s.io"], "resources": [format!("{csr}/nodeclient")], "verbs": ["create"]}])),
            ("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", json!([{"apiGroups": ["certificates.k8s.io"], "resources": [format!("{csr}/selfnodeclient")], "verbs": ["create"]}])),
        ],
    ]
    .concat();
    let bindings = vec![
        (
            "podlet:node-bootstrapper",
            "system:node-bootstrapper",
            vec!["system:bootstrappers"],
        ),
        (
            "podlet:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec!["system:bootstrappers"],
        ),
        (
            "podlet:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec!["system:nodes"],
        ),
        ("cluster-admin", "cluster-admin", vec!["system:masters"]),
        (
            "system:discovery",
            "system:discovery",
            vec!["system:authenticated"],
        ),
        (
            "system:basic-user",
            "system:basic-user",
            vec!["system:authenticated"],
        ),
        (
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec!["system:authenticated", "system:unauthenticated"],
        ),
    ];
    let label = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let (component_roles, component_bindings) = crate::reconcile::rbac::defaults();
    let (mut roles, mut bindings): (Vec<Value>, Vec<Value>) = (
        roles
            .into_iter()
            .map(|(n, rules)| json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": n, "labels": label}, "rules": rules}))
            .collect(),
        bindings
            .into_iter()
            .map(|(n, role, groups)| json!({"kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": n, "labels": label},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect::<Vec<_>>()}))
            .collect(),
    );
    roles.extend(component_roles);
    bindings.extend(component_bindings);
    (roles, bindings)
}

/// The node a `system:node:<name>` user in group `system:nodes` is, if it is one.
pub fn node_name(user: &User) -> Option<&str> {
    user.groups
        .iter()
        .any(|g| g == "system:nodes")
        .then(|| user.name.strip_prefix("system:node:"))
        .flatten()
}

async fn object(store: &dyn Store, r: &Resource, ns: Option<&str>, name: &str) -> Option<Value> {
    let kv = store.get(&r.key(ns, name)).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// Whether some pod bound to `node` refers to the configmap/secret `name` in `ns`.
async fn referenced_by_node_pods(
    store: &dyn Store,
    node: &str,
    ns: &str,
    kind: &str,
    name: &str,
) -> bool {
    let pods = &resources::PODS;
    let (vol_key, env_key, env_from_key) = match kind {
        "secrets" => ("secret", "secretKeyRef", "secretRef"),
        _ => ("configMap", "configMapKeyRef", "configMapRef"),
    };
    for p in objects(store, pods, Some(ns)).await {
        if p["spec"]["nodeName"] != node {
            continue;
        }
        let text = p["spec"].to_string();
        let vol_name_field = if kind == "secrets" {
            "secretName"
        } else {
            "name"
        };
        let in_volumes = p["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| {
                v[vol_key][vol_name_field] == name
                    || v["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s[vol_key]["name"] == name)
            });
        let in_env = (text.contains(&format!("\"{env_key}\""))
            || text.contains(&format!("\"{env_from_key}\"")))
            && text.contains(&format!("\"name\":\"{name}\""));
        let pull_secret = kind == "secrets"
            && p["spec"]["imagePullSecrets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == name);
        if in_volumes || in_env || pull_secret {
            return true;
        }
    }
    false
}

/// Kubernetes' Node authorizer, with NodeRestriction's limits on what a node may change: reads
/// of the cluster objects a kubelet needs and of the secrets and config maps its own pods use;
/// writes to its own Node, Lease, pods' status and events. None means no opinion (RBAC decides).
pub async fn node_authorize(store: &dyn Store, user: &User, a: &Attributes) -> Option<String> {
    let node = node_name(user)?;
    let Attributes::Resource {
        verb,
        group,
        resource,
        subresource,
        namespace,
        name,
    } = a
    else {
        return None;
    };
    let read = matches!(verb.as_str(), "get" | "list" | "watch");
    let ok = match (group.as_str(), resource.as_str(), subresource.as_str()) {
        ("", "services" | "endpoints", "") | ("discovery.k8s.io", "endpointslices", "") => read,
        // What the agent's NetworkPolicy enforcement watches (a policy agent's rights, as
        // kube-router's or Calico's node agent has them): every pod (above), namespaces and
        // policies.
        ("", "namespaces", "") | ("networking.k8s.io", "networkpolicies", "") => read,
        ("", "nodes", "") => {
            read || (matches!(verb.as_str(), "create" | "update" | "patch")
                && (name == node || name.is_empty()))
        }
        ("", "nodes", "status") => {
            matches!(verb.as_str(), "get" | "update" | "patch") && name == node
        }
        ("", "pods", "") if read => true,
        ("", "pods", "") if verb == "create" => true, // mirror pods: checked on the object by admission
        ("", "pods", "") if verb == "delete" => {
            object(store, &resources::PODS, Some(namespace), name)
                .await
                .is_some_and(|p| p["spec"]["nodeName"] == node)
        }
        ("", "pods", "status") if matches!(verb.as_str(), "get" | "update" | "patch") => {
            object(store, &resources::PODS, Some(namespace), name)
                .await
                .is_some_and(|p| p["spec"]["nodeName"] == node)
        }
        ("", "pods", "eviction") => verb == "create",
        ("", "secrets" | "configmaps", "") if verb == "get" => {
            referenced_by_node_pods(store, node, namespace, resource, name).await
        }
        ("", "serviceaccounts", "token") => verb == "create",
        ("", "events", "") | ("events.k8s.io", "events", "") => {
            matches!(verb.as_str(), "create" | "update" | "patch")
        }
        ("coordination.k8s.io", "leases", "") => {
            namespace == "kube-node-lease"
                && (name == node || (name.is_empty() && verb == "create"))
        }
        ("certificates.k8s.io", "certificatesigningrequests", "") => {
            matches!(verb.as_str(), "create" | "get" | "list" | "watch")
        }
        ("authentication.k8s.io", "tokenreviews", "")
        | ("authorization.k8s.io", "subjectaccessreviews", "") => verb == "create",
        _ => false,
    };
    ok.then(|| format!("Node authorizer: allowed for node \"{node}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_like_rbac() {
        let view =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        let a = |verb: &str, res: &str, sub: &str| Attributes::Resource {
            verb: verb.into(),
            group: "".into(),
            resource: res.into(),
            subresource: sub.into(),
            namespace: "default".into(),
            name: "x".into(),
        };
        assert!(rule_allows(&view, &a("get", "pods", "")));
        assert!(rule_allows(&view, &a("get", "pods", "log")));
        assert!(!rule_allows(&view, &a("create", "pods", "")));
        assert!(!rule_allows(&view, &a("get", "pods", "exec")));
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["y"], "verbs": ["get"]});
        assert!(!rule_allows(&named, &a("get", "configmaps", "")));
        let nr = json!({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]});
        assert!(rule_allows(
            &nr,
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/apis/apps/v1".into()
            }
        ));
        let u = User::new("bob", "1", vec![]);
        assert_eq!(
            forbidden_message(&u, &a("create", "pods", ""), "pods"),
            "pods \"x\" is forbidden: User \"bob\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }

    #[test]
    fn token_files_parse_like_kube_apiservers() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens.csv");
        std::fs::write(&f, "# comment\nabc,alice,1,\"devs,ops\"\ndef,bob,2\n").unwrap();
        let t = Tokens::load(&f).unwrap();
        assert_eq!(
            t.get("abc").unwrap().groups,
            ["devs", "ops", "system:authenticated"]
        );
        assert_eq!(t.get("def").unwrap().name, "bob");
        std::fs::write(&f, "onlytoken\n").unwrap();
        assert!(Tokens::load(&f).unwrap_err().to_string().contains("line 1"));
    }
}
