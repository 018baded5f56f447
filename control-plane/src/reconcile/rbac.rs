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
            "system:controller:job-controller",
            json!([
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "update", "patch"]},
                {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["update"]},
                {"apiGroups": ["batch"], "resources": ["jobs/finalizers"], "verbs": ["update"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "create", "delete", "patch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "update", "patch"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:cronjob-controller",
            json!([
                {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": ["get", "list", "watch", "update"]},
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "update", "delete", "patch"]},
                {"apiGroups": ["batch"], "resources": ["cronjobs/status"], "verbs": ["update"]},
                {"apiGroups": ["batch"], "resources": ["cronjobs/finalizers"], "verbs": ["update"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "update", "patch"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:service-controller",
            json!([
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch", "update"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:ttl-after-finished-controller",
            json!([
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "delete"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "update", "patch"]},
            ]),
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
            "system:controller:replicaset-controller",
            replicated("apps", "replicasets"),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:replication-controller",
            replicated("", "replicationcontrollers"),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:deployment-controller",
            json!([
                {"apiGroups": ["apps", "extensions"], "resources": ["deployments"], "verbs": ["get", "list", "update", "watch"]},
                {"apiGroups": ["apps", "extensions"], "resources": ["deployments/status"], "verbs": ["update"]},
                {"apiGroups": ["apps", "extensions"], "resources": ["deployments/finalizers"], "verbs": ["update"]},
                {"apiGroups": ["apps", "extensions"], "resources": ["replicasets"], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
                // Pods are read to know when Recreate's old pods are gone; upstream's role
                // also lets it update them.
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "update", "watch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:daemon-set-controller",
            json!([
                {"apiGroups": ["extensions", "apps"], "resources": ["daemonsets"], "verbs": READ},
                {"apiGroups": ["extensions", "apps"], "resources": ["daemonsets/status"], "verbs": ["update"]},
                {"apiGroups": ["extensions", "apps"], "resources": ["daemonsets/finalizers"], "verbs": ["update"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "create", "delete", "patch"]},
                {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]},
                {"apiGroups": ["apps"], "resources": ["controllerrevisions"], "verbs": ["get", "list", "watch", "create", "delete", "update", "patch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "update", "patch"]},
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:statefulset-controller",
            json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": READ},
                {"apiGroups": ["apps"], "resources": ["statefulsets/status"], "verbs": ["update"]},
                {"apiGroups": ["apps"], "resources": ["statefulsets/finalizers"], "verbs": ["update"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "create", "delete", "update", "patch"]},
                {"apiGroups": ["apps"], "resources": ["controllerrevisions"], "verbs": ["get", "create", "delete", "update", "patch", "list", "watch"]},
                {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create"]},
                {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["update", "delete"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "update", "patch"]},
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
            // Upstream's, plus the reads its informers make with kube-controller-manager's
            // own identity (here the controllers' only one): node IPAM and node lifecycle.
            "system:controller:node-controller",
            json!([
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["delete", "get", "list", "patch", "update", "watch"]},
                {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch", "update"]},
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete", "list", "watch"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": READ},
                events(),
            ]),
            CONTROLLER_MANAGER_USER,
        ),
        (
            "system:controller:taint-eviction-controller",
            json!([
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete", "get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": READ},
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

/// The role of the ReplicaSet and ReplicationController controllers, over `resource` of
/// `group` (upstream's `replicaset-controller` and `replication-controller`).
fn replicated(group: &str, resource: &str) -> Value {
    let groups = if group.is_empty() {
        json!([""])
    } else {
        json!([group, "extensions"])
    };
    json!([
        {"apiGroups": groups, "resources": [resource], "verbs": ["get", "list", "update", "watch"]},
        {"apiGroups": groups, "resources": [format!("{resource}/status")], "verbs": ["update"]},
        {"apiGroups": groups, "resources": [format!("{resource}/finalizers")], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "list", "patch", "watch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
    ])
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
