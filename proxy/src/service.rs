//! The pingora `ProxyHttp` implementation, one instance per listener. Reads
//! top to bottom in phase order: request_filter (decide, then forward) →
//! logging. No upstream phase of pingora runs: see `forward` for why.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{ProxyHttp, Session};
use zen_trust::signature::VerifyPolicy;
use zen_trust::UnixTime;

use crate::decision::{self, BodySource, RequestView};
use crate::forward::Upstreams;
use crate::policy::{Listener, Route};
use crate::refusal::Refusal;
use crate::state::State;
use crate::tls::{self, identity::ConnIdentity};

pub struct ZenProxy {
    pub listener: Listener,
    pub identity_required: bool,
    pub state: Arc<State>,
    pub upstreams: Arc<Upstreams>,
    pub policy: VerifyPolicy,
}

pub struct RequestCtx {
    started: Instant,
    /// The admitted request's route (an `Arc` of the table's own: no copy of its name per request).
    route: Option<Arc<Route>>,
    status: u16,
}

/// Reads the downstream body for the decision.
struct DownstreamBody<'s> {
    session: &'s mut Session,
    /// The client sent `Expect: 100-continue` and has not been answered yet.
    expects_continue: bool,
    /// The body must be in by `deadline`: its head's arrival plus `window`
    /// ([`body_window`]); none if that is beyond what the clock can hold.
    deadline: Option<Instant>,
    window: std::time::Duration,
}

/// How long a body may take to arrive after its head. pingora bounds each
/// read (60 s) but not the whole body, so a client could hold a connection
/// and a growing buffer for as long as it trickled bytes. The signature is
/// judged once the body is in; this bounds how late that may be by the
/// signature window itself (`max_age + max_skew`, 305 s by default), on
/// unsigned routes too. Saturating: a window too large for the clock is no
/// deadline.
fn body_window(policy: &VerifyPolicy) -> std::time::Duration {
    policy.max_age.saturating_add(policy.max_skew)
}

#[async_trait]
impl BodySource for DownstreamBody<'_> {
    async fn next_chunk(&mut self) -> std::result::Result<Option<Bytes>, String> {
        if std::mem::take(&mut self.expects_continue) {
            // Only reached once identity, route and SPIFFE rule have passed: a
            // refused client never gets the go-ahead to upload.
            self.session
                .write_continue_response()
                .await
                .map_err(|e| e.to_string())?;
        }
        // tokio's Timeout polls the read first and arms its timer only if the read waits.
        let chunk = match self.deadline {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline.into(), self.session.read_request_body())
                    .await
                {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        return Err(format!(
                            "the body did not arrive within {} s of its head (the signature \
                             window, max_age + max_skew)",
                            self.window.as_secs()
                        ))
                    }
                }
            }
            None => self.session.read_request_body().await,
        };
        chunk.map_err(|e| e.to_string())
    }
}

impl ZenProxy {
    async fn refuse(&self, session: &mut Session, ctx: &mut RequestCtx, refusal: &Refusal) {
        self.state
            .metrics
            .refusals
            .with_label_values(&[refusal.code()])
            .inc();
        ctx.status = refusal.status();
        let body = refusal.body();
        // An unread or partly read body cannot be skipped safely: close.
        if !session.is_body_done()
            || matches!(refusal, Refusal::TlsVersion | Refusal::ClientCertRequired)
        {
            session.set_keepalive(None);
        }
        let mut resp = ResponseHeader::build(refusal.status(), Some(3)).expect("valid status");
        let _ = resp.insert_header("content-type", "application/json");
        let _ = resp.insert_header("content-length", body.len().to_string());
        if let Err(e) = session.write_response_header(Box::new(resp), false).await {
            tracing::debug!(error = %e, "refusal header not delivered");
            return;
        }
        if let Err(e) = session.write_response_body(Some(body), true).await {
            tracing::debug!(error = %e, "refusal body not delivered");
        }
    }
}

#[async_trait]
impl ProxyHttp for ZenProxy {
    type CTX = RequestCtx;

    /// No downstream modules. pingora's default is its response-compression
    /// module at level 0, i.e. disabled: two allocations and a round of filter
    /// calls per request that do nothing. Bodies go down as the upstream sent
    /// them.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            status: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // The identity was computed at handshake completion (tls/stream.rs);
        // hold its Arc so it can be borrowed while the session reads the body.
        let carried = tls::stream::identity_digest(session.digest());
        let conn = carried.as_deref().and_then(tls::stream::identity);
        // The decision reads the head while its body source holds the session
        // mutably, so it reads a copy: of the parts it looks at, not of
        // pingora's header-case map as `RequestHeader::clone` would.
        let req = session.req_header();
        let (method, uri, headers) = (req.method.clone(), req.uri.clone(), req.headers.clone());
        let content_length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        let view = RequestView {
            listener: self.listener,
            identity_required: self.identity_required,
            method: method.as_str(),
            uri_authority: uri.authority().map(|a| a.as_str()),
            path: uri.path(),
            query: uri.query(),
            target_is_text: req.raw_path_is_utf8(),
            headers: &headers,
            content_length,
        };
        let window = body_window(&self.policy);
        let decided = decision::decide(
            &self.state,
            &self.policy,
            conn,
            &view,
            &mut DownstreamBody {
                expects_continue: headers
                    .get(http::header::EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
                deadline: ctx.started.checked_add(window),
                window,
                session,
            },
            &UnixTime::now,
        )
        .await;
        let admitted = match decided {
            Ok(a) => a,
            Err(refusal) => {
                self.refuse(session, ctx, &refusal).await;
                return Ok(true);
            }
        };
        ctx.route = Some(admitted.route.clone());
        let peer = match conn {
            Some(ConnIdentity::Peer(p)) => Some(p),
            _ => None,
        };
        match self.upstreams.forward(session, &admitted, peer).await {
            Ok(status) => ctx.status = status,
            Err(e) if !e.response_started => {
                tracing::warn!(route = %admitted.route.name, error = %e.detail, "upstream unavailable");
                self.refuse(
                    session,
                    ctx,
                    // The specifics (addresses, errno) stay in the log.
                    &Refusal::UpstreamUnavailable {
                        detail: format!("upstream {:?} is unavailable", admitted.route.upstream),
                    },
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(route = %admitted.route.name, error = %e.detail, "response aborted");
                session.set_keepalive(None);
                return Err(Error::explain(ErrorType::WriteError, e.detail));
            }
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // request_filter always answers; reaching this would bypass the decision.
        Err(Error::explain(
            ErrorType::InternalError,
            "zen-proxy forwards from request_filter only",
        ))
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let m = &self.state.metrics;
        // The code's digits without formatting them per request; 0 = no response was sent.
        let code = http::StatusCode::from_u16(ctx.status).ok();
        let status = code.as_ref().map_or("0", http::StatusCode::as_str);
        m.requests
            .with_label_values(&[
                self.listener.as_str(),
                ctx.route.as_ref().map_or("-", |r| r.name.as_str()),
                status,
            ])
            .inc();
        m.request_seconds
            .with_label_values(&[self.listener.as_str()])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}
