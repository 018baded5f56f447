//! The resources this apiserver serves: names, scope, verbs and the k8s-openapi type behind each
//! (used to validate bodies, find unknown fields and generate the OpenAPI schema).

use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `status` subresource (main-resource writes keep the stored status).
    pub status: bool,
    /// Extra subresources beyond `status`.
    pub subresources: &'static [&'static str],
    /// Served from the store (false: computed, read-only, like componentstatuses).
    pub stored: bool,
    /// A review (create-only, answered and never stored): access and token reviews.
    pub review: bool,
    /// Decodes a body into the typed object and back: the normalized JSON, or why not.
    pub decode: fn(&Value) -> Result<Value, String>,
    /// The schema's name in `components.schemas` (it registers itself and its dependencies).
    pub schema: fn(&mut SchemaGenerator) -> String,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Qualified name as in messages: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.review {
            vec!["create"]
        } else if self.stored {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        } else {
            vec!["list", "get"]
        }
    }

    /// Storage key prefix for objects of this resource (`/registry/<group>/<plural>/`).
    pub fn prefix(&self) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{g}/{}/", self.plural)
    }

    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        match ns {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }
}

fn decode<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> String {
    g.subschema_for::<T>();
    T::schema_name().into_owned()
}

macro_rules! resource {
    ($ty:ty, $group:expr, $version:expr, $kind:expr, $plural:expr, $namespaced:expr,
     short: $short:expr, cat: $cat:expr, status: $status:expr, sub: $sub:expr) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: const_lower($kind),
            namespaced: $namespaced,
            short_names: $short,
            categories: $cat,
            status: $status,
            subresources: $sub,
            stored: true,
            review: false,
            decode: decode::<$ty>,
            schema: schema::<$ty>,
        }
    };
}

