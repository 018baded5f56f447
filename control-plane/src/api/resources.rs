//! The resources this apiserver serves. Each is one descriptor line below: group, version, kind,
//! plural and scope come from the k8s-openapi type's `Resource` constants, so they cannot drift
//! from Kubernetes'; only short names, categories, the status subresource and the strategy (the
//! kind's own rules, with its other subresources, in `registry/<kind>.rs`) are written here.

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::registry::strategy::{self, Strategy, Subresource};
use super::registry::{
    apps, batch, certificates, componentstatuses, namespaces, networking, nodes, pods, policy,
    rbac, reviews, secrets, serviceaccounts, services, sets,
};

pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `status` subresource (main-resource writes keep the stored status).
    pub status: bool,
    /// Served from the store (false: computed, read-only, like componentstatuses).
    pub stored: bool,
    /// A review (create-only, answered and never stored): access and token reviews.
    pub review: bool,
    /// The kind's own rules and its subresources beyond `status`.
    pub strategy: &'static dyn Strategy,
    /// Decodes a body into the typed object and back: the normalized JSON, or why not.
    pub decode: fn(&Value) -> Result<Value, String>,
    /// The schema's name in `components.schemas` (it registers itself and its dependencies).
    pub schema: fn(&mut SchemaGenerator) -> String,
}

/// Whether a k8s-openapi scope is a namespace's.
pub trait Scope {
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

impl Resource {
    /// The descriptor of `T`, stored, with no rules of its own.
    pub const fn of<T>() -> Resource
    where
        T: k8s_openapi::Resource + DeserializeOwned + Serialize + JsonSchema,
        T::Scope: Scope,
    {
        Resource {
            group: T::GROUP,
            version: T::VERSION,
            kind: T::KIND,
            plural: T::URL_PATH_SEGMENT,
            namespaced: <T::Scope as Scope>::NAMESPACED,
            short_names: &[],
            categories: &[],
            status: false,
            stored: true,
            review: false,
            strategy: &strategy::PLAIN,
            decode: decode::<T>,
            schema: schema::<T>,
        }
    }

    pub const fn short(mut self, names: &'static [&'static str]) -> Self {
        self.short_names = names;
        self
    }

    pub const fn categories(mut self, categories: &'static [&'static str]) -> Self {
        self.categories = categories;
        self
    }

    pub const fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    pub const fn strategy(mut self, s: &'static dyn Strategy) -> Self {
        self.strategy = s;
        self
    }

    /// Computed on each read, never stored (the strategy's `computed` lists it).
    pub const fn computed(mut self, s: &'static dyn Strategy) -> Self {
        self.strategy = s;
        self.stored = false;
        self
    }

    /// Answered on create (the strategy's `review`), never stored.
    pub const fn review(mut self, s: &'static dyn Strategy) -> Self {
        self.strategy = s;
        self.stored = false;
        self.review = true;
        self
    }

    /// Singular names are the lowercased kind.
    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    /// The subresources beyond `status`, as the strategy serves them.
    pub fn subresources(&self) -> &'static [&'static dyn Subresource] {
        self.strategy.subresources()
    }

    pub fn subresource(&self, name: &str) -> Option<&'static dyn Subresource> {
        self.subresources()
            .iter()
            .copied()
            .find(|s| s.name() == name)
    }

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

/// Declares each descriptor as a static of its own and lists them all, in discovery order, in
/// `RESOURCES`: adding a kind is adding a line.
macro_rules! served {
    ($($name:ident = $descriptor:expr;)*) => {
        $(pub static $name: Resource = $descriptor;)*
        /// Every served resource, in discovery order.
        pub static RESOURCES: &[&Resource] = &[$(&$name),*];
    };
}

use k8s_openapi::api::{
    apps as apps_v, authentication, authorization, batch as batch_v,
    certificates as certificates_v, coordination, core::v1 as core, discovery, events as events_v,
    networking as networking_v, policy as policy_v, rbac as rbac_v, scheduling,
};

