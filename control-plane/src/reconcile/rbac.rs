//! The ClusterRoles Kubernetes bootstraps for the control plane's own components, bound to the
//! users they run as: `system:kube-scheduler` as upstream's, and one
//! `system:controller:<name>` role per controller (upstream binds each to the controller's
//! service account; podlet's controllers share the `system:kube-controller-manager` user).

use serde_json::{json, Value};

pub const SCHEDULER_USER: &str = "system:kube-scheduler";
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

const READ: [&str; 3] = ["get", "list", "watch"];

fn leases(name: &str) -> Value {
    json!([
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [name], "verbs": ["get", "update"]},
    ])
}

/// (role name, rules, user it is bound to).
fn roles() -> Vec<(&'static str, Value, &'static str)> {
    let mut scheduler = leases("kube-scheduler")
        .as_array()
        .cloned()
        .unwrap_or_default();
    scheduler.extend([
        json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]}),
        json!({"apiGroups": [""], "resources": ["nodes"], "verbs": READ}),
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["delete", "get", "list", "watch"]}),
        json!({"apiGroups": [""], "resources": ["bindings", "pods/binding"], "verbs": ["create"]}),
        json!({"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]}),
        json!({"apiGroups": [""], "resources": ["replicationcontrollers", "services", "namespaces"], "verbs": READ}),
        json!({"apiGroups": ["apps"], "resources": ["replicasets", "statefulsets"], "verbs": READ}),
        json!({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": READ}),
        json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}),
        json!({"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}),
    ]);
    vec![
        ("system:kube-scheduler", json!(scheduler), SCHEDULER_USER),
        (
            "system:kube-controller-manager",
            leases("kube-controller-manager"),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:generic-garbage-collector",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["delete", "get", "list", "patch", "update", "watch"]}]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:certificate-controller",
            json!([
                {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["delete", "get", "list", "watch"]},
                {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval", "certificatesigningrequests/status"], "verbs": ["update"]},
                {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "resourceNames": ["kubernetes.io/kube-apiserver-client", "kubernetes.io/kube-apiserver-client-kubelet"], "verbs": ["approve", "sign"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:endpointslice-controller",
            json!([
                {"apiGroups": [""], "resources": ["services", "pods", "nodes"], "verbs": READ},
                {"apiGroups": [""], "resources": ["services/finalizers"], "verbs": ["update"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch", "create", "update", "delete"]},
                events(),
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:endpoint-controller",
            json!([
                {"apiGroups": [""], "resources": ["services", "pods"], "verbs": READ},
                {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list", "watch", "create", "update", "delete"]},
                {"apiGroups": [""], "resources": ["endpoints/restricted"], "verbs": ["create"]},
                events(),
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:disruption-controller",
            json!([
                {"apiGroups": ["extensions", "apps"], "resources": ["deployments"], "verbs": READ},
                {"apiGroups": ["apps", "extensions"], "resources": ["replicasets"], "verbs": READ},
                {"apiGroups": [""], "resources": ["replicationcontrollers", "pods"], "verbs": READ},
                {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": READ},
                {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": READ},
                {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets/status"], "verbs": ["update"]},
                {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["get"]},
                events(),
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:pod-garbage-collector",
            json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "delete"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": READ},
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:namespace-controller",
            json!([
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch", "delete"]},
                {"apiGroups": [""], "resources": ["namespaces/finalize", "namespaces/status"], "verbs": ["update"]},
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "delete", "deletecollection"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:service-account-controller",
            json!([
                {"apiGroups": [""], "resources": ["namespaces", "serviceaccounts"], "verbs": READ},
                {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["create"]},
                events(),
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:root-ca-cert-publisher",
            json!([
                {"apiGroups": [""], "resources": ["namespaces", "configmaps"], "verbs": READ},
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update"]},
                events(),
            ]),
            CONTROLLER_MANAGER_USER,
        ),
    ]
}

/// Upstream's `eventsRule()`.
fn events() -> Value {
    json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]})
}

/// The roles and their bindings, as bootstrap objects.
pub fn defaults() -> (Vec<Value>, Vec<Value>) {
    let label = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    roles()
        .into_iter()
        .map(|(name, rules, user)| {
            (
                json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
                    "metadata": {"name": name, "labels": label}, "rules": rules}),
                json!({"kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
                    "metadata": {"name": name, "labels": label},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}),
            )
        })
        .unzip()
}
