//! Upgraded connections to node APIs (exec, attach, port-forward): the client's request is
//! replayed to the node over TLS with the apiserver's kubelet client certificate; on `101
//! Switching Protocols` both connections are joined byte for byte.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::status::ApiError;

/// Request headers that carry the upgrade negotiation.
const FORWARDED: &[&str] = &[
    "upgrade",
    "connection",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Node serving certificates are self-signed: like the kube-apiserver without
/// `--kubelet-certificate-authority`, this client does not verify them.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS for node connections, authenticated by `cert_pem`/`key_pem`.
pub fn client_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_client_auth_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn unreachable_node(host: &str, port: u16, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!(
        "error dialing backend: dial tcp {host}:{port}: {e}"
    ))
}

pub async fn upgrade(
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    target: &str,
    headers: &HeaderMap,
    client: hyper::upgrade::OnUpgrade,
) -> Result<Response, ApiError> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    .map_err(|_| unreachable_node(host, port, "i/o timeout"))?
    .map_err(|e| unreachable_node(host, port, e))?;
    let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| unreachable_node(host, port, e))?;
    let mut node = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable_node(host, port, e))?;
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    for (k, v) in headers {
        if FORWARDED.contains(&k.as_str()) {
            if let Ok(v) = v.to_str() {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
        }
    }
    req.push_str("\r\n");
    node.write_all(req.as_bytes())
        .await
        .map_err(|e| unreachable_node(host, port, e))?;
    // The node's answer head (and whatever followed it in the same reads).
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = node
            .read(&mut chunk)
            .await
            .map_err(|e| unreachable_node(host, port, e))?;
        if n == 0 {
            return Err(ApiError::internal("the node closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(ApiError::internal("the node's answer is too large"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let code: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ApiError::internal("malformed answer from the node"))?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() =
        StatusCode::from_u16(code).map_err(|_| ApiError::internal("bad status from the node"))?;
    let mut content_length = None;
    for l in lines.filter(|l| !l.is_empty()) {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            content_length = v.parse::<usize>().ok();
        }
        if matches!(k.as_str(), "content-length" | "transfer-encoding") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    let rest = buf[head_end..].to_vec();
    if code != 101 {
        // Not upgraded: the node's answer goes back as it is (kubectl falls back from
        // WebSocket to SPDY on such an answer).
        let mut body = rest;
        let want = content_length.unwrap_or(64 * 1024).min(1 << 20);
        while body.len() < want {
            let mut chunk = [0u8; 4096];
            match node.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        body.truncate(want);
        *resp.body_mut() = Body::from(body);
        return Ok(resp);
    }
    tokio::spawn(async move {
        let Ok(up) = client.await else { return };
        let mut up = TokioIo::new(up);
        if !rest.is_empty() && up.write_all(&rest).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut up, &mut node).await;
    });
    Ok(resp)
}
