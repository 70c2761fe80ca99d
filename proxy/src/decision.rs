//! The request decision, in one place and in phase order:
//! identity (still valid now) → route → SPIFFE rule → body (bounded) →
//! signature → key owner == peer → revocation → replay. Anything not admitted
//! is a `Refusal`. Replay comes last, after owner and revocation (issue 3
//! listed it before them), because it is the only check that writes: only an
//! otherwise admissible request may spend a nonce.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use zen_trust::replay::ReplayError;
use zen_trust::signature::{self, RequestParts, SignatureError, VerifyPolicy};
use zen_trust::UnixTime;

use crate::policy::routes::Hmac;
use crate::policy::{Listener, Route};
use crate::refusal::Refusal;
use crate::state::State;
use crate::tls::identity::{ConnIdentity, PeerIdentity};

/// What the decision needs to know about the request head.
pub struct RequestView<'a> {
    pub listener: Listener,
    /// Client certificates are mandatory for every request on this listener.
    pub identity_required: bool,
    pub method: &'a str,
    /// The authority of an absolute-form (HTTP/1.1) or `:authority` (HTTP/2) target, if any;
    /// the request's authority is decided from it and `Host` (see `request_authority`).
    pub uri_authority: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Whether the target's bytes were UTF-8 text. If not, `path` and `query` hold a lossy
    /// decoding, under which different bytes would verify alike: refused.
    pub target_is_text: bool,
    pub headers: &'a HeaderMap,
    /// `Content-Length`, when the client declared one.
    pub content_length: Option<usize>,
}

/// Source of request body chunks (`None` = end of body).
#[async_trait]
pub trait BodySource: Send {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String>;
}

/// A request that may go to its upstream, with the exact bytes to send.
#[derive(Debug)]
pub struct Admitted {
    pub route: Arc<Route>,
    pub key_id: Option<String>,
    pub body: Bytes,
}

impl From<SignatureError> for Refusal {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::Missing => Refusal::SignatureMissing,
            SignatureError::Malformed { detail } => Refusal::SignatureMalformed { detail },
            SignatureError::KeyUnknown => Refusal::KeyUnknown,
            SignatureError::KeyExpired => Refusal::KeyExpired,
            SignatureError::KeyRevoked => Refusal::KeyRevoked,
            SignatureError::Stale { detail } => Refusal::SignatureStale { detail },
            SignatureError::DigestMismatch => Refusal::DigestMismatch,
            SignatureError::Invalid => Refusal::SignatureInvalid,
        }
    }
}

impl From<ReplayError> for Refusal {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replay => Refusal::Replay,
            ReplayError::Full => Refusal::ReplayCacheFull,
        }
    }
}