served! {
    PODS = Resource::of::<core::Pod>().short(&["po"]).categories(&["all"]).with_status()
        .strategy(&pods::POD);
    NODES = Resource::of::<core::Node>().short(&["no"]).with_status().strategy(&nodes::NODE);
    NAMESPACES = Resource::of::<core::Namespace>().short(&["ns"]).with_status()
        .strategy(&namespaces::NAMESPACE);
    SERVICES = Resource::of::<core::Service>().short(&["svc"]).categories(&["all"])
        .with_status().strategy(&services::SERVICE);
    ENDPOINTS = Resource::of::<core::Endpoints>().short(&["ep"]);
    CONFIGMAPS = Resource::of::<core::ConfigMap>().short(&["cm"]).strategy(&strategy::CONFIGMAP);
    SECRETS = Resource::of::<core::Secret>().strategy(&secrets::SECRET);
    SERVICEACCOUNTS = Resource::of::<core::ServiceAccount>().short(&["sa"])
        .strategy(&serviceaccounts::SERVICEACCOUNT);
    EVENTS = Resource::of::<core::Event>().short(&["ev"]).strategy(&strategy::EVENT);
    RESOURCEQUOTAS = Resource::of::<core::ResourceQuota>().short(&["quota"]).with_status();
    LIMITRANGES = Resource::of::<core::LimitRange>().short(&["limits"]);
    REPLICATIONCONTROLLERS = Resource::of::<core::ReplicationController>().short(&["rc"])
        .categories(&["all"]).with_status().strategy(&apps::REPLICATIONCONTROLLER);
    PERSISTENTVOLUMECLAIMS = Resource::of::<core::PersistentVolumeClaim>().short(&["pvc"])
        .with_status();
    DEPLOYMENTS = Resource::of::<apps_v::v1::Deployment>().short(&["deploy"])
        .categories(&["all"]).with_status().strategy(&apps::DEPLOYMENT);
    REPLICASETS = Resource::of::<apps_v::v1::ReplicaSet>().short(&["rs"]).categories(&["all"])
        .with_status().strategy(&apps::REPLICASET);
    DAEMONSETS = Resource::of::<apps_v::v1::DaemonSet>().short(&["ds"]).categories(&["all"])
        .with_status().strategy(&sets::DAEMONSET);
    STATEFULSETS = Resource::of::<apps_v::v1::StatefulSet>().short(&["sts"]).categories(&["all"])
        .with_status().strategy(&sets::STATEFULSET);
    CONTROLLERREVISIONS = Resource::of::<apps_v::v1::ControllerRevision>()
        .strategy(&sets::CONTROLLERREVISION);
    JOBS = Resource::of::<batch_v::v1::Job>().categories(&["all"]).with_status()
        .strategy(&batch::JOB);
    CRONJOBS = Resource::of::<batch_v::v1::CronJob>().short(&["cj"]).categories(&["all"])
        .with_status().strategy(&batch::CRONJOB);
    LEASES = Resource::of::<coordination::v1::Lease>().strategy(&nodes::LEASE);
    ENDPOINTSLICES = Resource::of::<discovery::v1::EndpointSlice>()
        .strategy(&strategy::ENDPOINTSLICE);
    ROLES = Resource::of::<rbac_v::v1::Role>().strategy(&rbac::RBAC);
    ROLEBINDINGS = Resource::of::<rbac_v::v1::RoleBinding>().strategy(&rbac::RBAC);
    CLUSTERROLES = Resource::of::<rbac_v::v1::ClusterRole>().strategy(&rbac::RBAC);
    CLUSTERROLEBINDINGS = Resource::of::<rbac_v::v1::ClusterRoleBinding>().strategy(&rbac::RBAC);
    PODDISRUPTIONBUDGETS = Resource::of::<policy_v::v1::PodDisruptionBudget>().short(&["pdb"])
        .with_status().strategy(&policy::PDB);
    NETWORKPOLICIES = Resource::of::<networking_v::v1::NetworkPolicy>().short(&["netpol"])
        .strategy(&networking::NETWORKPOLICY);
    PRIORITYCLASSES = Resource::of::<scheduling::v1::PriorityClass>().short(&["pc"]);
    EVENTS_K8S_IO = Resource::of::<events_v::v1::Event>().short(&["ev"]).strategy(&strategy::EVENT);
    CERTIFICATESIGNINGREQUESTS = Resource::of::<certificates_v::v1::CertificateSigningRequest>()
        .short(&["csr"]).with_status().strategy(&certificates::CSR);
    COMPONENTSTATUSES = Resource::of::<core::ComponentStatus>().short(&["cs"])
        .computed(&componentstatuses::COMPONENTSTATUS);
    SELFSUBJECTACCESSREVIEWS = Resource::of::<authorization::v1::SelfSubjectAccessReview>()
        .review(&reviews::SELF_SUBJECT_ACCESS);
    SUBJECTACCESSREVIEWS = Resource::of::<authorization::v1::SubjectAccessReview>()
        .review(&reviews::SUBJECT_ACCESS);
    SELFSUBJECTREVIEWS = Resource::of::<authentication::v1::SelfSubjectReview>()
        .review(&reviews::SELF_SUBJECT);
}

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

/// The resource a URL names (routing only: code that means a kind uses its static).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn in_group_version(group: &str, version: &str) -> Vec<&'static Resource> {
    RESOURCES
        .iter()
        .copied()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}
