//! A signing HTTPS client for the mesh: every request carries a fresh zen-hmac-v1 signature
//! (DESIGN.md §3) over method, authority, path, query and — when there is a body — its Content-Digest.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zen_trust::secret::Secret;
use zen_trust::signature::{self, RequestParts, SignOptions};
use zen_trust::time::UnixTime;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("URL {0:?} is not an https:// URL with a host")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("response from {addr} is larger than {limit} bytes; refused")]
    ResponseTooLarge { addr: String, limit: usize },
    #[error("reading the response body from {addr} failed: {detail}")]
    Body { addr: String, detail: String },
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error(transparent)]
    Sign(#[from] signature::SignError),
}

/// The most a response body may hold (desired state, enrollment bundles);
/// a larger one is refused rather than buffered without bound.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The key a request is signed with.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub key_id: String,
    pub secret: Arc<Secret>,
}

#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The refusal code of a JSON error body (`{"error":"<code>",…}`), if it is one.
    pub fn error_code(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        value.get("error")?.as_str().map(str::to_owned)
    }
}

/// Sends one request on a fresh TLS connection. `key` = None sends it unsigned.
pub async fn send(
    tls: Arc<ClientConfig>,
    method: Method,
    url: &str,
    extra_headers: &[(&str, &str)],
    body: Option<Bytes>,
    key: Option<&SigningKey>,
) -> Result<Response, ClientError> {
    let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
    let (Some("https"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ClientError::BadUrl(url.into()));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let addr = format!("{}:{port}", authority.host());
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|_| ClientError::BadUrl(url.into()))?;

    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/"))
        .header(http::header::HOST, authority.as_str());
    for (name, value) in extra_headers {
        builder = builder.header(*name, *value);
    }
    if let Some(key) = key {
        let empty = HeaderMap::new();
        let parts = RequestParts {
            method: method.as_str(),
            authority: authority.as_str(),
            path: uri.path(),
            query: uri.query(),
            headers: &empty,
        };
        let opts = SignOptions::new(key.key_id.clone(), &key.secret, UnixTime::now());
        let signed = signature::sign(&parts, body.as_deref(), &opts)?;
        builder = builder
            .header("signature-input", signed.signature_input)
            .header("signature", signed.signature);
        if let Some(digest) = signed.content_digest {
            builder = builder.header("content-digest", digest);
        }
    }
    if body.is_some() {
        builder = builder.header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let request = builder.body(Full::new(body.unwrap_or_default()))?;

    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let tls_stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|source| ClientError::Handshake {
            addr: addr.clone(),
            source,
        })?;
    let http_err = |source| ClientError::Http {
        addr: addr.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream))
        .await
        .map_err(http_err)?;
    let conn = tokio::spawn(conn);
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => {
            // When the connection dies under the request (e.g. a TLS 1.3 server refuses our client
            // certificate with an alert after our side of the handshake is done), the request only
            // learns it was canceled; the connection's own error says why.
            let cause = match tokio::time::timeout(std::time::Duration::from_secs(1), conn).await {
                Ok(Ok(Err(conn_err))) => conn_err,
                _ => e,
            };
            return Err(http_err(cause));
        }
    };
    let (head, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ClientError::ResponseTooLarge {
                    addr: addr.clone(),
                    limit: MAX_RESPONSE_BYTES,
                }
            } else {
                ClientError::Body {
                    addr: addr.clone(),
                    detail: e.to_string(),
                }
            }
        })?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS server on 127.0.0.1 that answers one request with a body of `len` bytes.
    async fn server(len: usize) -> (String, Arc<ClientConfig>) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .unwrap();
        let client_cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tls.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            let _ = tls.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if tls.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
            let _ = tls.shutdown().await;
        });
        (
            format!("https://127.0.0.1:{port}/agent/v1/x"),
            Arc::new(client_cfg),
        )
    }

    #[tokio::test]
    async fn response_bodies_are_bounded() {
        let (url, tls) = server(1000).await;
        let resp = send(tls, Method::GET, &url, &[], None, None).await.unwrap();
        assert_eq!(resp.body.len(), 1000);

        let (url, tls) = server(MAX_RESPONSE_BYTES + 1).await;
        let err = send(tls, Method::GET, &url, &[], None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::ResponseTooLarge { limit, .. } if limit == MAX_RESPONSE_BYTES),
            "{err}"
        );
    }
}