/// Singular names are the lowercased kind.
const fn const_lower(kind: &'static str) -> &'static str {
    match kind.as_bytes() {
        b"Pod" => "pod",
        b"Node" => "node",
        b"Namespace" => "namespace",
        b"Service" => "service",
        b"Endpoints" => "endpoints",
        b"ConfigMap" => "configmap",
        b"Secret" => "secret",
        b"ServiceAccount" => "serviceaccount",
        b"Event" => "event",
        b"ComponentStatus" => "componentstatus",
        b"Deployment" => "deployment",
        b"ReplicaSet" => "replicaset",
        b"DaemonSet" => "daemonset",
        b"Lease" => "lease",
        b"EndpointSlice" => "endpointslice",
        b"Role" => "role",
        b"RoleBinding" => "rolebinding",
        b"ClusterRole" => "clusterrole",
        b"ClusterRoleBinding" => "clusterrolebinding",
        b"PriorityClass" => "priorityclass",
        b"ResourceQuota" => "resourcequota",
        b"LimitRange" => "limitrange",
        b"SelfSubjectAccessReview" => "selfsubjectaccessreview",
        b"CertificateSigningRequest" => "certificatesigningrequest",
        b"SubjectAccessReview" => "subjectaccessreview",
        b"SelfSubjectReview" => "selfsubjectreview",
        _ => "",
    }
}

use k8s_openapi::api::{apps, coordination, core, discovery, events, rbac, scheduling};

pub static RESOURCES: std::sync::LazyLock<Vec<Resource>> = std::sync::LazyLock::new(|| {
    let mut v = vec![
        resource!(core::v1::Pod, "", "v1", "Pod", "pods", true,
            short: &["po"], cat: &["all"], status: true,
            sub: &["binding", "eviction", "log", "exec", "attach", "portforward"]),
        resource!(core::v1::Node, "", "v1", "Node", "nodes", false,
            short: &["no"], cat: &[], status: true, sub: &["proxy"]),
        resource!(core::v1::Namespace, "", "v1", "Namespace", "namespaces", false,
            short: &["ns"], cat: &[], status: true, sub: &["finalize"]),
        resource!(core::v1::Service, "", "v1", "Service", "services", true,
            short: &["svc"], cat: &["all"], status: true, sub: &[]),
        resource!(core::v1::Endpoints, "", "v1", "Endpoints", "endpoints", true,
            short: &["ep"], cat: &[], status: false, sub: &[]),
        resource!(core::v1::ConfigMap, "", "v1", "ConfigMap", "configmaps", true,
            short: &["cm"], cat: &[], status: false, sub: &[]),
        resource!(core::v1::Secret, "", "v1", "Secret", "secrets", true,
            short: &[], cat: &[], status: false, sub: &[]),
        resource!(core::v1::ServiceAccount, "", "v1", "ServiceAccount", "serviceaccounts", true,
            short: &["sa"], cat: &[], status: false, sub: &["token"]),
        resource!(core::v1::Event, "", "v1", "Event", "events", true,
            short: &["ev"], cat: &[], status: false, sub: &[]),
        resource!(core::v1::ResourceQuota, "", "v1", "ResourceQuota", "resourcequotas", true,
            short: &["quota"], cat: &[], status: true, sub: &[]),
        resource!(core::v1::LimitRange, "", "v1", "LimitRange", "limitranges", true,
            short: &["limits"], cat: &[], status: false, sub: &[]),
        resource!(apps::v1::Deployment, "apps", "v1", "Deployment", "deployments", true,
            short: &["deploy"], cat: &["all"], status: true, sub: &["scale"]),
        resource!(apps::v1::ReplicaSet, "apps", "v1", "ReplicaSet", "replicasets", true,
            short: &["rs"], cat: &["all"], status: true, sub: &["scale"]),
        resource!(apps::v1::DaemonSet, "apps", "v1", "DaemonSet", "daemonsets", true,
            short: &["ds"], cat: &["all"], status: true, sub: &[]),
        resource!(coordination::v1::Lease, "coordination.k8s.io", "v1", "Lease", "leases", true,
            short: &[], cat: &[], status: false, sub: &[]),
        resource!(discovery::v1::EndpointSlice, "discovery.k8s.io", "v1", "EndpointSlice",
            "endpointslices", true, short: &[], cat: &[], status: false, sub: &[]),
        resource!(rbac::v1::Role, "rbac.authorization.k8s.io", "v1", "Role", "roles", true,
            short: &[], cat: &[], status: false, sub: &[]),
        resource!(rbac::v1::RoleBinding, "rbac.authorization.k8s.io", "v1", "RoleBinding",
            "rolebindings", true, short: &[], cat: &[], status: false, sub: &[]),
        resource!(rbac::v1::ClusterRole, "rbac.authorization.k8s.io", "v1", "ClusterRole",
            "clusterroles", false, short: &[], cat: &[], status: false, sub: &[]),
        resource!(rbac::v1::ClusterRoleBinding, "rbac.authorization.k8s.io", "v1",
            "ClusterRoleBinding", "clusterrolebindings", false, short: &[], cat: &[],
            status: false, sub: &[]),
        resource!(scheduling::v1::PriorityClass, "scheduling.k8s.io", "v1", "PriorityClass",
            "priorityclasses", false, short: &["pc"], cat: &[], status: false, sub: &[]),
        resource!(events::v1::Event, "events.k8s.io", "v1", "Event", "events", true,
            short: &["ev"], cat: &[], status: false, sub: &[]),
        resource!(k8s_openapi::api::certificates::v1::CertificateSigningRequest,
            "certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests",
            false, short: &["csr"], cat: &[], status: true, sub: &["approval"]),
    ];
    let mut cs = resource!(core::v1::ComponentStatus, "", "v1", "ComponentStatus",
        "componentstatuses", false, short: &["cs"], cat: &[], status: false, sub: &[]);
    cs.stored = false;
    v.push(cs);
    use k8s_openapi::api::{authentication, authorization};
    for mut r in [
        resource!(authorization::v1::SelfSubjectAccessReview, "authorization.k8s.io", "v1",
            "SelfSubjectAccessReview", "selfsubjectaccessreviews", false, short: &[], cat: &[],
            status: false, sub: &[]),
        resource!(authorization::v1::SubjectAccessReview, "authorization.k8s.io", "v1",
            "SubjectAccessReview", "subjectaccessreviews", false, short: &[], cat: &[],
            status: false, sub: &[]),
        resource!(authentication::v1::SelfSubjectReview, "authentication.k8s.io", "v1",
            "SelfSubjectReview", "selfsubjectreviews", false, short: &[], cat: &[],
            status: false, sub: &[]),
    ] {
        r.stored = false;
        r.review = true;
        v.push(r);
    }
    v
});

/// API groups in discovery order, each with its versions (preferred first).
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter() {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn in_group_version(group: &str, version: &str) -> Vec<&'static Resource> {
    RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}
