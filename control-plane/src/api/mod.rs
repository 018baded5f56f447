//! The apiserver: Kubernetes' REST API over a [`Store`]. It keeps no state of its own (every
//! object, revision and watch comes from the store), so several apiservers can share one etcd.

pub mod auth;
mod bootstrap;
pub mod discovery;
pub mod nodeports;
pub mod objects;
pub mod patch;
mod proxy;
pub use bootstrap::{bootstrap, compactor};
pub use proxy::client_config as proxy_client_config;
pub mod protobuf;
pub mod quota;
pub mod registry;
pub mod resources;
pub mod satoken;
pub mod selectors;
pub mod services;
pub mod status;
pub mod table;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::store::Store;
use registry::{json_response, parse_bool, ApiResult, Request};
use resources::Resource;
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
    /// `--service-cluster-ip-range`: one range, or one of each family (dual-stack Services).
    pub service_cidr: k8s_rules::cidrs::DualStackCidrs,
    /// The cluster CA (PEM), published to every namespace as `kube-root-ca.crt`.
    pub ca_pem: String,
    /// HTTPS client for node APIs (pods/log), with the apiserver's kubelet client certificate.
    pub kubelet: reqwest::Client,
    /// The same identity for upgraded connections (exec, attach, port-forward).
    pub kubelet_tls: Arc<rustls::ClientConfig>,
    /// Taken by a create in a namespace with ResourceQuotas from its quota check until it is
    /// stored, so concurrent creates are counted against each other.
    pub quota_turn: Arc<tokio::sync::Mutex<()>>,
}

pub fn router(server: Arc<ApiServer>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn(trace_request))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(server)
}

/// Every request and how it ended, at trace level (`PODLET_LOG=podlet_control_plane::api=trace`):
/// what shows a request that never returns.
async fn trace_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !tracing::enabled!(tracing::Level::TRACE) {
        return next.run(req).await;
    }
    let (m, u) = (req.method().clone(), req.uri().clone());
    let t = std::time::Instant::now();
    tracing::trace!(%m, %u, "request in");
    let r = next.run(req).await;
    tracing::trace!(%m, %u, status = %r.status(), ms = t.elapsed().as_millis() as u64, "request out");
    r
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
                [name, sub, ..]
                    if !r.namespaced && r.subresource(sub).is_some_and(|s| s.takes_path()) =>
                {
                    t(r, None, Some(name), Some(sub))
                }
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
    let kv = server
        .store
        .get(&resources::SERVICEACCOUNTS.key(Some(ns), name))
        .await
        .ok()??;
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
                let req = Request {
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
                    Some(_) => route(&req, method, t, body, watch).await,
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

/// The generic store's verb, the status store, or the kind's subresource a request is for.
async fn route(
    req: &Request<'_>,
    method: Method,
    t: Target,
    body: Bytes,
    watch: bool,
) -> ApiResult {
    let r = t.r;
    if t.ns.is_none() && r.namespaced && t.name.is_some() {
        return Err(ApiError::no_route());
    }
    let store = registry::Store::new(r);
    let ns = t.ns.as_deref();
    let Some(name) = t.name.as_deref() else {
        return match method {
            Method::GET if watch => store.watch(req, ns, None).await,
            Method::GET => store.list(req, ns).await,
            Method::POST if r.review => store.review(req, &body).await,
            _ if !r.stored => Err(not_allowed("")),
            Method::POST => store.create(req, ns, &body).await,
            Method::DELETE => store.delete_collection(req, ns, &body).await,
            _ => Err(ApiError::no_route()),
        };
    };
    let sub = t.sub.as_deref();
    match (&method, sub) {
        (&Method::GET, None) if watch => return store.watch(req, ns, Some(name)).await,
        _ if !r.stored => return Err(not_allowed("")),
        _ => {}
    }
    match (method, sub) {
        (Method::GET, None | Some("status")) => store.get(req, ns, name).await,
        (Method::PUT, None) => store.update(req, ns, name, &body).await,
        (Method::PATCH, None) => store.patch(req, ns, name, &body).await,
        (Method::DELETE, None) => store.delete(req, ns, name, &body).await,
        (Method::PUT, Some("status")) => store.status().update(req, ns, name, &body).await,
        (Method::PATCH, Some("status")) => store.status().patch(req, ns, name, &body).await,
        (_, Some("status")) if r.status => Err(not_allowed(" (status)")),
        (method, Some(sub)) => match r.subresource(sub) {
            Some(s) => match s.serve(req, &method, &store, ns, name, &body).await {
                Some(answer) => answer,
                None => Err(not_allowed(&format!(" ({sub})"))),
            },
            None => Err(ApiError::no_route()),
        },
        _ => Err(ApiError::no_route()),
    }
}

fn not_allowed(what: &str) -> ApiError {
    ApiError::method_not_allowed(format!(
        "the server does not allow this method on the requested resource{what}"
    ))
}
