//! The kubelet's node API: `GET /pods` (a v1 PodList with live statuses), `/healthz` and
//! `/containerLogs/{namespace}/{pod}/{container}`, on a unix socket under the run dir (for the
//! CLI, root only) and on TCP `--address:--port`. With an apiserver, TCP is TLS with a
//! self-signed serving certificate (as the kubelet makes by default); clients authenticate with a
//! certificate from the cluster CA or a bearer token (TokenReview) and are authorized by a
//! SubjectAccessReview on the node's subresources, as the kubelet's webhook mode does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use axum::extract::FromRef;

use crate::eviction::Evictions;
use crate::pod::{Admission, ApiObjects, NodeInfo, Services, StatusCache};

/// What the node API reads; each handler takes the pieces it uses.
#[derive(Clone)]
pub struct NodeApi {
    info: Arc<NodeInfo>,
    statuses: Arc<StatusCache>,
    admission: Arc<Admission>,
    evictions: Arc<Evictions>,
    api: Arc<ApiObjects>,
}

impl NodeApi {
    pub fn new(svc: &Services) -> Self {
        Self {
            info: svc.info.clone(),
            statuses: svc.statuses.clone(),
            admission: svc.admission.clone(),
            evictions: svc.evictions.clone(),
            api: svc.api.clone(),
        }
    }
}

macro_rules! part {
    ($field:ident: $ty:ty) => {
        impl FromRef<NodeApi> for Arc<$ty> {
            fn from_ref(n: &NodeApi) -> Self {
                n.$field.clone()
            }
        }
    };
}
part!(info: NodeInfo);
part!(statuses: StatusCache);
part!(evictions: Evictions);

