//! Forwarding an admitted request: identity headers for the upstream, then
//! the buffered body over a pooled HTTP/1.1 connection (pingora's HTTP/1
//! client on connections from our per-thread pool, pool.rs).
//!
//! Why not pingora's own upstream phases: pingora 0.9.1 replays a body read
//! in `request_filter` only through its 64 KiB retry buffer, and never calls
//! `request_body_filter` for a larger body that was already consumed, so a
//! verified body above 64 KiB could not be handed over. Writing the request
//! here keeps "decide on the whole body, then send exactly those bytes" true
//! for every size.

mod pool;

use pool::Pool;

use std::collections::HashMap;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::v1::client::HttpSession as Http1Session;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
// What never crosses the proxy as the client sent it is what the verifier refuses to see covered
// (`dropped_in_transit`), so that what was signed arrives.
use zen_trust::signature::{connection_names, dropped_in_transit, trim_ows_bytes, HOP_BY_HOP};

use crate::config::Upstream;
use crate::decision::Admitted;
use crate::metrics::Metrics;
use crate::tls::identity::PeerIdentity;

pub const X_ZEN_SPIFFE_ID: &str = "x-zen-spiffe-id";
pub const X_ZEN_KEY_ID: &str = "x-zen-key-id";
pub const XFCC: &str = zen_trust::signature::XFCC;

pub struct Upstreams {
    /// name → (index for the pool, settings, pingora peer)
    peers: HashMap<String, (usize, Upstream, HttpPeer)>,
    transport: TransportConnector,
    pool: Pool,
    metrics: Metrics,
}

/// Why forwarding failed; `response_started` tells whether the client has
/// already seen a response header (then the only option is to close).
#[derive(Debug)]
pub struct ForwardError {
    pub detail: String,
    pub response_started: bool,
}

