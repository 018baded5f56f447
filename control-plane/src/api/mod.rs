//! The apiserver: Kubernetes' REST API over a [`Store`]. It keeps no state of its own (every
//! object, revision and watch comes from the store), so several apiservers can share one etcd.

pub mod auth;
pub mod discovery;
pub mod objects;
pub mod patch;
mod proxy;
pub use proxy::client_config as proxy_client_config;
pub mod protobuf;
pub mod quota;
pub mod resources;
pub mod satoken;
pub mod selectors;
pub mod services;
pub mod status;
pub mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use crate::store::{Event, EventKind, KeyValue, Rev, Store, StoreError};
use resources::Resource;
use selectors::{FieldSelector, LabelSelector};
use status::ApiError;

/// Kubernetes' limit on request bodies.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// How much of an oversized body is read and dropped before the 413 goes out: closing a
/// connection with unread data resets it, and the client would lose the answer.
const MAX_DRAIN: usize = 64 * 1024 * 1024;

/// The request body, or None when it is over MAX_BODY (the rest is drained, within limits).
async fn read_body(body: axum::body::Body) -> Option<axum::body::Bytes> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let Ok(chunk) = chunk else { return None };
        seen += chunk.len();
        if seen <= MAX_BODY {
            buf.extend_from_slice(&chunk);
        } else if seen > MAX_DRAIN {
            return None;
        }
    }
    (seen <= MAX_BODY).then(|| axum::body::Bytes::from(buf))
}

pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub tokens: auth::Tokens,
    pub sa: satoken::Signer,
    /// `--service-cluster-ip-range`.
    pub service_cidr: ipnetwork::Ipv4Network,
    /// The cluster CA (PEM), published to every namespace as `kube-root-ca.crt`.
    pub ca_pem: String,
    /// HTTPS client for node APIs (pods/log), with the apiserver's kubelet client certificate.
    pub kubelet: reqwest::Client,
    /// The same identity for upgraded connections (exec, attach, port-forward).
    pub kubelet_tls: Arc<rustls::ClientConfig>,
}

type ApiResult = Result<Response, ApiError>;

pub fn router(server: Arc<ApiServer>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(server)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn store_error(r: &Resource, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(_) => ApiError::already_exists(r, name),
        StoreError::NotFound(_) => ApiError::not_found(r, name),
        StoreError::Conflict { .. } => ApiError::conflict(r, name),
        StoreError::Compacted {
            requested, current, ..
        } => ApiError::gone(format!("too old resource version: {requested} ({current})")),
        StoreError::Backend(m) => ApiError::internal(m),
    }
}

/// The stored object with its `resourceVersion`.
fn decode_kv(kv: &KeyValue) -> Value {
    let mut v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    if v.is_object() {
        v["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
    }
    v
}

fn encode(obj: &Value) -> Vec<u8> {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).expect("values serialize")
}

/// What a request addresses.
struct Target {
    r: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_path: bool,
}

fn parse_target(path: &str) -> Option<Result<Target, ApiError>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let find = |plural: &str| resources::find(group, version, plural);
    let t = |r, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Some(Ok(Target {
            r,
            ns: ns.map(str::to_owned),
            name: name.map(str::to_owned),
            sub: sub.map(str::to_owned),
            watch_path,
        }))
    };
    let not_found = || Some(Err(ApiError::no_route()));
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            let r = find(plural).unwrap();
            match tail {
                [] => t(r, Some(ns), None, None),
                [name] => t(r, Some(ns), Some(name), None),
                [name, sub] => t(r, Some(ns), Some(name), Some(sub)),
                _ => not_found(),
            }
        }
        [plural, tail @ ..] => {
            let Some(r) = find(plural) else {
                return not_found();
            };
            match tail {
                [] => t(r, None, None, None),
                [name] if !r.namespaced => t(r, None, Some(name), None),
                [name, sub] if !r.namespaced => t(r, None, Some(name), Some(sub)),
                [name, "proxy", ..] if r.plural == "nodes" => t(r, None, Some(name), Some("proxy")),
                _ => not_found(),
            }
        }
        [] => None,
    }
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|f| f.contains("as=Table")))
}

/// Paths anyone may read (kube-apiserver's `system:public-info-viewer`).
const PUBLIC: [&str; 4] = ["/healthz", "/livez", "/readyz", "/version"];

/// Who sent the request: a verified client certificate, a static token, or a service-account
/// token whose account still exists with the UID it was issued for.
async fn authenticate(
    server: &ApiServer,
    headers: &HeaderMap,
    cert: Option<&auth::CertIdentity>,
) -> Option<auth::User> {
    if let Some(auth::CertIdentity(Some((name, groups)))) = cert {
        return Some(auth::User::new(name, "", groups.clone()));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?
        .trim();
    if let Some(u) = server.tokens.get(token) {
        return Some(u.clone());
    }
    if let Some(u) = crate::certificates::bootstrap_user(&*server.store, token).await {
        return Some(u);
    }
    let claims = server.sa.verify(token)?;
    let k = &claims["kubernetes.io"];
    let (ns, name, uid) = (
        k["namespace"].as_str()?,
        k["serviceaccount"]["name"].as_str()?,
        k["serviceaccount"]["uid"].as_str()?,
    );
    let sar = resources::find("", "v1", "serviceaccounts").unwrap();
    let kv = server.store.get(&sar.key(Some(ns), name)).await.ok()??;
    let sa: Value = serde_json::from_slice(&kv.value).ok()?;
    if sa["metadata"]["uid"] != uid {
        return None;
    }
    Some(auth::User::new(
        &format!("system:serviceaccount:{ns}:{name}"),
        uid,
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
    ))
}

fn verb_of(method: &Method, t: &Target, watch: bool) -> &'static str {
    match (method, t.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "get",
    }
}

