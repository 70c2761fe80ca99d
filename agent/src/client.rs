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
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error(transparent)]
    Sign(#[from] signature::SignError),
}

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
    let body = body.collect().await.map_err(http_err)?.to_bytes();
    drop(sender);
    conn.abort();
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body,
    })
}