/// `clock` is read when the head is decided on and again once the body is in:
/// the signature's window and the replay cache judge the request as of its
/// last byte, so a body that takes longer than the window to arrive cannot
/// carry a signature past it (or past its replay entry).
pub async fn decide(
    state: &State,
    policy: &VerifyPolicy,
    conn: Option<&ConnIdentity>,
    req: &RequestView<'_>,
    body: &mut dyn BodySource,
    clock: &(dyn Fn() -> UnixTime + Sync),
) -> Result<Admitted, Refusal> {
    let now = clock();
    // 1. Identity, established once at handshake completion.
    let peer: Option<&PeerIdentity> = match conn {
        // A connection outlives its handshake: its chain must still be valid now, and still
        // trusted by the bundles as they are now. If not, refused; the refusal closes it.
        Some(ConnIdentity::Peer(p)) if !p.holds(now) => return Err(Refusal::ClientCertRequired),
        Some(ConnIdentity::Peer(p)) => Some(p),
        Some(ConnIdentity::Refused(r)) => return Err(r.clone()),
        // No identity carried with the connection (tls/stream.rs) means none
        // was decided: treat it like a missing certificate (fail closed).
        Some(ConnIdentity::Anonymous) | None => None,
    };
    if peer.is_none() && req.identity_required {
        return Err(Refusal::ClientCertRequired);
    }

    // The authority the signature's "@authority" and "@target-uri" are rebuilt from, and the one
    // the upstream is told: it must be unambiguous. The target must be the bytes received.
    let authority = request_authority(req)?;
    if !req.target_is_text {
        return Err(Refusal::RequestMalformed {
            detail: "the request target is not UTF-8 text".to_owned(),
        });
    }

    // 2. Route.
    let routes = state.routes.load();
    let Some(m) = routes.find(req.listener, req.method, req.path) else {
        return Err(Refusal::NoRoute);
    };
    let route = m.route.clone();

    // 3. SPIFFE rule.
    if !route.spiffe.is_empty() {
        let Some(p) = peer else {
            return Err(Refusal::SpiffeForbidden {
                detail: format!("route {:?} requires a client SVID", route.name),
            });
        };
        let id = p.spiffe_id.as_str();
        if !route.spiffe.iter().any(|pat| pat.matches(id, &m.vars)) {
            return Err(Refusal::SpiffeForbidden {
                detail: format!("{id} may not call route {:?}", route.name),
            });
        }
    }
    // Guards are short-lived by design: release before awaiting the body.
    drop(m);
    drop(routes);

    // 4. Body, read whole and bounded before any upstream is chosen.
    let body = read_bounded(body, req.content_length, route.max_body_bytes).await?;
    // The rest is judged as of the body's last byte, which may have been long in coming (even an
    // empty one: a chunked body's last chunk can be held back). So is the certificate.
    let now = clock();
    if peer.is_some_and(|p| !p.holds(now)) {
        return Err(Refusal::ClientCertRequired);
    }

    // 5. Signature.
    let keys = (route.hmac == Hmac::Required).then(|| state.keys.load());
    let verified = match &keys {
        Some(keys) => {
            let parts = RequestParts {
                method: req.method,
                authority,
                path: req.path,
                query: req.query,
                headers: req.headers,
            };
            let body_ref = (!body.is_empty()).then_some(&body[..]);
            Some(signature::verify(policy, &parts, body_ref, &***keys, now)?)
        }
        None => None,
    };

    // 6. Key owner == peer.
    if let Some(v) = &verified {
        match peer {
            Some(p) if v.key.owner() == &p.spiffe_id => {}
            Some(p) => {
                return Err(Refusal::IdentityMismatch {
                    detail: format!(
                        "key {:?} belongs to {}, not to the client certificate's {}",
                        v.key_id(),
                        v.key.owner(),
                        p.spiffe_id
                    ),
                })
            }
            // hmac routes live on the agent listener, where a peer is mandatory.
            None => return Err(Refusal::ClientCertRequired),
        }
    }

    // 7. Revocation.
    if let Some(p) = peer {
        if state
            .revocations
            .load()
            .is_revoked(p.spiffe_id.as_str(), &p.serial_hex)
        {
            return Err(Refusal::IdentityRevoked);
        }
    }

    // 8. Replay, last: the cache is written only for a request that passed every other check,
    // so a peer holding another agent's signed request cannot spend its nonce, and a revoked or
    // mismatched peer cannot fill the cache. (The entries gauge is set when /metrics is scraped.)
    let mut key_id = None;
    if let Some(v) = &verified {
        state
            .replay
            .insert_token(v.key_id(), v.replay_token(), v.age_out, now)?;
        key_id = Some(v.key_id().to_string());
    }

    Ok(Admitted {
        route,
        key_id,
        body,
    })
}

