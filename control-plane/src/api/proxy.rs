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
    let websocket = resp
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    tokio::spawn(async move {
        let Ok(up) = client.await else { return };
        let up = TokioIo::new(up);
        if websocket {
            join_websocket(up, node, rest).await;
        } else {
            let mut up = up;
            if !rest.is_empty() && up.write_all(&rest).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut up, &mut node).await;
        }
    });
    Ok(resp)
}

/// The length of the first complete WebSocket frame in `buf`, if there is one.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let (ext, len) = match b1 & 0x7f {
        126 => (
            2,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            8,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (0, n as usize),
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let total = 2 + ext + mask + len;
    (buf.len() >= total).then_some(total)
}

/// Joins a WebSocket connection, writing the node's frames to the client one TLS record
/// each, as Go's proxy does: clients that poll the socket (the Python client) would not see
/// a second frame sitting decrypted in their TLS buffer.
async fn join_websocket<C, N>(up: C, node: N, mut pending: Vec<u8>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    N: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(up);
    let (mut node_rd, mut node_wr) = tokio::io::split(node);
    let upstream = async {
        let _ = tokio::io::copy(&mut client_rd, &mut node_wr).await;
        let _ = node_wr.shutdown().await;
    };
    let downstream = async {
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            while let Some(n) = frame_len(&pending) {
                if client_wr.write_all(&pending[..n]).await.is_err()
                    || client_wr.flush().await.is_err()
                {
                    return;
                }
                pending.drain(..n);
            }
            match node_rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
        if !pending.is_empty() {
            let _ = client_wr.write_all(&pending).await;
        }
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_frames_are_measured() {
        assert_eq!(frame_len(&[0x82, 0x01, 0x01]), Some(3));
        assert_eq!(frame_len(&[0x82, 0x02, 0x01]), None);
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(vec![0u8; 256]);
        assert_eq!(frame_len(&long), Some(260));
        assert_eq!(frame_len(&[0x82, 0x81, 1, 2, 3, 4, 9]), Some(7), "masked");
        assert_eq!(frame_len(&[0x82]), None);
    }
}