impl Upstreams {
    pub fn new(upstreams: &[Upstream], metrics: Metrics) -> Self {
        let peers = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let mut peer = HttpPeer::new(u.address, false, String::new());
                peer.options.connection_timeout = Some(u.connect_timeout);
                peer.options.total_connection_timeout = Some(u.connect_timeout);
                peer.options.read_timeout = Some(u.read_timeout);
                peer.options.write_timeout = Some(u.write_timeout);
                peer.options.idle_timeout = Some(u.idle_timeout);
                (u.name.clone(), (i, u.clone(), peer))
            })
            .collect();
        Upstreams {
            peers,
            transport: TransportConnector::new(None),
            pool: Pool::new(),
            metrics,
        }
    }

    /// Sends the admitted request and streams the response back.
    pub async fn forward(
        &self,
        session: &mut Session,
        admitted: &Admitted,
        peer_id: Option<&PeerIdentity>,
    ) -> Result<u16, ForwardError> {
        let Some((index, upstream, peer)) = self.peers.get(&admitted.route.upstream) else {
            // Config validation makes this unreachable; still fail closed.
            return Err(ForwardError {
                detail: format!("unknown upstream {:?}", admitted.route.upstream),
                response_started: false,
            });
        };
        let started = Instant::now();
        let res = self
            .exchange(session, *index, upstream, peer, admitted, peer_id)
            .await;
        self.metrics
            .upstream_seconds
            .with_label_values(&[upstream.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        res
    }

    async fn exchange(
        &self,
        session: &mut Session,
        index: usize,
        upstream: &Upstream,
        peer: &HttpPeer,
        admitted: &Admitted,
        peer_id: Option<&PeerIdentity>,
    ) -> Result<u16, ForwardError> {
        let body = &admitted.body;
        let fail = |stage: &str, e: &dyn std::fmt::Display| ForwardError {
            detail: format!("upstream {:?} {stage}: {e}", upstream.name),
            response_started: false,
        };
        // A pooled connection may have been closed by the upstream while idle;
        // then one fresh connection is tried, nothing having been answered yet
        // — for idempotent methods only (RFC 9110 §9.2.2): a POST may have
        // reached the upstream before the connection died, and sending it
        // again would be a replay the proxy itself made. Those get a probed
        // connection instead, and a 502 if it dies anyway.
        let idempotent = idempotent_method(&session.req_header().method);
        let mut attempt = 0;
        let mut up = loop {
            attempt += 1;
            // A retry always takes a fresh connection.
            let pooled = if attempt == 1 {
                self.pool.take(index, !idempotent)
            } else {
                None
            };
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(s) => s,
                None => self
                    .transport
                    .new_stream(peer)
                    .await
                    .map_err(|e| fail("connect", &e))?,
            };
            let mut up: HttpSession = HttpSession::H1(Http1Session::new_with_options(stream, peer));
            up.set_read_timeout(Some(upstream.read_timeout));
            up.set_write_timeout(Some(upstream.write_timeout));
            // Built per attempt (a retry is rare) rather than cloned for one.
            let req = upstream_request(session.req_header(), admitted, peer_id);
            let sent = async {
                up.write_request_header(Box::new(req)).await?;
                if !body.is_empty() {
                    up.write_request_body(body.clone(), true).await?;
                }
                up.finish_request_body().await?;
                up.read_response_header().await?;
                // Skip interim responses (100 Continue and friends).
                while up
                    .response_header()
                    .is_some_and(|h| h.status.is_informational() && h.status != 101)
                {
                    up.read_response_header().await?;
                }
                Ok::<(), Box<pingora_core::Error>>(())
            }
            .await;
            match sent {
                Ok(()) => break up,
                Err(e) if reused && idempotent && attempt == 1 && stale_connection(&e) => {
                    tracing::debug!(upstream = %upstream.name, error = %e, "stale pooled connection, retrying once");
                    up.shutdown().await;
                }
                Err(e) => {
                    up.shutdown().await;
                    return Err(fail("exchange", &e));
                }
            }
        };

        let Some(head) = up.response_header() else {
            return Err(fail("exchange", &"no response header"));
        };
        let mut resp: ResponseHeader = head.clone();
        let status = resp.status.as_u16();
        for h in HOP_BY_HOP {
            // Framing is re-done by pingora for the downstream protocol.
            if *h != "transfer-encoding" || session.is_http2() {
                resp.remove_header(*h);
            }
        }
        let end_now = up.response_done();
        session
            .write_response_header(Box::new(resp), end_now)
            .await
            .map_err(|e| ForwardError {
                detail: format!("downstream write: {e}"),
                response_started: true,
            })?;
        if !end_now {
            loop {
                let chunk = up.read_response_body().await.map_err(|e| ForwardError {
                    detail: format!("upstream {:?} body: {e}", upstream.name),
                    response_started: true,
                })?;
                let done = chunk.is_none() || up.response_done();
                session
                    .write_response_body(chunk, done)
                    .await
                    .map_err(|e| ForwardError {
                        detail: format!("downstream write: {e}"),
                        response_started: true,
                    })?;
                if done {
                    break;
                }
            }
        }
        if let HttpSession::H1(mut h1) = up {
            h1.respect_keepalive();
            let idle_for = pool::server_keepalive(
                h1.resp_header()
                    .and_then(|h| h.headers.get("keep-alive"))
                    .map(|v| v.as_bytes()),
            )
            .map_or(upstream.idle_timeout, |t| t.min(upstream.idle_timeout));
            if let Some(stream) = h1.reuse().await {
                self.pool.put(index, stream, idle_for);
            }
        }
        Ok(status)
    }
}

/// Methods a client may repeat with the same effect (RFC 9110 §9.2.2).
fn idempotent_method(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(m)
}

