//! The HTTP/1.1-over-mTLS client: connections the scenarios open and keep
//! themselves (tokio-rustls + hyper's low-level http1 client), and requests
//! signed with zen-hmac-v1 on the client's own cores, one fresh nonce each.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zen_trust::signature::{sign, RequestParts, SignOptions};
use zen_trust::time::UnixTime;

use crate::identity::Identity;

/// Where requests go: the parsed `--url`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    /// `host:port` as sent in `Host` (and signed as `@authority`).
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    /// `server_name` overrides the name checked against the server's
    /// certificate (default: the URL's host).
    pub fn parse(url: &str, server_name: Option<&str>) -> Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("--url {url:?}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--url {url:?}: only https:// URLs are supported (the enforcement path is mTLS)");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--url {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let addr = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}:{port}"))?
            .next()
            .with_context(|| format!("{host}:{port} resolves to no address"))?;
        let name = server_name.unwrap_or(host).to_owned();
        let server_name = ServerName::try_from(name.clone())
            .with_context(|| format!("{name:?} is not a valid TLS server name"))?;
        Ok(Target {
            addr,
            server_name,
            authority: authority.as_str().to_ascii_lowercase(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
        })
    }
}

/// Why an exchange failed below HTTP. `kind()` is the report's error label.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out")]
    Timeout,
    #[error("building the request: {0}")]
    Request(String),
}

impl TransportError {
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Connect(_) => "connect",
            TransportError::Tls(_) => "tls",
            TransportError::Http(_) => "http",
            TransportError::Timeout => "timeout",
            TransportError::Request(_) => "request",
        }
    }
}

/// One kept-alive HTTP/1.1 connection over mTLS.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    /// Serial (hex) of the server's leaf certificate, when asked for.
    pub server_serial: Option<String>,
}

pub async fn connect(
    target: &Target,
    tls: Arc<ClientConfig>,
    want_serial: bool,
) -> Result<Conn, TransportError> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(TransportError::Connect)?;
    // Small request/response pairs: Nagle would add tens of ms.
    tcp.set_nodelay(true).map_err(TransportError::Connect)?;
    let stream = TlsConnector::from(tls)
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(TransportError::Tls)?;
    let server_serial = if want_serial {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, cert)| {
                cert.raw_serial_as_string()
                    .replace(':', "")
                    .to_ascii_lowercase()
            })
    } else {
        None
    };
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    // The driver ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn {
        sender,
        server_serial,
    })
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    /// The refusal code of a DESIGN §6 JSON error body, if the body is one.
    pub code: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl Conn {
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Outcome, TransportError> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let code = (status >= 400)
            .then(|| serde_json::from_slice::<ErrorBody>(&body).ok())
            .flatten()
            .map(|b| b.error);
        Ok(Outcome { status, code })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// The signature covers only derived components (and Content-Digest, which
/// the signer supplies itself), so no other header is looked up.
const NO_HEADERS: [(&str, &str); 0] = [];

/// A request with its zen-hmac-v1 headers, kept whole so it can be sent
/// again byte for byte (the `replay` refusal).
#[derive(Debug, Clone)]
pub struct SignedRequest {
    method: Method,
    path_and_query: String,
    signature_input: String,
    signature: String,
    content_digest: Option<String>,
    body: Bytes,
}

impl SignedRequest {
    /// Signs `method path[?query]` with `body` as `identity`, created now,
    /// with a fresh random nonce.
    pub fn new(
        target: &Target,
        path: &str,
        method: &Method,
        body: &Bytes,
        identity: &Identity,
    ) -> Result<SignedRequest> {
        let query = target.query.as_deref();
        let parts = RequestParts {
            method: method.as_str(),
            authority: &target.authority,
            path,
            query,
            headers: &NO_HEADERS,
        };
        let opts = SignOptions::new(identity.key_id.as_str(), &identity.secret, UnixTime::now());
        let body_ref = (!body.is_empty()).then_some(&body[..]);
        let signed = sign(&parts, body_ref, &opts).context("signing a request")?;
        let path_and_query = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        Ok(SignedRequest {
            method: method.clone(),
            path_and_query,
            signature_input: signed.signature_input,
            signature: signed.signature,
            content_digest: signed.content_digest,
            body: body.clone(),
        })
    }

    /// Changes one character of the MAC: a well-formed signature that does
    /// not verify (`signature_invalid`).
    pub fn corrupt_signature(&mut self) {
        // "sig1=:<base64>:" — the first base64 character carries 6 whole bits.
        let at = self.signature.find(":").map_or(0, |i| i + 1);
        if let Some(c) = self.signature.get(at..=at) {
            let replacement = if c == "A" { "B" } else { "A" };
            self.signature.replace_range(at..=at, replacement);
        }
    }

    pub fn to_http(&self, target: &Target) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.path_and_query.as_str())
            .header(HOST, HeaderValue::from_str(&target.authority)?)
            .header("signature-input", self.signature_input.as_str())
            .header("signature", self.signature.as_str());
        if let Some(d) = &self.content_digest {
            b = b
                .header("content-digest", d.as_str())
                .header(CONTENT_TYPE, "application/octet-stream");
        }
        b.body(Full::new(self.body.clone()))
            .context("building the HTTP request")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_keeps_authority_path_and_query() {
        let t = Target::parse("https://127.0.0.1:9443/a/b?x=1", None).unwrap();
        assert_eq!(t.authority, "127.0.0.1:9443");
        assert_eq!(t.path, "/a/b");
        assert_eq!(t.query.as_deref(), Some("x=1"));
        assert!(Target::parse("http://127.0.0.1:1/", None).is_err());
    }
}