fn router(node: NodeApi) -> Router {
    Router::new()
        .route("/pods", get(pods))
        .route("/healthz", get(|| async { "ok" }))
        .route("/node", get(node_object))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/stats/summary",
            get(|State(n): State<NodeApi>| async move {
                axum::Json(crate::metrics::summary(&n.info, &n.statuses, &n.admission))
            }),
        )
        .route(
            "/metrics/resource",
            get(|State(n): State<NodeApi>| async move {
                prometheus(crate::metrics::resource(&n.info, &n.statuses, &n.admission))
            }),
        )
        .route(
            "/metrics",
            get(|State(n): State<NodeApi>| async move {
                prometheus(crate::metrics::agent(
                    &n.info.cfg.node_name,
                    &n.statuses,
                    &n.evictions,
                ))
            }),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(crate::stream::exec).post(crate::stream::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(crate::stream::attach).post(crate::stream::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(crate::stream::port_forward).post(crate::stream::port_forward),
        )
        .with_state(node)
}

async fn pods(State(statuses): State<Arc<StatusCache>>) -> impl IntoResponse {
    let items: Vec<_> = statuses.snapshot().into_values().collect();
    let body = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn node_object(
    State(info): State<Arc<NodeInfo>>,
    State(evictions): State<Arc<Evictions>>,
) -> impl IntoResponse {
    let body = serde_json::to_string(&info.node_object(&evictions)).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

fn prometheus(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn text(code: StatusCode, msg: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], msg).into_response()
}

async fn container_logs(
    State(info): State<Arc<NodeInfo>>,
    State(statuses): State<Arc<StatusCache>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(p) = statuses.pod_named(&ns, &pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        );
    };
    let spec = p.spec.clone().unwrap_or_default();
    let known = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == container);
    if !known {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {pod}"),
        );
    }
    let flag = |k: &str| {
        q.get(k)
            .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    };
    let num = |k: &str| {
        q.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|n| *n >= 0)
    };
    let since = match (q.get("sinceTime"), num("sinceSeconds")) {
        (Some(t), _) => match t.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("sinceTime: {e}")),
        },
        (None, Some(s)) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s)),
        _ => None,
    };
    let opts = crate::logs::Options {
        follow: flag("follow"),
        tail_lines: num("tailLines").map(|n| n as usize),
        timestamps: flag("timestamps"),
        since,
        previous: flag("previous"),
        limit_bytes: num("limitBytes").map(|n| n as u64),
    };
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let dir = info
        .cfg
        .log_dir
        .join(format!("{ns}_{pod}_{uid}"))
        .join(&container);
    if let Err(e) = crate::logs::log_file(&dir, opts.previous) {
        let msg = if opts.previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" has no logs yet ({e})")
        };
        return text(StatusCode::BAD_REQUEST, msg);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::task::spawn_blocking(move || {
        let alive = || statuses.contains(&uid);
        let _ = crate::logs::stream(&dir, &opts, &alive, &mut |b| {
            if b.is_empty() {
                !tx.is_closed()
            } else {
                tx.blocking_send(b.to_vec()).is_ok()
            }
        });
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Who a TLS client is: its certificate's CN and O (None without one).
#[derive(Clone)]
struct Peer(Option<(String, Vec<String>)>);

/// An authenticated user: name, uid, groups.
type UserInfo = (String, String, Vec<String>);

/// Authentication and authorization against the apiserver, with the kubelet's two-minute
/// cache of answers.
#[derive(Default)]
struct Guard {
    tokens: Mutex<HashMap<String, (Option<UserInfo>, Instant)>>,
    decisions: Mutex<HashMap<String, (bool, Instant)>>,
}

const CACHE_FOR: Duration = Duration::from_secs(120);

fn subresource(path: &str) -> &'static str {
    match path.trim_start_matches('/').split('/').next().unwrap_or("") {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        "checkpoint" => "checkpoint",
        "configz" => "configz",
        "healthz" => "healthz",
        _ => "proxy",
    }
}

async fn authenticate(
    client: &kube::Client,
    guard: &Guard,
    peer: Option<Peer>,
    bearer: Option<String>,
) -> Option<UserInfo> {
    if let Some(Peer(Some((cn, groups)))) = peer {
        return Some((cn, String::new(), groups));
    }
    let token = bearer?;
    if let Some((u, at)) = guard.tokens.lock().expect("guard").get(&token) {
        if at.elapsed() < CACHE_FOR {
            return u.clone();
        }
    }
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let got = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .ok()?;
    let st = got.status.unwrap_or_default();
    let user = st.authenticated.unwrap_or(false).then(|| {
        let u = st.user.unwrap_or_default();
        (
            u.username.unwrap_or_default(),
            u.uid.unwrap_or_default(),
            u.groups.unwrap_or_default(),
        )
    });
    guard
        .tokens
        .lock()
        .expect("guard")
        .insert(token, (user.clone(), Instant::now()));
    user
}

async fn guard(
    State((node, guard)): State<(NodeApi, Arc<Guard>)>,
    req: Request,
    next: Next,
) -> Response {
    let Some(client) = node.api.client() else {
        return next.run(req).await;
    };
    let peer = req.extensions().get::<Peer>().cloned();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let Some((user, uid, groups)) = authenticate(&client, &guard, peer, bearer).await else {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    };
    let verb = match method {
        axum::http::Method::POST => "create",
        axum::http::Method::PUT => "update",
        axum::http::Method::PATCH => "patch",
        axum::http::Method::DELETE => "delete",
        _ => "get",
    };
    let sub = subresource(&path);
    let key = format!("{user}\0{groups:?}\0{verb}\0{sub}");
    let cached = guard
        .decisions
        .lock()
        .expect("guard")
        .get(&key)
        .filter(|(_, at)| at.elapsed() < CACHE_FOR)
        .map(|(ok, _)| *ok);
    let allowed = match cached {
        Some(ok) => ok,
        None => {
            let sar = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.clone()),
                    uid: (!uid.is_empty()).then_some(uid),
                    groups: Some(groups.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        resource: Some("nodes".into()),
                        subresource: Some(sub.into()),
                        name: Some(node.info.cfg.node_name.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let ok = match Api::<SubjectAccessReview>::all(client)
                .create(&PostParams::default(), &sar)
                .await
            {
                Ok(r) => r.status.is_some_and(|s| s.allowed),
                Err(e) => {
                    tracing::warn!("authorizing a node API request: {e}");
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("authorization: {e}"),
                    );
                }
            };
            guard
                .decisions
                .lock()
                .expect("guard")
                .insert(key, (ok, Instant::now()));
            ok
        }
    };
    if !allowed {
        return text(
            StatusCode::FORBIDDEN,
            format!("Forbidden (user={user}, verb={verb}, resource=nodes, subresource={sub})"),
        );
    }
    next.run(req).await
}

/// Why the node API cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {}", .0.display())]
    BindUnix(PathBuf, #[source] std::io::Error),
    #[error("binding {0}")]
    BindTcp(SocketAddr, #[source] std::io::Error),
    #[error("creating {}", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("making the serving certificate")]
    Certificate(#[source] rcgen::Error),
    #[error("writing {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    WriteKey(#[from] k8s_rules::files::WriteError),
    #[error("reading {}", .0.display())]
    Kubeconfig(PathBuf, #[source] std::io::Error),
    #[error("{}: no cluster CA", .0.display())]
    NoClusterCa(PathBuf),
    #[error(transparent)]
    Tls(#[from] k8s_rules::pki::PkiError),
    #[error("serving")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// The node's serving certificate: made once, self-signed, under `<root-dir>/pki`.
fn serving_cert(info: &NodeInfo) -> Result<(String, String), ServeError> {
    let dir = info.cfg.root_dir.join("pki");
    let (crt, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        return Ok((c, k));
    }
    let mut names = vec![info.cfg.node_name.clone()];
    if let Some(ip) = info.host_ip {
        names.push(ip.to_string());
    }
    let key_pair = rcgen::KeyPair::generate().map_err(ServeError::Certificate)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(ServeError::Certificate)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{}@podlet", info.cfg.node_name),
    );
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(today.yesterday().unwrap_or(today));
    params.not_after = ymd(today.saturating_add(jiff::Span::new().years(1)));
    let cert = params
        .self_signed(&key_pair)
        .map_err(ServeError::Certificate)?;
    std::fs::create_dir_all(&dir).map_err(|e| ServeError::CreateDir(dir.clone(), e))?;
    k8s_rules::files::write_private(&key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&crt, cert.pem()).map_err(|e| ServeError::Write(crt.clone(), e))?;
    Ok((cert.pem(), key_pair.serialize_pem()))
}

fn tls_config(info: &NodeInfo) -> Result<rustls::ServerConfig, ServeError> {
    let (cert_pem, key_pem) = serving_cert(info)?;
    let path = &info.cfg.kubeconfig;
    let kubeconfig =
        std::fs::read_to_string(path).map_err(|e| ServeError::Kubeconfig(path.clone(), e))?;
    let ca = crate::cluster::join::cluster_ca(&kubeconfig)
        .ok_or_else(|| ServeError::NoClusterCa(path.clone()))?;
    Ok(k8s_rules::pki::server_tls(&cert_pem, &key_pem, &ca)?)
}

async fn serve_tls(listener: tokio::net::TcpListener, app: Router, tls: rustls::ServerConfig) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let peer = Peer(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(k8s_rules::pki::identity),
            );
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let app = app.clone();
                    async move {
                        use tower::ServiceExt;
                        app.oneshot(req.map(Body::new)).await
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Serves until the process ends.
pub async fn serve(node: NodeApi) -> Result<(), ServeError> {
    let cfg = &node.info.cfg;
    let sock = cfg.socket_path();
    let _ = std::fs::remove_file(&sock);
    if let Some(d) = sock.parent() {
        std::fs::create_dir_all(d).map_err(|e| ServeError::CreateDir(d.to_path_buf(), e))?;
    }
    let unix =
        tokio::net::UnixListener::bind(&sock).map_err(|e| ServeError::BindUnix(sock.clone(), e))?;
    let app = router(node.clone());
    let unix_app = app.clone();
    let unix_task = tokio::spawn(async move { axum::serve(unix, unix_app).await });
    if cfg.port != 0 {
        let addr = std::net::SocketAddr::new(cfg.address, cfg.port);
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::BindTcp(addr, e))?;
        if node.api.client().is_some() {
            let tls = tls_config(&node.info)?;
            let guarded = app.layer(axum::middleware::from_fn_with_state(
                (node.clone(), Arc::new(Guard::default())),
                guard,
            ));
            tracing::info!(%addr, socket = %sock.display(), "node API listening (TLS)");
            serve_tls(tcp, guarded, tls).await;
        } else {
            tracing::info!(%addr, socket = %sock.display(), "node API listening");
            axum::serve(tcp, app).await.map_err(ServeError::Serve)?;
        }
    } else {
        tracing::info!(socket = %sock.display(), "node API listening");
    }
    unix_task.await?.map_err(ServeError::Serve)?;
    Ok(())
}