async fn dispatch(
    State(server): State<Arc<ApiServer>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    cert: Option<axum::Extension<auth::CertIdentity>>,
    mut request: axum::extract::Request,
) -> Response {
    let upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>();
    let body = request.into_body();
    let path = uri.path().to_string();
    let user = authenticate(&server, &headers, cert.as_ref().map(|c| &c.0)).await;
    let Some(user) = user.or_else(|| {
        PUBLIC.contains(&path.as_str()).then(|| auth::User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        })
    }) else {
        return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
    };
    let body = match read_body(body).await {
        Some(b) => b,
        None => return ApiError::too_large().into_response(),
    };
    let q = query_map(&uri);
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let target = parse_target(&path);
    if target.is_none() && !PUBLIC.contains(&path.as_str()) {
        let a = auth::Attributes::NonResource {
            verb: method.as_str().to_lowercase(),
            path: path.clone(),
        };
        if auth::authorize(&*server.store, &user, &a).await.is_none() {
            return ApiError::forbidden(auth::forbidden_message(&user, &a, "")).into_response();
        }
    }
    let res = match (method.clone(), path.as_str()) {
        (Method::GET, "/version") => Ok(json_response(StatusCode::OK, &discovery::version())),
        (Method::GET, "/healthz" | "/livez" | "/readyz") => {
            match server.store.current_rev().await {
                Ok(_) => Ok((StatusCode::OK, "ok").into_response()),
                Err(e) => Err(ApiError::internal(format!("storage: {e}"))),
            }
        }
        (Method::GET, "/api") => Ok(match discovery::wants_aggregated(&accept) {
            Some(v) => aggregated_response(true, v),
            None => json_response(StatusCode::OK, &discovery::api_versions(&host)),
        }),
        (Method::GET, "/apis") => Ok(match discovery::wants_aggregated(&accept) {
            Some(v) => aggregated_response(false, v),
            None => json_response(StatusCode::OK, &discovery::api_group_list()),
        }),
        (Method::GET, "/openapi/v2" | "/swagger-2.0.0.pb-v1") => Ok(openapi_v2(&accept)),
        (Method::GET, "/openapi/v3") => Ok(json_response(
            StatusCode::OK,
            &discovery::openapi_v3_index(),
        )),
        (Method::GET, p) if p.starts_with("/openapi/v3/") => {
            let key = p.trim_start_matches("/openapi/v3/");
            match discovery::OPENAPI_V3.get(key) {
                Some((_, doc)) => Ok((
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "public, immutable"),
                    ],
                    doc.clone(),
                )
                    .into_response()),
                None => Err(ApiError::no_route()),
            }
        }
        (Method::GET, "/api/v1") => Ok(json_response(
            StatusCode::OK,
            &discovery::resource_list("", "v1").unwrap(),
        )),
        (Method::GET, p)
            if p.starts_with("/apis/") && p.trim_matches('/').split('/').count() <= 3 =>
        {
            let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
            let found = match segs.as_slice() {
                [_, g] => discovery::api_group(g),
                [_, g, v] => discovery::resource_list(g, v),
                _ => None,
            };
            found
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::no_route)
        }
        _ => match target {
            None => Err(ApiError::no_route()),
            Some(Err(e)) => Err(e),
            Some(Ok(t)) => {
                let req = Req {
                    server: &server,
                    q: &q,
                    headers: &headers,
                    table: wants_table(&headers),
                    user: &user,
                    raw_query: uri.query().unwrap_or_default(),
                    path: &path,
                    upgrade: std::sync::Mutex::new(upgrade),
                };
                let watch = t.watch_path || q.get("watch").is_some_and(|v| parse_bool(v));
                let a = auth::Attributes::Resource {
                    verb: verb_of(&method, &t, watch).into(),
                    group: t.r.group.into(),
                    resource: t.r.plural.into(),
                    subresource: t.sub.clone().unwrap_or_default(),
                    namespace: t.ns.clone().unwrap_or_default(),
                    name: t.name.clone().unwrap_or_default(),
                };
                match auth::authorize(&*server.store, &user, &a).await {
                    Some(_) => req.resource(method, t, body).await,
                    None => {
                        let mut e = ApiError::forbidden(auth::forbidden_message(
                            &user,
                            &a,
                            &t.r.qualified(),
                        ));
                        let mut d = json!({"kind": t.r.plural});
                        if let Some(n) = &t.name {
                            d["name"] = json!(n);
                        }
                        if !t.r.group.is_empty() {
                            d["group"] = json!(t.r.group);
                        }
                        e.details = Some(d);
                        Err(e)
                    }
                }
            }
        },
    };
    res.unwrap_or_else(|e| e.into_response())
}

fn aggregated_response(core: bool, version: &str) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
        )],
        discovery::aggregated(core, version).to_string(),
    )
        .into_response()
}

fn openapi_v2(accept: &str) -> Response {
    if accept.contains("protobuf") {
        // An empty protobuf document: older kubectl then reads /openapi/v3 for everything.
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )],
            Vec::new(),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        discovery::OPENAPI_V2.clone(),
    )
        .into_response()
}

struct Req<'a> {
    server: &'a ApiServer,
    q: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
    table: bool,
    user: &'a auth::User,
    /// The query as sent (repeated keys such as exec's `command` kept).
    raw_query: &'a str,
    path: &'a str,
    /// The connection's upgrade, for streams proxied to a node.
    upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