/// The request the upstream sees: client-supplied identity headers removed,
/// the proxy's own added, hop-by-hop fields dropped, framing from the body
/// actually held.
///
/// Built as `http::request::Parts` and converted once, not through
/// `RequestHeader`'s header methods: those turn every name into a title-case
/// copy and parse it back (two allocations and a parse per custom header, even
/// without a case map), and `build_no_case` parses the path again. The names
/// and values here are already parsed; cloning them shares their bytes.
pub fn upstream_request(
    orig: &RequestHeader,
    admitted: &Admitted,
    peer: Option<&PeerIdentity>,
) -> RequestHeader {
    // The fields the client's Connection header names (RFC 9110 §7.6.1),
    // compared without regard to case: nothing is lowercased or collected.
    let connection = orig.headers.get_all(header::CONNECTION);
    let named = |n: &str| {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| connection_names(v, n))
    };
    // Bounded: pingora parses at most 256 HTTP/1 header fields and a 64 KiB
    // HTTP/2 header list (≤ 2,048 fields), far below the 24,576 entries at
    // which `HeaderMap::append` would panic.
    let mut headers = HeaderMap::with_capacity(orig.headers.len() + 4);
    for (name, value) in orig.headers.iter() {
        let n = name.as_str();
        // Hop-by-hop, the mesh's identity fields (set below), and `Expect` (the whole body is
        // already here; the upstream must not wait for a go-ahead).
        if dropped_in_transit(n)
            // Re-derived from the body actually held, below.
            || n == "content-length"
            // The authority was decided on `Host`: a Connection option cannot take it away.
            || (n != "host" && named(n))
        {
            continue;
        }
        // No case map: lowercase names are valid HTTP/1.1 (RFC 9110 §5.1).
        headers.append(name.clone(), value.clone());
    }
    // Rare, and found without a lookup per field: some field arrived on several lines.
    if headers.keys_len() != headers.len() {
        join_repeated(&mut headers);
    }
    if !headers.contains_key(header::HOST) {
        if let Some(a) = orig
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, a);
        }
    }
    if !admitted.body.is_empty()
        || orig.headers.contains_key(header::CONTENT_LENGTH)
        || orig.headers.contains_key(header::TRANSFER_ENCODING)
    {
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(admitted.body.len()),
        );
    }
    if let Some(p) = peer {
        headers.insert(
            HeaderName::from_static(X_ZEN_SPIFFE_ID),
            p.spiffe_header.clone(),
        );
        headers.insert(HeaderName::from_static(XFCC), p.xfcc.clone());
    }
    if let Some(k) = admitted
        .key_id
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
    {
        headers.insert(HeaderName::from_static(X_ZEN_KEY_ID), k);
    }
    // Origin-form target whatever the client sent (an HTTP/2 request's URI
    // is absolute); HTTP/1.1, the only protocol spoken upstream.
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = orig.method.clone();
    parts.uri = orig
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.headers = headers;
    RequestHeader::from(parts)
}

/// Sends each field that arrived on several lines as one line: the signature covered its lines
/// joined (RFC 9421 §2.1: each value trimmed, then ", "), while an upstream may read only the
/// first line of a field it expects once. Cookies are joined with "; ", as RFC 9113 §8.2.3 asks
/// for HTTP/2's split `cookie` fields on their way to HTTP/1.1; a signature may not cover a
/// cookie sent on several lines (the verifier refuses it), so no signed value changes here.
fn join_repeated(headers: &mut HeaderMap) {
    let repeated: Vec<HeaderName> = headers
        .keys()
        .filter(|name| headers.get_all(*name).iter().nth(1).is_some())
        .cloned()
        .collect();
    for name in repeated {
        let separator: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
        let mut joined = Vec::new();
        for (i, value) in headers.get_all(&name).iter().enumerate() {
            if i > 0 {
                joined.extend_from_slice(separator);
            }
            joined.extend_from_slice(trim_ows_bytes(value.as_bytes()));
        }
        // Valid lines joined by visible separators stay a valid value.
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            headers.insert(name, value);
        }
    }
}

/// Whether an exchange on a reused connection failed the way a connection the upstream closed
/// while it sat idle in the pool fails: the write is refused, or the read finds the connection
/// closed or reset. Only then may an idempotent request go out again. A timeout is not one:
/// the upstream has the request and may still be acting on it.
fn stale_connection(e: &pingora_core::Error) -> bool {
    use pingora_core::ErrorType;
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
    )
}
