//! Discovery (`/api`, `/apis`, per group-version lists, aggregated discovery v2/v2beta1),
//! `/version`, and the OpenAPI documents (`/openapi/v2`, `/openapi/v3`) generated from the
//! k8s-openapi schemas, so `kubectl explain`, `api-resources` and server-side field validation
//! work.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::{json, Value};
use sha2::Digest;

use super::registry::strategy::Gvk;
use super::resources::{self, Resource, RESOURCES};

pub const KUBERNETES_VERSION: &str = "v1.33.0";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("{KUBERNETES_VERSION}+podlet-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }),
    })
}

/// A resource's subresources as discovery lists them: name, (group, version, kind), verbs.
fn subresources(r: &Resource) -> Vec<(&'static str, Gvk, &'static [&'static str])> {
    let own: Gvk = (r.group, r.version, r.kind);
    let mut subs = Vec::new();
    if r.status {
        subs.push(("status", own, &["get", "patch", "update"][..]));
    }
    for s in r.subresources() {
        subs.push((s.name(), s.kind().unwrap_or(own), s.verbs()));
    }
    subs
}

pub fn api_versions(host: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})
}

fn group_entry(g: &str) -> Value {
    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
    json!({"name": g, "versions": [gv], "preferredVersion": gv})
}

pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": resources::groups().iter().map(|g| group_entry(g)).collect::<Vec<_>>()})
}

pub fn api_group(g: &str) -> Option<Value> {
    resources::groups().contains(&g).then(|| {
        let mut e = group_entry(g);
        e["kind"] = json!("APIGroup");
        e["apiVersion"] = json!("v1");
        e
    })
}

fn storage_hash(r: &Resource) -> String {
    let h = sha2::Sha256::digest(format!("{}/{}/{}", r.group, r.version, r.kind));
    base64_8(&h[..8])
}

fn base64_8(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs = resources::in_group_version(group, version);
    if rs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in &rs {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        if r.stored {
            e["storageVersionHash"] = json!(storage_hash(r));
        }
        out.push(e);
        for (sub, (g, v, k), verbs) in subresources(r) {
            let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": k, "verbs": verbs});
            if g != r.group || v != r.version {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            out.push(e);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

fn discovery_resource(r: &Resource) -> Value {
    let mut e = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular(),
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    let subs: Vec<Value> = subresources(r)
        .into_iter()
        .map(|(s, (g, v, k), verbs)| {
            json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": verbs})
        })
        .collect();
    if !subs.is_empty() {
        e["subresources"] = json!(subs);
    }
    e
}

/// Aggregated discovery for `/api` (core) or `/apis` (the groups), in version `v2` or `v2beta1`.
pub fn aggregated(core: bool, version: &str) -> Value {
    let groups: Vec<&str> = if core { vec![""] } else { resources::groups() };
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let rs: Vec<Value> = resources::in_group_version(g, "v1")
                .into_iter()
                .map(discovery_resource)
                .collect();
            let mut item = json!({"metadata": {"creationTimestamp": null}, "versions": [{"version": "v1", "resources": rs, "freshness": "Current"}]});
            if !g.is_empty() {
                item["metadata"]["name"] = json!(g);
            }
            item
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

/// The aggregated-discovery version the client asks for first, if any.
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        if part.contains("as=APIGroupDiscoveryList") && part.contains("g=apidiscovery.k8s.io") {
            if part.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if part.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

/// OpenAPI v3 documents by path (`api/v1`, `apis/apps/v1`, …), with their hashes.
pub static OPENAPI_V3: LazyLock<BTreeMap<String, (String, Vec<u8>)>> = LazyLock::new(|| {
    let mut gvs: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter() {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    gvs.into_iter()
        .map(|(g, v)| {
            let path = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            let doc = serde_json::to_vec(&v3_document(g, v)).expect("documents serialize");
            let hash = hex::encode(&sha2::Sha512::digest(&doc)[..32]).to_uppercase();
            (path, (hash, doc))
        })
        .collect()
});

pub fn openapi_v3_index() -> Value {
    let paths: serde_json::Map<String, Value> = OPENAPI_V3
        .iter()
        .map(|(p, (hash, _))| {
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn operation(r: &Resource, action: &str, schema: &str, id: String) -> Value {
    let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "pretty"]
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    json!({
        "operationId": id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
    })
}

fn v3_document(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = serde_json::Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut kinds = Vec::new();
    for r in resources::in_group_version(group, version) {
        let schema = (r.schema)(&mut generator);
        kinds.push((schema.clone(), r));
        let id = |verb: &str| format!("{verb}{}", r.kind);
        let (coll, item) = if r.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            )
        } else {
            (
                format!("{prefix}/{}", r.plural),
                format!("{prefix}/{}/{{name}}", r.plural),
            )
        };
        let mut c = json!({"get": operation(r, "list", &schema, id("list"))});
        let mut i = json!({"get": operation(r, "get", &schema, id("read"))});
        if r.review {
            c = json!({"post": operation(r, "post", &schema, id("create"))});
        }
        if r.stored {
            c["post"] = operation(r, "post", &schema, id("create"));
            i["put"] = operation(r, "put", &schema, id("replace"));
            i["patch"] = operation(r, "patch", &schema, id("patch"));
            i["delete"] = operation(r, "delete", &schema, id("delete"));
        }
        paths.insert(coll, c);
        paths.insert(item, i);
        if r.namespaced {
            paths.insert(
                format!("{prefix}/{}", r.plural),
                json!({"get": operation(r, "list", &schema, id("listForAllNamespaces"))}),
            );
        }
    }
    let mut schemas = generator.take_definitions(true);
    for (name, r) in kinds {
        if let Some(s) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), json!([gvk(r)]));
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Swagger 2.0 with every kind's definitions (for clients that only read v2 JSON).
pub static OPENAPI_V2: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut settings = SchemaSettings::draft07();
    settings.definitions_path = "/definitions".into();
    let mut generator = settings.into_generator();
    let mut kinds = Vec::new();
    for r in RESOURCES.iter() {
        kinds.push(((r.schema)(&mut generator), r));
    }
    let mut defs = generator.take_definitions(true);
    for (name, r) in kinds {
        if let Some(s) = defs.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), json!([gvk(r)]));
        }
    }
    serde_json::to_vec(&json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION}, "paths": {}, "definitions": defs}))
        .expect("documents serialize")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_v3_has_kinds_and_field_validation() {
        let (_, doc) = &OPENAPI_V3["api/v1"];
        let doc: Value = serde_json::from_slice(doc).unwrap();
        let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(pod["properties"]["spec"].to_string().contains("PodSpec"));
        let post = &doc["paths"]["/api/v1/namespaces/{namespace}/pods"]["post"];
        assert!(post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(
            openapi_v3_index()["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
    }

    #[test]
    fn discovery_lists_resources_and_subresources() {
        let l = resource_list("", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"pods/log")
        );
        assert_eq!(
            wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"),
            Some("v2")
        );
        let agg = aggregated(false, "v2");
        assert!(agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["metadata"]["name"] == "apps"));
    }
}