impl Req<'_> {
    fn store(&self) -> &dyn Store {
        &*self.server.store
    }

    /// The stored object `name` of `r`, or Kubernetes' NotFound.
    async fn current(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<KeyValue, ApiError> {
        self.store()
            .get(&r.key(ns, name))
            .await
            .map_err(|e| store_error(r, name, e))?
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    fn param(&self, k: &str) -> Option<&str> {
        self.q.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The request's media type, without parameters ("" when absent).
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
    }

    /// A server-side apply request (its managedFields entry is made by `patch::apply`).
    fn is_apply(&self) -> bool {
        self.content_type().contains("apply-patch")
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    fn field_manager(&self) -> String {
        if let Some(m) = self.param("fieldManager") {
            return m.to_string();
        }
        // Kubernetes' default: the user agent's program name.
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    }

    fn respond(
        &self,
        r: &Resource,
        code: StatusCode,
        obj: &Value,
        warnings: &[String],
    ) -> Response {
        let body = if self.table {
            table::table(
                r,
                std::slice::from_ref(obj),
                json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                self.param("includeObject").unwrap_or("Metadata"),
                true,
            )
        } else {
            obj.clone()
        };
        let mut resp = json_response(code, &body);
        for w in warnings {
            if let Ok(v) = format!("299 - \"{}\"", w.replace('"', "'")).parse() {
                resp.headers_mut().append(header::WARNING, v);
            }
        }
        resp
    }

    async fn resource(&self, method: Method, t: Target, body: Bytes) -> ApiResult {
        let r = t.r;
        if t.ns.is_none() && r.namespaced && t.name.is_some() {
            return Err(ApiError::no_route());
        }
        let watch = t.watch_path || self.param("watch").is_some_and(parse_bool);
        match (method, t.name.as_deref(), t.sub.as_deref()) {
            (Method::GET, None, None) if watch => self.watch(r, t.ns.as_deref(), None).await,
            (Method::GET, Some(name), None) if watch => {
                self.watch(r, t.ns.as_deref(), Some(name)).await
            }
            (Method::GET, None, None) => self.list(r, t.ns.as_deref()).await,
            (Method::POST, None, None) if r.review => self.review(r, &body).await,
            (_, _, _) if !r.stored => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
            (Method::POST, None, None) => self.create(r, t.ns.as_deref(), &body).await,
            (Method::DELETE, None, None) => self.delete_collection(r, t.ns.as_deref(), &body).await,
            (Method::GET, Some(name), None | Some("status")) => {
                let kv = self.current(r, t.ns.as_deref(), name).await?;
                Ok(self.respond(r, StatusCode::OK, &decode_kv(&kv), &[]))
            }
            (m @ (Method::GET | Method::PUT | Method::PATCH), Some(name), Some("scale"))
                if r.subresources.contains(&"scale") =>
            {
                self.scale(r, t.ns.as_deref(), name, m, &body).await
            }
            (Method::PUT, Some(name), Some("approval"))
                if r.plural == "certificatesigningrequests" =>
            {
                self.approval(r, name, &body).await
            }
            (Method::PUT, Some(name), sub @ (None | Some("status"))) => {
                self.update(r, t.ns.as_deref(), name, &body, sub).await
            }
            (Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
                self.patch(r, t.ns.as_deref(), name, &body, sub).await
            }
            (Method::DELETE, Some(name), None) => {
                self.delete(r, t.ns.as_deref(), name, &body).await
            }
            (Method::POST, Some(name), Some("binding")) if r.plural == "pods" => {
                self.bind(t.ns.as_deref().unwrap_or("default"), name, &body)
                    .await
            }
            (Method::POST, Some(name), Some("token")) if r.plural == "serviceaccounts" => {
                self.token_request(t.ns.as_deref().unwrap_or("default"), name, &body)
                    .await
            }
            (
                Method::GET | Method::POST,
                Some(name),
                Some(sub @ ("exec" | "attach" | "portforward")),
            ) if r.plural == "pods" => {
                self.pod_stream(t.ns.as_deref().unwrap_or("default"), name, sub)
                    .await
            }
            (Method::GET, Some(name), Some("proxy")) if r.plural == "nodes" => {
                self.node_proxy(name).await
            }
            (Method::GET, Some(name), Some("log")) if r.plural == "pods" => {
                self.pod_log(t.ns.as_deref().unwrap_or("default"), name)
                    .await
            }
            (Method::POST, Some(name), Some("eviction")) if r.plural == "pods" => {
                self.delete(r, t.ns.as_deref(), name, &Bytes::new()).await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &status::success(json!({"name": name, "kind": "pods"})),
                ))
            }
            (_, Some(_), Some(sub))
                if r.status && sub == "status" || r.subresources.contains(&sub) =>
            {
                Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({sub})"
                )))
            }
            _ => Err(ApiError::no_route()),
        }
    }

    /// Access reviews (answered by the same authorizer that guards requests) and
    /// SelfSubjectReview (`kubectl auth whoami`).
    async fn review(&self, r: &'static Resource, body: &Bytes) -> ApiResult {
        let input = self.parse_body(body)?;
        let (mut obj, _) = objects::decode(r, &input, "Ignore")?;
        let user_info =
            |u: &auth::User| json!({"username": u.name, "uid": u.uid, "groups": u.groups});
        match r.plural {
            "selfsubjectreviews" => {
                obj["status"] = json!({"userInfo": user_info(self.user)});
            }
            _ => {
                let subject = if r.plural == "subjectaccessreviews" {
                    let spec = &obj["spec"];
                    auth::User {
                        name: spec["user"].as_str().unwrap_or_default().into(),
                        uid: spec["uid"].as_str().unwrap_or_default().into(),
                        groups: spec["groups"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|g| g.as_str().map(str::to_owned))
                            .collect(),
                    }
                } else {
                    self.user.clone()
                };
                let spec = &obj["spec"];
                let ra = &spec["resourceAttributes"];
                let a = if ra.is_object() {
                    auth::Attributes::Resource {
                        verb: ra["verb"].as_str().unwrap_or_default().into(),
                        group: ra["group"].as_str().unwrap_or_default().into(),
                        resource: ra["resource"].as_str().unwrap_or_default().into(),
                        subresource: ra["subresource"].as_str().unwrap_or_default().into(),
                        namespace: ra["namespace"].as_str().unwrap_or_default().into(),
                        name: ra["name"].as_str().unwrap_or_default().into(),
                    }
                } else {
                    let nr = &spec["nonResourceAttributes"];
                    auth::Attributes::NonResource {
                        verb: nr["verb"].as_str().unwrap_or_default().into(),
                        path: nr["path"].as_str().unwrap_or_default().into(),
                    }
                };
                obj["status"] = match auth::authorize(self.store(), &subject, &a).await {
                    Some(reason) => json!({"allowed": true, "reason": reason}),
                    None => json!({"allowed": false}),
                };
            }
        }
        Ok(json_response(StatusCode::CREATED, &obj))
    }

    fn selectors(&self, r: &Resource) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let ls = LabelSelector::parse(self.param("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fs = FieldSelector::parse(self.param("fieldSelector").unwrap_or(""), r.plural)
            .map_err(ApiError::bad_request)?;
        Ok((ls, fs))
    }

    fn prefix(r: &Resource, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if r.namespaced => format!("{}{ns}/", r.prefix()),
            _ => r.prefix(),
        }
    }

    async fn list(&self, r: &'static Resource, ns: Option<&str>) -> ApiResult {
        let (ls, fs) = self.selectors(r)?;
        if !r.stored {
            let items = self.virtual_list(r).await;
            return Ok(self.list_response(r, items, json!({"resourceVersion": ""})));
        }
        let limit: usize = self
            .param("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let (at, start) = match self.param("continue") {
            Some(tok) => {
                let (rev, start) = decode_continue(tok)
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
                (Some(rev), Some(start))
            }
            None => match (
                self.param("resourceVersion"),
                self.param("resourceVersionMatch"),
            ) {
                (Some(rv), Some("Exact")) => (Some(parse_rv(rv)?), None),
                _ => (None, None),
            },
        };
        let selecting =
            self.param("labelSelector").is_some() || self.param("fieldSelector").is_some();
        // Without selectors a page is read as a page; with them, every key is filtered.
        let page_limit = if selecting { 0 } else { limit };
        let (kvs, rev, more) = match self
            .store()
            .list_page(&Self::prefix(r, ns), at, start.as_deref(), page_limit)
            .await
        {
            Ok(x) => x,
            Err(StoreError::Compacted { .. }) if start.is_some() => {
                return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
            }
            Err(e) => return Err(store_error(r, "", e)),
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut has_more = more;
        for kv in &kvs {
            if limit > 0 && items.len() == limit {
                has_more = true;
                break;
            }
            let obj = decode_kv(kv);
            if selecting && !(ls.matches(&obj) && fs.matches(&obj)) {
                continue;
            }
            next = Some(kv.key.clone());
            items.push(obj);
        }
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if has_more {
            if let Some(last) = next {
                // remainingItemCount is optional in Kubernetes; counting would cost a full read.
                meta["continue"] = json!(encode_continue(rev, &last));
            }
        }
        Ok(self.list_response(r, items, meta))
    }

    fn list_response(&self, r: &Resource, items: Vec<Value>, meta: Value) -> Response {
        if self.table {
            let t = table::table(
                r,
                &items,
                meta,
                self.param("includeObject").unwrap_or("Metadata"),
                true,
            );
            return json_response(StatusCode::OK, &t);
        }
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut o| {
                if let Some(m) = o.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"kind": r.list_kind(), "apiVersion": r.api_version(), "metadata": meta, "items": items}),
        )
    }

    async fn virtual_list(&self, r: &Resource) -> Vec<Value> {
        match r.plural {
            "componentstatuses" => {
                let healthy = self.store().current_rev().await.is_ok();
                // The scheduler runs in this process: it is as healthy as the server answering.
                vec![
                    json!({
                        "kind": "ComponentStatus", "apiVersion": "v1",
                        "metadata": {"name": "etcd-0"},
                        "conditions": [{"type": "Healthy", "status": if healthy { "True" } else { "False" }, "message": if healthy { "ok" } else { "storage unreachable" }}],
                    }),
                    json!({
                        "kind": "ComponentStatus", "apiVersion": "v1",
                        "metadata": {"name": "scheduler"},
                        "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}],
                    }),
                ]
            }
            _ => vec![],
        }
    }

    /// NamespaceLifecycle: the namespace exists and is not being deleted.
    async fn check_namespace(&self, r: &Resource, ns: &str) -> Result<(), ApiError> {
        if !r.namespaced {
            return Ok(());
        }
        let nsr = resources::find("", "v1", "namespaces").unwrap();
        match self.store().get(&nsr.key(None, ns)).await {
            Ok(Some(kv)) => {
                let obj = decode_kv(&kv);
                if obj["status"]["phase"] == "Terminating" {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        r.plural, ""
                    )));
                }
                Ok(())
            }
            Ok(None) => Err(ApiError::not_found(nsr, ns)),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }

    fn parse_body(&self, body: &Bytes) -> Result<Value, ApiError> {
        let ct = self.content_type();
        if ct.starts_with(protobuf::MEDIA_TYPE) {
            protobuf::decode(body)
        } else if ct.contains("yaml") {
            serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (couldn't decode: {e})"
                ))
            })
        }
    }

    async fn create(&self, r: &'static Resource, ns: Option<&str>, body: &Bytes) -> ApiResult {
        let input = self.parse_body(body)?;
        let validation = self.param("fieldValidation").unwrap_or("Warn");
        let (mut obj, warnings) = objects::decode(r, &input, validation)?;
        let ns = if r.namespaced {
            let url_ns = ns.unwrap_or("default");
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != url_ns => {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                _ => {}
            }
            obj["metadata"]["namespace"] = json!(url_ns);
            Some(url_ns.to_string())
        } else {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            None
        };
        if obj["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            if let Some(base) = obj["metadata"]["generateName"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                obj["metadata"]["name"] = json!(objects::generated_name(base));
            }
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let now = objects::now();
        {
            let m = obj["metadata"].as_object_mut().unwrap();
            m.insert("uid".into(), json!(objects::new_uid()));
            m.insert("creationTimestamp".into(), json!(now));
            for k in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                m.remove(k);
            }
            if !self.is_apply() {
                m.remove("managedFields");
            }
            if r.group == "apps" {
                m.insert("generation".into(), json!(1));
            }
        }
        objects::apply_defaults(r, &mut obj);
        let mut causes = objects::validate(r, &obj);
        if r.plural == "certificatesigningrequests" {
            // Who asked is the server's to say, never the body's.
            obj["spec"]["username"] = json!(self.user.name);
            obj["spec"]["uid"] = json!(self.user.uid);
            obj["spec"]["groups"] = json!(self.user.groups);
            if let Some(st) = obj.as_object_mut() {
                st.remove("status");
            }
            if let Err(e) = crate::certificates::parse_request(
                obj["spec"]["request"].as_str().unwrap_or_default(),
            ) {
                causes.push((
                    "FieldValueInvalid",
                    "spec.request".into(),
                    format!("Invalid value: []byte{{...}}: {e}"),
                ));
            }
            if obj["spec"]["signerName"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                causes.push((
                    "FieldValueRequired",
                    "spec.signerName".into(),
                    "Required value".into(),
                ));
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(r, &name, causes));
        }
        if let Some(ns) = &ns {
            self.check_namespace(r, ns).await?;
        }
        if r.plural == "pods" {
            self.admit_priority(&mut obj).await?;
            if let Some(ns) = &ns {
                self.admit_service_account(ns, &mut obj).await?;
                quota::limit_ranger(self.store(), ns, &mut obj).await?;
                obj["status"]["qosClass"] = json!(objects::qos_class(&obj["spec"]));
            }
        }
        if let (Some(ns), false) = (&ns, self.dry_run()) {
            quota::resource_quota(self.store(), r, ns, &obj).await?;
        }
        let mut allocated = None;
        if r.plural == "services"
            && obj["spec"]["type"] != "ExternalName"
            && obj["spec"]["clusterIP"] != "None"
            && !self.dry_run()
        {
            let wanted = obj["spec"]["clusterIP"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            let owner = format!("{}/{name}", ns.as_deref().unwrap_or("default"));
            let ip = services::allocate(
                self.store(),
                self.server.service_cidr,
                wanted.as_deref(),
                &owner,
            )
            .await?;
            let spec = &mut obj["spec"];
            spec["clusterIP"] = json!(ip.to_string());
            spec["clusterIPs"] = json!([ip.to_string()]);
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
            spec["internalTrafficPolicy"] = json!("Cluster");
            allocated = Some(ip.to_string());
        }
        self.node_restriction(r, &obj)?;
        if !self.is_apply() {
            patch::record_update(
                &mut obj,
                None,
                &self.field_manager(),
                &r.api_version(),
                &now,
                None,
            );
        }
        if self.dry_run() {
            return Ok(self.respond(r, StatusCode::CREATED, &obj, &warnings));
        }
        let created = self
            .store()
            .create(&r.key(ns.as_deref(), &name), encode(&obj))
            .await;
        if created.is_err() {
            if let Some(ip) = &allocated {
                services::release(self.store(), ip).await;
            }
        }
        let kv = created.map_err(|e| store_error(r, &name, e))?;
        obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
        if r.plural == "namespaces" {
            self.ensure_default_service_account(&name).await;
        }
        Ok(self.respond(r, StatusCode::CREATED, &obj, &warnings))
    }

    /// NodeRestriction: a node creates only its own Node, Lease and mirror pods.
    fn node_restriction(&self, r: &Resource, obj: &Value) -> Result<(), ApiError> {
        let Some(node) = auth::node_name(self.user) else {
            return Ok(());
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let refuse = |msg: String| Err(ApiError::forbidden(msg));
        match r.plural {
            "nodes" if name != node => refuse(format!("nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\"")),
            "leases" if name != node => refuse(format!("leases.coordination.k8s.io \"{name}\" is forbidden: node \"{node}\" is not allowed to modify lease \"{name}\"")),
            "pods" => {
                if obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
                    return refuse(format!("pods \"{name}\" is forbidden: pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"));
                }
                if obj["spec"]["nodeName"] != node {
                    return refuse(format!("pods \"{name}\" is forbidden: node \"{node}\" can only create pods with spec.nodeName set to itself"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The Priority admission plugin: `priorityClassName` resolves to `spec.priority`.
    async fn admit_priority(&self, pod: &mut Value) -> Result<(), ApiError> {
        let Some(pc) = pod["spec"]["priorityClassName"].as_str().map(str::to_owned) else {
            return Ok(());
        };
        let pcr = resources::find("scheduling.k8s.io", "v1", "priorityclasses").unwrap();
        match self.store().get(&pcr.key(None, &pc)).await {
            Ok(Some(kv)) => {
                let class = decode_kv(&kv);
                pod["spec"]["priority"] = class["value"].clone();
                if let Some(p) = class["preemptionPolicy"].as_str() {
                    pod["spec"]["preemptionPolicy"] = json!(p);
                }
                Ok(())
            }
            _ => Err(ApiError::forbidden(format!(
                "pods \"{}\" is forbidden: no PriorityClass with name {pc} was found",
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ))),
        }
    }

    async fn ensure_default_service_account(&self, ns: &str) {
        ensure_namespace_defaults(self.store(), ns, &self.server.ca_pem).await;
    }

    /// The container a pods/log|exec|attach request means: `container`, or the only one.
    fn pod_container(&self, pod: &Value, name: &str) -> Result<String, ApiError> {
        let names: Vec<&str> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
            .filter_map(|c| c["name"].as_str())
            .collect();
        let apps: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        match self.q.get("container").filter(|c| !c.is_empty()) {
            Some(c) if names.contains(&c.as_str()) => Ok(c.clone()),
            Some(c) => Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            ))),
            None if apps.len() == 1 => Ok(apps[0].to_string()),
            None => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                apps.join(" ")
            ))),
        }
    }

    /// Where the node API of the pod's node is: (host, port).
    async fn pod_node(&self, pod: &Value, name: &str) -> Result<(String, i64), ApiError> {
        let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        };
        self.node_endpoint(node_name).await
    }

    /// Where a node's API is: its first InternalIP, ExternalIP or Hostname address and its
    /// kubelet port, as the node reported them.
    async fn node_endpoint(&self, node_name: &str) -> Result<(String, i64), ApiError> {
        let nodes = resources::find("", "v1", "nodes").unwrap();
        let node = decode_kv(&self.current(nodes, None, node_name).await?);
        let addresses = node["status"]["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let address = ["InternalIP", "ExternalIP", "Hostname"]
            .iter()
            .find_map(|t| addresses.iter().find(|a| a["type"] == *t))
            .and_then(|a| a["address"].as_str())
            .ok_or_else(|| ApiError::internal(format!("node {node_name} has no address")))?;
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_i64()
            .unwrap_or(10250);
        let host = match address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => address.to_string(),
        };
        Ok((host, port))
    }

    /// `pods/exec`, `pods/attach`, `pods/portforward`: the upgrade request goes to the node API
    /// as it came; a 101 answer joins the two connections (the kube-apiserver's
    /// UpgradeAwareHandler), any other answer goes back to the client (which may then fall back
    /// from WebSocket to SPDY).
    async fn pod_stream(&self, ns: &str, name: &str, sub: &str) -> ApiResult {
        let pods = resources::find("", "v1", "pods").unwrap();
        let pod = decode_kv(&self.current(pods, Some(ns), name).await?);
        let path = if sub == "portforward" {
            format!("/portForward/{ns}/{name}")
        } else {
            let c = self.pod_container(&pod, name)?;
            format!("/{sub}/{ns}/{name}/{c}")
        };
        let (host, port) = self.pod_node(&pod, name).await?;
        let Some(upgrade) = self.upgrade.lock().expect("upgrade").take() else {
            return Err(ApiError::bad_request("Upgrade request required"));
        };
        let target = if self.raw_query.is_empty() {
            path
        } else {
            format!("{path}?{}", self.raw_query)
        };
        proxy::upgrade(
            &self.server.kubelet_tls,
            &host,
            port as u16,
            &target,
            self.headers,
            upgrade,
        )
        .await
    }

    /// A GET to a node API with the apiserver's kubelet client certificate.
    async fn kubelet_get(&self, url: &str) -> Result<reqwest::Response, ApiError> {
        self.server
            .kubelet
            .get(url)
            .send()
            .await
            .map_err(|e| ApiError::internal(format!("Get \"{url}\": {e}")))
    }

    /// `nodes/proxy` GETs: the node API's answer for the rest of the path (`kubectl get --raw
    /// /api/v1/nodes/N/proxy/stats/summary`, metrics-server's scrapes through the apiserver).
    async fn node_proxy(&self, name: &str) -> ApiResult {
        let rest = self
            .path
            .split_once(&format!("/nodes/{name}/proxy"))
            .map(|(_, r)| r)
            .unwrap_or_default();
        let (host, port) = self.node_endpoint(name).await?;
        let mut url = format!(
            "https://{host}:{port}{}",
            if rest.is_empty() { "/" } else { rest }
        );
        if !self.raw_query.is_empty() {
            url.push('?');
            url.push_str(self.raw_query);
        }
        let resp = self.kubelet_get(&url).await?;
        let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(axum::http::HeaderValue::from_static("text/plain"));
        Ok(Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from_stream(resp.bytes_stream()))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    }

    /// `pods/log`: the node's `/containerLogs`, streamed through (the kube-apiserver's
    /// LogREST). The container defaults to the only one; the query goes along.
    async fn pod_log(&self, ns: &str, name: &str) -> ApiResult {
        let pods = resources::find("", "v1", "pods").unwrap();
        let pod = decode_kv(&self.current(pods, Some(ns), name).await?);
        let container = self.pod_container(&pod, name)?;
        let (host, port) = self.pod_node(&pod, name).await?;
        let mut url = format!("https://{host}:{port}/containerLogs/{ns}/{name}/{container}");
        let passed: Vec<(String, String)> = [
            "follow",
            "previous",
            "timestamps",
            "tailLines",
            "sinceSeconds",
            "sinceTime",
            "limitBytes",
        ]
        .iter()
        .filter_map(|k| self.q.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
        if !passed.is_empty() {
            url.push('?');
            url.push_str(&serde_urlencoded::to_string(&passed).unwrap_or_default());
        }
        let resp = self.kubelet_get(&url).await?;
        let code = resp.status();
        if !code.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(ApiError::new(
                code.as_u16(),
                if code.as_u16() == 404 {
                    "NotFound"
                } else {
                    "BadRequest"
                },
                body.trim().to_string(),
            ));
        }
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from_stream(resp.bytes_stream()))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    }

    /// The ServiceAccount admission plugin: the pod runs as `default` unless it names a
    /// service account, which must exist; unless automounting is off (pod, then service
    /// account), a projected `kube-api-access-*` volume (token, cluster CA, namespace) is
    /// mounted read-only into every container. Mirror pods are left alone.
    async fn admit_service_account(&self, ns: &str, pod: &mut Value) -> Result<(), ApiError> {
        if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
            return Ok(());
        }
        let name = pod["spec"]["serviceAccountName"]
            .as_str()
            .or(pod["spec"]["serviceAccount"].as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        pod["spec"]["serviceAccountName"] = json!(name);
        pod["spec"]["serviceAccount"] = json!(name);
        let sar = resources::find("", "v1", "serviceaccounts").unwrap();
        let got = self
            .store()
            .get(&sar.key(Some(ns), &name))
            .await
            .map_err(|e| store_error(sar, &name, e))?;
        let sa = match got {
            Some(kv) => decode_kv(&kv),
            None => {
                let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
                return Err(ApiError::forbidden(format!(
                    "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
                )));
            }
        };
        let automount = pod["spec"]["automountServiceAccountToken"]
            .as_bool()
            .or(sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let suffix: String = {
            use rand::Rng;
            const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let mut rng = rand::rng();
            (0..5)
                .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
                .collect()
        };
        let vol = format!("kube-api-access-{suffix}");
        let mut mounted = false;
        for list in ["initContainers", "containers"] {
            for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
                let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
                if mounts.iter().any(|m| m["mountPath"] == SA_MOUNT_PATH) {
                    continue;
                }
                let mut mounts = mounts;
                mounts.push(json!({"name": vol, "readOnly": true, "mountPath": SA_MOUNT_PATH}));
                c["volumeMounts"] = json!(mounts);
                mounted = true;
            }
        }
        if mounted {
            let mut vols = pod["spec"]["volumes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            vols.push(json!({"name": vol, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}));
            pod["spec"]["volumes"] = json!(vols);
        }
        Ok(())
    }

    /// Writes `obj` over the current object (at `current.mod_rev`), handling what updates share:
    /// preserved system metadata, status subresource rules, generation, validation, and
    /// removal once the last finalizer is gone from an object being deleted.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        name: &str,
        current: &KeyValue,
        mut obj: Value,
        sub: Option<&str>,
        warnings: &[String],
    ) -> ApiResult {
        let old = decode_kv(current);
        if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        if let Some(rv) = obj["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            if rv != current.mod_rev.to_string() {
                return Err(ApiError::conflict(r, name));
            }
        }
        let manager = self.field_manager();
        let now = objects::now();
        if sub == Some("status") {
            let status = obj["status"].clone();
            obj = old.clone();
            obj["status"] = status;
        } else {
            if r.status {
                match old.get("status") {
                    Some(st) => obj["status"] = st.clone(),
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "generation",
            ] {
                match old["metadata"].get(k) {
                    Some(v) => obj["metadata"][k] = v.clone(),
                    None => {
                        if let Some(m) = obj["metadata"].as_object_mut() {
                            m.remove(k);
                        }
                    }
                }
            }
            if obj["metadata"]["managedFields"].is_null() {
                obj["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
            }
            if r.plural == "services" {
                for f in ["clusterIP", "clusterIPs"] {
                    match (&obj["spec"][f], &old["spec"][f]) {
                        (Value::Null, o) if !o.is_null() => obj["spec"][f] = o.clone(),
                        (Value::String(n), Value::String(o)) if n.is_empty() => {
                            obj["spec"][f] = json!(o)
                        }
                        (n, o) if !o.is_null() && n != o => {
                            return Err(ApiError::invalid(
                                r,
                                name,
                                vec![(
                                    "FieldValueInvalid",
                                    format!("spec.{f}"),
                                    format!("Invalid value: {n}: field is immutable"),
                                )],
                            ));
                        }
                        _ => {}
                    }
                }
            }
            if r.group == "apps" && obj["spec"] != old["spec"] {
                obj["metadata"]["generation"] =
                    json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
            }
            objects::apply_defaults(r, &mut obj);
            let causes = objects::validate(r, &obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(r, name, causes));
            }
        }
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        if obj["metadata"]["managedFields"].is_null() {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
        if !self.is_apply() {
            patch::record_update(&mut obj, Some(&old), &manager, &r.api_version(), &now, sub);
        }
        let key = r.key(ns, name);
        let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
        let finalizers_left = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let pod_waits = r.plural == "pods"
            && obj["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0;
        if self.dry_run() {
            obj["metadata"]["resourceVersion"] = json!(current.mod_rev.to_string());
            return Ok(self.respond(r, StatusCode::OK, &obj, warnings));
        }
        if deleting && !finalizers_left && !pod_waits {
            let kv = self
                .store()
                .delete(&key, Some(current.mod_rev))
                .await
                .map_err(|e| store_error(r, name, e))?;
            obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
            return Ok(self.respond(r, StatusCode::OK, &obj, warnings));
        }
        let kv = self
            .store()
            .update(&key, encode(&obj), Some(current.mod_rev))
            .await
            .map_err(|e| store_error(r, name, e))?;
        obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
        Ok(self.respond(r, StatusCode::OK, &obj, warnings))
    }

    async fn update(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
        sub: Option<&str>,
    ) -> ApiResult {
        let input = self.parse_body(body)?;
        let validation = self.param("fieldValidation").unwrap_or("Warn");
        let (obj, warnings) = objects::decode(r, &input, validation)?;
        let current = self.current(r, ns, name).await?;
        self.write_update(r, ns, name, &current, obj, sub, &warnings)
            .await
    }

    async fn patch(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
        sub: Option<&str>,
    ) -> ApiResult {
        let ct = self.content_type().to_string();
        let is_apply = ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor";
        if is_apply && self.param("fieldManager").is_none() {
            return Err(ApiError::bad_request(
                "PATCH requests of type apply must have fieldManager",
            ));
        }
        let patch_doc: Value = if is_apply {
            serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
        };
        let validation = self.param("fieldValidation").unwrap_or("Warn");
        // Patches are retried on a concurrent write, as the kube-apiserver does.
        for _ in 0..5 {
            let current = self
                .store()
                .get(&r.key(ns, name))
                .await
                .map_err(|e| store_error(r, name, e))?;
            let Some(current) = current else {
                if is_apply {
                    // Apply creates what does not exist.
                    let applied = patch::apply(
                        None,
                        &patch_doc,
                        &self.field_manager(),
                        &r.api_version(),
                        &objects::now(),
                        true,
                    )
                    .unwrap_or_default();
                    let mut bytes = serde_json::to_vec(&applied).unwrap();
                    if let Some(m) =
                        serde_json::from_slice::<Value>(&bytes)
                            .ok()
                            .and_then(|mut v| {
                                v["metadata"]["namespace"] = json!(ns);
                                serde_json::to_vec(&v).ok()
                            })
                    {
                        bytes = m;
                    }
                    return self.create(r, ns, &Bytes::from(bytes)).await;
                }
                return Err(ApiError::not_found(r, name));
            };
            let old = decode_kv(&current);
            let patched = match ct.as_str() {
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = serde_json::from_value(patch_doc.clone())
                        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                    let mut v = old.clone();
                    json_patch::patch(&mut v, &ops).map_err(|e| ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}")))?;
                    v
                }
                "application/merge-patch+json" => {
                    let mut v = old.clone();
                    json_patch::merge(&mut v, &patch_doc);
                    v
                }
                "application/strategic-merge-patch+json" => {
                    let mut v = old.clone();
                    patch::strategic_merge(&mut v, &patch_doc);
                    v
                }
                _ if is_apply => patch::apply(
                    Some(&old),
                    &patch_doc,
                    &self.field_manager(),
                    &r.api_version(),
                    &objects::now(),
                    self.param("force").is_some_and(parse_bool),
                )
                .map_err(|c| {
                    let (msg, causes) = patch::conflict_message(&c);
                    let mut e = ApiError::new(409, "Conflict", msg);
                    let mut d = json!({"name": name, "kind": r.plural, "causes": causes});
                    if !r.group.is_empty() {
                        d["group"] = json!(r.group);
                    }
                    e.details = Some(d);
                    e
                })?,
                other => {
                    return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})")));
                }
            };
            let (obj, warnings) = objects::decode(r, &patched, validation)?;
            match self
                .write_update(r, ns, name, &current, obj, sub, &warnings)
                .await
            {
                Err(e)
                    if e.reason == "Conflict"
                        && patch_doc["metadata"]["resourceVersion"].is_null() =>
                {
                    continue
                }
                other => return other,
            }
        }
        Err(ApiError::conflict(r, name))
    }

    async fn delete(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> ApiResult {
        let opts: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        let grace_param = self
            .param("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| opts["gracePeriodSeconds"].as_i64());
        let key = r.key(ns, name);
        let current = self.current(r, ns, name).await?;
        let mut obj = decode_kv(&current);
        if let Some(uid) = opts["preconditions"]["uid"].as_str() {
            if obj["metadata"]["uid"] != uid {
                return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}", r.qualified(), obj["metadata"]["uid"].as_str().unwrap_or_default())));
            }
        }
        if let Some(rv) = opts["preconditions"]["resourceVersion"].as_str() {
            if rv != current.mod_rev.to_string() {
                return Err(ApiError::conflict(r, name));
            }
        }
        let now = jiff::Timestamp::now();
        let stamp = |secs: i64| {
            (now + jiff::SignedDuration::from_secs(secs))
                .round(jiff::Unit::Second)
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        };
        if r.plural == "namespaces" {
            if obj["status"]["phase"] != "Terminating" {
                obj["status"]["phase"] = json!("Terminating");
                obj["metadata"]["deletionTimestamp"] = json!(stamp(0));
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if !self.dry_run() {
                    let kv = self
                        .store()
                        .update(&key, encode(&obj), Some(current.mod_rev))
                        .await
                        .map_err(|e| store_error(r, name, e))?;
                    obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
                    let store = self.server.store.clone();
                    let ns = name.to_string();
                    tokio::spawn(async move { finalize_namespace(store, ns).await });
                }
            }
            return Ok(self.respond(r, StatusCode::OK, &obj, &[]));
        }
        // Cascading: Background (the default) leaves dependents to the garbage collector,
        // Foreground keeps the owner until they are gone, Orphan cuts them loose first.
        let policy = self
            .param("propagationPolicy")
            .or(opts["propagationPolicy"].as_str())
            .or((opts["orphanDependents"] == true).then_some("Orphan"))
            .unwrap_or("Background")
            .to_string();
        match policy.as_str() {
            "Orphan" if !self.dry_run() => {
                let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                orphan_dependents(self.store(), &uid).await;
            }
            "Foreground" => {
                let f = obj["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .entry("finalizers")
                    .or_insert_with(|| json!([]));
                if let Some(list) = f.as_array_mut() {
                    if !list.iter().any(|x| x == "foregroundDeletion") {
                        list.push(json!("foregroundDeletion"));
                    }
                }
            }
            "Orphan" | "Background" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                )))
            }
        }
        let finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let mut grace = 0;
        if r.plural == "pods" {
            let bound = obj["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
            let done = matches!(
                obj["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            grace = grace_param
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0);
            if !bound || done {
                grace = 0;
            }
        }
        if grace > 0 || finalizers {
            // Graceful deletion: the object stays, marked, until the kubelet (or the last
            // finalizer's owner) finishes it.
            let existing = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if existing.is_some_and(|e| e <= grace)
                && !obj["metadata"]["deletionTimestamp"].is_null()
            {
                return Ok(self.respond(r, StatusCode::OK, &obj, &[]));
            }
            if grace > 0 || obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = json!(stamp(grace));
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            if !finalizers && grace == 0 {
                // fall through to removal
            } else {
                if !self.dry_run() {
                    let kv = self
                        .store()
                        .update(&key, encode(&obj), Some(current.mod_rev))
                        .await
                        .map_err(|e| store_error(r, name, e))?;
                    obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
                }
                return Ok(self.respond(r, StatusCode::OK, &obj, &[]));
            }
        }
        if self.dry_run() {
            return Ok(self.respond(r, StatusCode::OK, &obj, &[]));
        }
        let kv = self
            .store()
            .delete(&key, Some(current.mod_rev))
            .await
            .map_err(|e| store_error(r, name, e))?;
        let mut gone = decode_kv(&kv);
        gone["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
        if r.plural == "services" {
            if let Some(ip) = gone["spec"]["clusterIP"]
                .as_str()
                .filter(|ip| *ip != "None")
            {
                services::release(self.store(), ip).await;
            }
        }
        Ok(self.respond(r, StatusCode::OK, &gone, &[]))
    }

    async fn delete_collection(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        body: &Bytes,
    ) -> ApiResult {
        let (ls, fs) = self.selectors(r)?;
        let (kvs, _) = self
            .store()
            .list(&Self::prefix(r, ns), None)
            .await
            .map_err(|e| store_error(r, "", e))?;
        let mut items = Vec::new();
        for kv in kvs {
            let obj = decode_kv(&kv);
            if !ls.matches(&obj) || !fs.matches(&obj) {
                continue;
            }
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ons = obj["metadata"]["namespace"].as_str().map(str::to_owned);
            match self.delete(r, ons.as_deref(), &name, body).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => items.push(obj),
                Err(e) => return Err(e),
            }
        }
        Ok(self.list_response(r, items, json!({})))
    }

    /// The `scale` subresource (autoscaling/v1 Scale) of deployments and replica sets:
    /// `kubectl scale` reads and patches it; writes land in the owner's `spec.replicas`.
    async fn scale(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        name: &str,
        method: Method,
        body: &Bytes,
    ) -> ApiResult {
        let key = r.key(ns, name);
        let current = self.current(r, ns, name).await?;
        let mut obj = decode_kv(&current);
        let to_scale = |o: &Value| {
            let selector: Vec<String> = o["spec"]["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            json!({
                "kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "uid": o["metadata"]["uid"],
                             "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
                "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(1)},
                "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")},
            })
        };
        let scale = to_scale(&obj);
        let wanted = match method {
            Method::GET => return Ok(json_response(StatusCode::OK, &scale)),
            Method::PUT => self.parse_body(body)?,
            _ => {
                let ct = self.content_type();
                let p: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                let mut v = scale.clone();
                if ct.starts_with("application/json-patch+json") {
                    let ops: json_patch::Patch = serde_json::from_value(p)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                    json_patch::patch(&mut v, &ops)
                        .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
                } else if ct.starts_with("application/strategic-merge-patch+json") {
                    patch::strategic_merge(&mut v, &p);
                } else {
                    json_patch::merge(&mut v, &p);
                }
                v
            }
        };
        if let Some(rv) = wanted["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            if rv != current.mod_rev.to_string() {
                return Err(ApiError::conflict(r, name));
            }
        }
        let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|n| *n >= 0) else {
            return Err(ApiError::new(422, "Invalid", format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {}: must be greater than or equal to 0", wanted["spec"]["replicas"])));
        };
        if obj["spec"]["replicas"].as_i64() != Some(replicas) {
            obj["spec"]["replicas"] = json!(replicas);
            obj["metadata"]["generation"] =
                json!(obj["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
            if !self.dry_run() {
                let kv = self
                    .store()
                    .update(&key, encode(&obj), Some(current.mod_rev))
                    .await
                    .map_err(|e| store_error(r, name, e))?;
                obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
            }
        }
        Ok(json_response(StatusCode::OK, &to_scale(&obj)))
    }

    /// `certificatesigningrequests/<name>/approval`: only the Approved/Denied conditions change.
    async fn approval(&self, r: &'static Resource, name: &str, body: &Bytes) -> ApiResult {
        let input = self.parse_body(body)?;
        let key = r.key(None, name);
        let current = self.current(r, None, name).await?;
        let mut obj = decode_kv(&current);
        if let Some(rv) = input["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            if rv != current.mod_rev.to_string() {
                return Err(ApiError::conflict(r, name));
            }
        }
        let conds: Vec<Value> = input["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied")))
            .map(|c| {
                let mut c = c.clone();
                if c["lastUpdateTime"].is_null() {
                    c["lastUpdateTime"] = json!(objects::now());
                }
                c
            })
            .collect();
        let mut all: Vec<Value> = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        all.retain(|c| !matches!(c["type"].as_str(), Some("Approved" | "Denied")));
        all.extend(conds);
        obj["status"]["conditions"] = json!(all);
        let kv = self
            .store()
            .update(&key, encode(&obj), Some(current.mod_rev))
            .await
            .map_err(|e| store_error(r, name, e))?;
        obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
        Ok(self.respond(r, StatusCode::OK, &obj, &[]))
    }

    /// `serviceaccounts/<name>/token`: a TokenRequest answered with a signed token.
    async fn token_request(&self, ns: &str, name: &str, body: &Bytes) -> ApiResult {
        let sar = resources::find("", "v1", "serviceaccounts").unwrap();
        let req = if body.is_empty() {
            json!({})
        } else {
            self.parse_body(body)?
        };
        let kv = self
            .store()
            .get(&sar.key(Some(ns), name))
            .await
            .map_err(|e| store_error(sar, name, e))?
            .ok_or_else(|| ApiError::not_found(sar, name))?;
        let sa = decode_kv(&kv);
        let ttl = req["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
        if ttl < 600 {
            return Err(ApiError::new(422, "Invalid", format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {ttl}: may not specify a duration less than 10 minutes")));
        }
        let audiences: Vec<String> = req["spec"]["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let (token, exp) = self
            .server
            .sa
            .issue(
                ns,
                name,
                sa["metadata"]["uid"].as_str().unwrap_or_default(),
                &audiences,
                ttl,
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let exp = jiff::Timestamp::from_second(exp)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut spec = req["spec"].clone();
        if !spec.is_object() {
            spec = json!({});
        }
        spec["expirationSeconds"] = json!(ttl);
        if audiences.is_empty() {
            spec["audiences"] = json!([satoken::ISSUER]);
        }
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": name, "namespace": ns, "creationTimestamp": null}, "spec": spec, "status": {"token": token, "expirationTimestamp": exp}}),
        ))
    }

    /// `pods/binding`: the scheduler's (or anyone's) assignment of a pod to a node.
    async fn bind(&self, ns: &str, name: &str, body: &Bytes) -> ApiResult {
        let r = resources::find("", "v1", "pods").unwrap();
        let binding: Value = self.parse_body(body)?;
        let node = binding["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                r,
                name,
                vec![(
                    "FieldValueRequired",
                    "target.name".into(),
                    "target.name: Required value".into(),
                )],
            ));
        }
        let key = r.key(Some(ns), name);
        let current = self.current(r, Some(ns), name).await?;
        let mut pod = decode_kv(&current);
        if pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{}\"", pod["spec"]["nodeName"].as_str().unwrap_or_default())));
        }
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host")));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conds = pod["status"]
            .as_object_mut()
            .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(c)) = conds {
            c.retain(|c| c["type"] != "PodScheduled");
            c.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()}));
        }
        self.store()
            .update(&key, encode(&pod), Some(current.mod_rev))
            .await
            .map_err(|e| store_error(r, name, e))?;
        Ok(json_response(
            StatusCode::CREATED,
            &status::success(json!({})),
        ))
    }

    async fn watch(&self, r: &'static Resource, ns: Option<&str>, name: Option<&str>) -> ApiResult {
        let (ls, mut fs) = self.selectors(r)?;
        if let Some(n) = name {
            fs = FieldSelector::parse(&format!("metadata.name={n}"), r.plural).unwrap();
        }
        let prefix = Self::prefix(r, ns);
        let bookmarks = self.param("allowWatchBookmarks").is_some_and(parse_bool);
        let timeout = self
            .param("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800);
        let rv = self.param("resourceVersion").unwrap_or("0");
        let store = self.server.store.clone();
        let mut initial = Vec::new();
        let from: Rev = if rv == "0" {
            let (kvs, rev) = store
                .list(&prefix, None)
                .await
                .map_err(|e| store_error(r, "", e))?;
            initial = kvs
                .iter()
                .map(decode_kv)
                .filter(|o| ls.matches(o) && fs.matches(o))
                .collect();
            rev
        } else {
            parse_rv(rv)?
        };
        let table = self.table;
        let include = self
            .param("includeObject")
            .unwrap_or("Metadata")
            .to_string();
        let w = store.watch(&prefix, from).await;
        let stream = async_stream::stream! {
            let mut first = true;
            let render = |ty: &str, obj: &Value, first: &mut bool| -> Bytes {
                let o = if table {
                    let t = table::table(r, std::slice::from_ref(obj), json!({"resourceVersion": obj["metadata"]["resourceVersion"]}), &include, *first);
                    *first = false;
                    t
                } else {
                    obj.clone()
                };
                let mut line = serde_json::to_vec(&json!({"type": ty, "object": o})).unwrap();
                line.push(b'\n');
                Bytes::from(line)
            };
            let mut w = match w {
                Ok(w) => w,
                Err(StoreError::Compacted { requested, current, .. }) => {
                    let e = ApiError::gone(format!("too old resource version: {requested} ({current})"));
                    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.body()})).unwrap();
                    line.push(b'\n');
                    yield Ok::<_, std::io::Error>(Bytes::from(line));
                    return;
                }
                Err(e) => {
                    let e = ApiError::internal(e.to_string());
                    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.body()})).unwrap();
                    line.push(b'\n');
                    yield Ok(Bytes::from(line));
                    return;
                }
            };
            for o in initial {
                yield Ok(render("ADDED", &o, &mut first));
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut last_rev = from;
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tokio::select! {
                    ev = w.recv() => {
                        let Some(ev) = ev else { return };
                        last_rev = ev.kv.mod_rev;
                        if let Some((ty, obj)) = watch_event(&ev, &ls, &fs) {
                            yield Ok(render(ty, &obj, &mut first));
                        }
                    }
                    _ = tick.tick(), if bookmarks => {
                        let b = json!({"type": "BOOKMARK", "object": {"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": last_rev.to_string()}}});
                        let mut line = serde_json::to_vec(&b).unwrap();
                        line.push(b'\n');
                        yield Ok(Bytes::from(line));
                    }
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        };
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response())
    }
}

