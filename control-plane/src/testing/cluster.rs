//! The apiserver in-process, for this crate's tests: the router over an embedded store in a
//! temporary directory, with no TCP and no TLS. Requests reach it either one at a time
//! (`call`, as the cluster administrator) or from a real `kube::Client` whose every request is
//! handed to the router with the client-certificate identity of a chosen user, so the
//! authorizer sees what it would see behind the TLS listener.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use futures_util::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{auth, router, satoken, ApiServer};
use crate::store::embedded::Embedded;

pub struct Cluster {
    app: axum::Router,
    dir: tempfile::TempDir,
    store: Arc<dyn crate::store::Store>,
}

pub struct Answer {
    pub code: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// A client's connection to the apiserver, which a test may cut (every request then fails
/// as if the apiserver were unreachable) and restore.
#[derive(Clone, Default)]
pub struct Link(Arc<AtomicBool>);

impl Link {
    pub fn cut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Cluster {
    pub async fn new() -> Cluster {
        Cluster::with_service_cidrs("10.96.0.0/24").await
    }

    /// An apiserver whose `--service-cluster-ip-range` is `cidrs` (`10.96.0.0/24,fd00:10:96::/112`
    /// for a dual-stack one).
    pub async fn with_service_cidrs(cidrs: &str) -> Cluster {
        let service_cidr =
            k8s_rules::cidrs::DualStackCidrs::parse("service-cluster-ip-range", cidrs)
                .expect("the test's service ranges");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pki_dir = dir.path().join("pki");
        let pki = crate::pki::ensure(&pki_dir, &[]).expect("cluster PKI");
        let store: Arc<dyn crate::store::Store> =
            Arc::new(Embedded::open(&dir.path().join("data")).expect("embedded store"));
        crate::api::bootstrap(&*store, &pki.ca_pem)
            .await
            .expect("bootstrap");
        let (cert, key) = crate::pki::client_cert(&pki_dir, "kubelet-client", &["system:masters"])
            .expect("a kubelet client certificate");
        let server = ApiServer {
            store: store.clone(),
            tokens: auth::Tokens::default(),
            sa: satoken::Signer::load(&pki_dir).expect("service-account key"),
            service_cidr,
            ca_pem: pki.ca_pem.clone(),
            kubelet: reqwest::Client::new(),
            kubelet_tls: Arc::new(crate::api::proxy_client_config(&cert, &key).unwrap()),
            quota_turn: Default::default(),
        };
        Cluster {
            app: router(Arc::new(server)),
            dir,
            store,
        }
    }

    /// The apiserver's store, for tests that set up what older versions stored.
    pub fn store(&self) -> &dyn crate::store::Store {
        &*self.store
    }

    /// The cluster CA's directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        ct: &str,
    ) -> axum::http::Request<Body> {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, ct)
            .extension(auth::CertIdentity(Some((
                "admin".into(),
                vec!["system:masters".into()],
            ))))
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap()
    }

    /// One request as the administrator, with the body's content type `ct`.
    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        ct: &str,
    ) -> Answer {
        let resp = self
            .app
            .clone()
            .oneshot(self.request(method, path, body, ct))
            .await
            .expect("the router answers");
        let code = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("a whole body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            code,
            headers,
            body,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        self.call_as(method, path, body, "application/json").await
    }

    /// A watch's stream, read until `want` says an event is the one awaited.
    pub async fn watch_until(&self, path: &str, want: impl Fn(&Value) -> bool) -> Value {
        let resp = self
            .app
            .clone()
            .oneshot(self.request(Method::GET, path, None, "application/json"))
            .await
            .expect("the router answers");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let mut stream = resp.into_body().into_data_stream();
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let chunk = tokio::time::timeout_at(deadline, stream.next())
                .await
                .unwrap_or_else(|_| panic!("no awaited event on {path}"))
                .unwrap_or_else(|| panic!("{path}: the stream ended"))
                .expect("a chunk");
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let ev: Value = serde_json::from_slice(&line).expect("one JSON event a line");
                if want(&ev) {
                    return ev;
                }
            }
        }
    }

    /// A client acting as `user` in `groups`, as if it had presented a client certificate
    /// the cluster CA signed for them.
    pub fn client(&self, user: &str, groups: &[&str]) -> kube::Client {
        self.client_on(user, groups, Link::default())
    }

    /// The administrator's client (`system:masters`).
    pub fn admin(&self) -> kube::Client {
        self.client("admin", &["system:masters"])
    }

    /// A client as `user` whose connection goes through `link`.
    pub fn client_on(&self, user: &str, groups: &[&str], link: Link) -> kube::Client {
        let app = self.app.clone();
        let identity = auth::CertIdentity(Some((
            user.to_string(),
            groups.iter().map(|g| g.to_string()).collect(),
        )));
        let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let (app, identity, link) = (app.clone(), identity.clone(), link.clone());
            async move {
                if link.is_cut() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "the test cut this client's link",
                    ));
                }
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(identity);
                Ok(app.oneshot(req).await.unwrap_or_else(|e| match e {}))
            }
        });
        kube::Client::new(service, "default")
    }
}

/// Polls `check` until it yields something, failing the test with `what` after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A background task that ends with the test (or whenever it is dropped), so no loop outlives
/// the cluster it acts on.
pub struct Task(tokio::task::JoinHandle<()>);

impl Task {
    pub fn spawn(f: impl Future<Output = ()> + Send + 'static) -> Task {
        Task(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