/// The request's authority: its one `Host` field, or the target's authority when there is no
/// `Host` (HTTP/2 may send only `:authority`). Refused when there is neither (a signature over
/// an empty authority would hold for any host), or when it is ambiguous: more than one `Host`,
/// a `Host` that is not visible ASCII, or a `Host` that differs from the target's authority —
/// the signature would cover one while the upstream may act on another.
fn request_authority<'a>(req: &RequestView<'a>) -> Result<&'a str, Refusal> {
    let malformed = |detail: &str| Refusal::RequestMalformed {
        detail: detail.to_owned(),
    };
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(
            h.to_str()
                .map_err(|_| malformed("the Host header is not visible ASCII"))?,
        ),
        (Some(_), Some(_)) => return Err(malformed("more than one Host header")),
    };
    match (host, req.uri_authority) {
        (None | Some(""), None) => Err(malformed(
            "the request names no authority: no Host header, and none in its target",
        )),
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => Err(malformed(
            "the Host header differs from the request target's authority",
        )),
        (Some(h), _) => Ok(h),
        (None, Some(a)) => Ok(a),
    }
}

async fn read_bounded(
    src: &mut dyn BodySource,
    declared: Option<usize>,
    limit: usize,
) -> Result<Bytes, Refusal> {
    if declared.is_some_and(|n| n > limit) {
        return Err(Refusal::BodyTooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = src
        .next_chunk()
        .await
        .map_err(|detail| Refusal::BodyUnreadable { detail })?
    {
        if buf.len() + chunk.len() > limit {
            return Err(Refusal::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(Vec<Bytes>);

    #[async_trait]
    impl BodySource for Chunks {
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
            Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
        }
    }

    #[test]
    fn the_authority_must_be_unambiguous() {
        let view = |headers: &HeaderMap, uri_authority: Option<&'static str>| {
            let v = RequestView {
                listener: Listener::Agent,
                identity_required: true,
                method: "GET",
                uri_authority,
                path: "/",
                query: None,
                target_is_text: true,
                headers,
                content_length: None,
            };
            request_authority(&v)
                .map(str::to_owned)
                .map_err(|r| r.code())
        };
        let mut one = HeaderMap::new();
        one.insert(http::header::HOST, "api.zen.local".parse().unwrap());
        assert_eq!(view(&one, None), Ok("api.zen.local".into()));
        assert_eq!(
            view(&one, Some("API.zen.local")),
            Ok("api.zen.local".into())
        );
        assert_eq!(
            view(&HeaderMap::new(), Some("h2.zen.local")),
            Ok("h2.zen.local".into())
        );

        let refused = Err("request_malformed");
        assert_eq!(view(&HeaderMap::new(), None), refused);
        let mut empty = HeaderMap::new();
        empty.insert(http::header::HOST, "".parse().unwrap());
        assert_eq!(view(&empty, None), refused);
        assert_eq!(view(&one, Some("other.zen.local")), refused);
        let mut two = one.clone();
        two.append(http::header::HOST, "evil.zen.local".parse().unwrap());
        assert_eq!(view(&two, None), refused);
        let mut binary = HeaderMap::new();
        binary.insert(
            http::header::HOST,
            http::HeaderValue::from_bytes(b"api\xff").unwrap(),
        );
        assert_eq!(view(&binary, None), refused);
    }

    #[tokio::test]
    async fn bounded_body_at_and_over_limit() {
        let mut at = Chunks(vec![Bytes::from(vec![1u8; 6]), Bytes::from(vec![2u8; 4])]);
        assert_eq!(read_bounded(&mut at, None, 10).await.unwrap().len(), 10);
        let mut over = Chunks(vec![Bytes::from(vec![1u8; 6]), Bytes::from(vec![2u8; 5])]);
        assert_eq!(
            read_bounded(&mut over, None, 10).await.unwrap_err(),
            Refusal::BodyTooLarge { limit: 10 }
        );
        let mut declared = Chunks(vec![]);
        assert_eq!(
            read_bounded(&mut declared, Some(11), 10).await.unwrap_err(),
            Refusal::BodyTooLarge { limit: 10 }
        );
    }
}