/// The watch event a store event is for a client with these selectors: objects moving into
/// the selection are ADDED, out of it DELETED.
fn watch_event(
    ev: &Event,
    ls: &LabelSelector,
    fs: &FieldSelector,
) -> Option<(&'static str, Value)> {
    let mut obj = decode_kv(&ev.kv);
    obj["metadata"]["resourceVersion"] = json!(ev.kv.mod_rev.to_string());
    let now = ls.matches(&obj) && fs.matches(&obj);
    let before = ev
        .prev
        .as_ref()
        .map(decode_kv)
        .is_some_and(|p| ls.matches(&p) && fs.matches(&p));
    match ev.kind {
        EventKind::Delete => before.then_some(("DELETED", obj)),
        EventKind::Put => match (before, now) {
            (false, true) => Some(("ADDED", obj)),
            (true, true) => Some(("MODIFIED", obj)),
            (true, false) => Some(("DELETED", obj)),
            (false, false) => None,
        },
    }
}

/// Go's strconv.ParseBool, which Kubernetes uses for boolean query parameters.
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn parse_rv(rv: &str) -> Result<Rev, ApiError> {
    rv.parse::<Rev>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

fn encode_continue(rev: Rev, last_key: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": last_key}).to_string())
}

fn decode_continue(tok: &str) -> Option<(Rev, String)> {
    let raw = base64::engine::general_purpose::STANDARD.decode(tok).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((v["rv"].as_i64()?, v["start"].as_str()?.to_string()))
}

/// Removes the owner reference to `uid` from every object that has one.
async fn orphan_dependents(store: &dyn Store, uid: &str) {
    for r in resources::RESOURCES.iter().filter(|r| r.stored) {
        let Ok((kvs, _)) = store.list(&r.prefix(), None).await else {
            continue;
        };
        for kv in kvs {
            let Ok(mut o) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let Some(refs) = o["metadata"]["ownerReferences"].as_array() else {
                continue;
            };
            if !refs.iter().any(|x| x["uid"] == uid) {
                continue;
            }
            let kept: Vec<Value> = refs.iter().filter(|x| x["uid"] != uid).cloned().collect();
            if kept.is_empty() {
                o["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ownerReferences");
            } else {
                o["metadata"]["ownerReferences"] = json!(kept);
            }
            let _ = store.update(&kv.key, encode(&o), Some(kv.mod_rev)).await;
        }
    }
}

/// What every namespace holds: the `default` service account (the service account
/// controller's) and the `kube-root-ca.crt` ConfigMap (the root CA publisher's).
async fn ensure_namespace_defaults(store: &dyn Store, ns: &str, ca_pem: &str) {
    let sa = resources::find("", "v1", "serviceaccounts").unwrap();
    let obj = json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "default", "namespace": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now()}});
    let _ = store
        .create(&sa.key(Some(ns), "default"), encode(&obj))
        .await;
    let cm = resources::find("", "v1", "configmaps").unwrap();
    let obj = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now(), "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}}, "data": {"ca.crt": ca_pem}});
    let _ = store
        .create(&cm.key(Some(ns), ROOT_CA_CONFIGMAP), encode(&obj))
        .await;
}

const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The namespace controller's job: deletes what the namespace holds, then the namespace.
async fn finalize_namespace(store: Arc<dyn Store>, ns: String) {
    for r in resources::RESOURCES
        .iter()
        .filter(|r| r.namespaced && r.stored)
    {
        let prefix = format!("{}{ns}/", r.prefix());
        if let Ok((kvs, _)) = store.list(&prefix, None).await {
            for kv in kvs {
                let _ = store.delete(&kv.key, None).await;
            }
        }
    }
    let nsr = resources::find("", "v1", "namespaces").unwrap();
    let _ = store.delete(&nsr.key(None, &ns), None).await;
}

/// Objects every cluster starts with; creating them is idempotent, so apiservers sharing one
/// store may all do it.
pub async fn bootstrap(store: &dyn Store, ca_pem: &str) -> anyhow::Result<()> {
    let nsr = resources::find("", "v1", "namespaces").unwrap();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut obj = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now()}});
        objects::apply_defaults(nsr, &mut obj);
        match store.create(&nsr.key(None, ns), encode(&obj)).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => anyhow::bail!("creating namespace {ns}: {e}"),
        }
        ensure_namespace_defaults(store, ns, ca_pem).await;
    }
    let (roles, bindings) = auth::default_rbac();
    let cr = resources::find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
    let crb = resources::find("rbac.authorization.k8s.io", "v1", "clusterrolebindings").unwrap();
    for (r, objs) in [(cr, roles), (crb, bindings)] {
        for mut o in objs {
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            o["metadata"]["uid"] = json!(objects::new_uid());
            o["metadata"]["creationTimestamp"] = json!(objects::now());
            match store.create(&r.key(None, &name), encode(&o)).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => anyhow::bail!("creating {} {name}: {e}", r.kind),
            }
        }
    }
    let pcr = resources::find("scheduling.k8s.io", "v1", "priorityclasses").unwrap();
    for (name, value, desc) in [
        ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
        ("system-cluster-critical", 2_000_000_000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
    ] {
        let obj = json!({"kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1", "metadata": {"name": name, "uid": objects::new_uid(), "creationTimestamp": objects::now()}, "value": value, "description": desc, "preemptionPolicy": "PreemptLowerPriority"});
        let _ = store.create(&pcr.key(None, name), encode(&obj)).await;
    }
    Ok(())
}

/// Compacts history older than five minutes, every five minutes, as the kube-apiserver does.
pub async fn compactor(store: Arc<dyn Store>, every: Duration) {
    let mut previous: Option<Rev> = None;
    loop {
        tokio::time::sleep(every).await;
        if let Some(rev) = previous {
            if let Err(e) = store.compact(rev).await {
                tracing::warn!("compaction to {rev}: {e}");
            }
        }
        previous = store.current_rev().await.ok();
    }
}
