//! The refusal matrix: one test per DESIGN.md §6 code plus the issue's extra
//! cases. Each asserts status, JSON code, the refusal metric and that the
//! recording upstream got nothing.

use std::sync::Arc;

use rustls::ClientConfig;
use zen_trust::{Secret, UnixTime};

use super::client::{client_config, once, Req};
use super::harness::{Env, Opts, A1, BULK_MAX, BULK_PATH};
use super::pki::LeafOpts;

const DS_C1: &str = "/agent/v1/clusters/c1/desired-state";

impl Env {
    async fn refused(&self, req: &Req, status: u16, code: &str) -> super::client::Resp {
        self.assert_refused(self.a1.cfg.clone(), self.agent_addr, req, status, code)
            .await
    }

    /// The TLS handshake (or the first read, where TLS 1.3 reports client
    /// auth failures) fails and nothing reaches the upstream.
    async fn handshake_refused(
        &self,
        cfg: Arc<ClientConfig>,
        addr: std::net::SocketAddr,
        result: Option<&str>,
    ) -> String {
        let series = result.map(|r| {
            format!("zen_proxy_tls_handshakes_total{{listener=\"agent\",result=\"{r}\"}}")
        });
        let before = match &series {
            Some(s) => self.metric(s).await,
            None => 0.0,
        };
        let req = Req::get(DS_C1).signed(&self.a1.key_id, &self.a1.secret);
        let err = match once(addr, cfg, &req).await {
            Ok(res) => panic!("handshake should fail, got {res:?}"),
            Err(err) => err.to_string(),
        };
        assert_eq!(self.upstream.bytes(), 0);
        if let Some(s) = series {
            assert_eq!(self.metric(&s).await, before + 1.0, "{s}");
        }
        err
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_cert_required_no_client_cert_fails_the_handshake() {
    let env = Env::start().await;
    // rustls ends this handshake without asking the verifier: it shows as a
    // handshake started with no verdict.
    let started = "zen_proxy_tls_handshakes_started_total{listener=\"agent\"}";
    let ok = "zen_proxy_tls_handshakes_total{listener=\"agent\",result=\"ok\"}";
    // The harness's readiness probe (a bare TCP connect to the agent port) is
    // counted when a worker gets round to accepting it: wait for that first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while env.metric(started).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "probe never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (started_before, ok_before) = (env.metric(started).await, env.metric(ok).await);
    let err = env
        .handshake_refused(env.anon_cfg.clone(), env.agent_addr, None)
        .await;
    // The client is told why: rustls's alert reaches it before the close.
    assert!(err.contains("CertificateRequired"), "{err}");
    assert_eq!(env.metric(started).await, started_before + 1.0, "{started}");
    assert_eq!(env.metric(ok).await, ok_before, "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_from_another_trust_domains_ca_claiming_our_domain_fails_the_handshake() {
    let env = Env::start().await;
    let forged = env.other_ca.leaf(A1, LeafOpts::default());
    let cfg = client_config(&env.ca.pem(), Some(&forged), false);
    env.handshake_refused(cfg, env.agent_addr, Some("chain_invalid"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_cert_fails_the_handshake() {
    let env = Env::start().await;
    let leaf = env.ca.leaf(
        A1,
        LeafOpts {
            expired: true,
            ..LeafOpts::default()
        },
    );
    let cfg = client_config(&env.ca.pem(), Some(&leaf), false);
    env.handshake_refused(cfg, env.agent_addr, Some("svid_invalid"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_cert_used_as_leaf_fails_the_handshake() {
    let env = Env::start().await;
    let leaf = env.ca.leaf(
        A1,
        LeafOpts {
            is_ca: true,
            ..LeafOpts::default()
        },
    );
    let cfg = client_config(&env.ca.pem(), Some(&leaf), false);
    env.handshake_refused(cfg, env.agent_addr, Some("svid_invalid"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_uri_sans_fail_the_handshake() {
    let env = Env::start().await;
    let leaf = env.ca.leaf(
        A1,
        LeafOpts {
            extra_uri: Some("spiffe://zen.local/cluster/c2/agent/b2".into()),
            ..LeafOpts::default()
        },
    );
    let cfg = client_config(&env.ca.pem(), Some(&leaf), false);
    env.handshake_refused(cfg, env.agent_addr, Some("svid_invalid"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls12_is_refused_unless_opted_in() {
    let env = Env::start().await;
    let cfg = client_config(&env.ca.pem(), Some(&env.a1.leaf), true);
    env.handshake_refused(cfg.clone(), env.agent_addr, Some("tls_version"))
        .await;

    let env12 = Env::start_with(Opts {
        allow_tls12: true,
        ..Opts::default()
    })
    .await;
    let cfg = client_config(&env12.ca.pem(), Some(&env12.a1.leaf), true);
    let req = Req::get(DS_C1).signed(&env12.a1.key_id, &env12.a1.secret);
    assert_eq!(once(env12.agent_addr, cfg, &req).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_forbidden_agent_of_c1_asking_for_c2() {
    let env = Env::start().await;
    let req =
        Req::get("/agent/v1/clusters/c2/desired-state").signed(&env.a1.key_id, &env.a1.secret);
    env.refused(&req, 403, "spiffe_forbidden").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_forbidden_proxy_route_for_an_agent() {
    let env = Env::start().await;
    env.refused(&Req::get("/proxy/v1/state"), 403, "spiffe_forbidden")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_missing() {
    let env = Env::start().await;
    env.refused(&Req::get(DS_C1), 401, "signature_missing")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_malformed() {
    let env = Env::start().await;
    let req = Req::get(DS_C1)
        .header("signature-input", "sig1=(\"@method\";keyid=\"k-a1\"")
        .header("signature", "sig1=:AAAA:");
    env.refused(&req, 400, "signature_malformed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_unknown() {
    let env = Env::start().await;
    let req = Req::get(DS_C1).signed("k-nope", &Secret::generate());
    env.refused(&req, 401, "key_unknown").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_expired() {
    let env = Env::start().await;
    let req = Req::get(DS_C1).signed("k-a1-expired", &env.a1_expired_secret);
    env.refused(&req, 401, "key_expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_revoked() {
    let env = Env::start().await;
    let req = Req::get(DS_C1).signed("k-a1-revoked", &env.a1_revoked_secret);
    env.refused(&req, 401, "key_revoked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_stale() {
    let env = Env::start().await;
    let old = UnixTime(UnixTime::now().0 - 3600);
    let req = Req::get(DS_C1).signed_at(&env.a1.key_id, &env.a1.secret, old, None);
    env.refused(&req, 401, "signature_stale").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_invalid_wrong_secret() {
    let env = Env::start().await;
    let req = Req::get(DS_C1).signed(&env.a1.key_id, &Secret::generate());
    env.refused(&req, 401, "signature_invalid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_mismatch() {
    let env = Env::start().await;
    let mut req = Req::post("/agent/v1/heartbeat", b"{\"ok\":1}".to_vec())
        .signed(&env.a1.key_id, &env.a1.secret);
    req.body = b"{\"ok\":2}".to_vec();
    env.refused(&req, 401, "digest_mismatch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_body_with_bad_digest() {
    let env = Env::start().await;
    let mut req = Req::post(BULK_PATH, vec![7u8; 90_000]).signed(&env.a1.key_id, &env.a1.secret);
    req.body[45_000] = 8;
    req.chunked = true;
    env.refused(&req, 401, "digest_mismatch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_of_an_accepted_request() {
    let env = Env::start().await;
    let req =
        Req::post("/agent/v1/heartbeat", b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &req).await.unwrap().status, 200);
    let before = env.refusals("replay").await;
    let bytes = env.upstream.bytes();
    let resp = env.agent(&env.a1, &req).await.unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(resp.error_code(), "replay");
    assert_eq!(env.refusals("replay").await, before + 1.0);
    assert_eq!(env.upstream.bytes(), bytes);
    assert_eq!(env.upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_mismatch_key_owned_by_a_different_spiffe_id() {
    let env = Env::start().await;
    let req =
        Req::post("/agent/v1/heartbeat", b"{}".to_vec()).signed(&env.b2.key_id, &env.b2.secret);
    env.refused(&req, 403, "identity_mismatch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_revoked() {
    let env = Env::start().await;
    let req =
        Req::post("/agent/v1/heartbeat", b"{}".to_vec()).signed(&env.r1.key_id, &env.r1.secret);
    env.assert_refused(
        env.r1.cfg.clone(),
        env.agent_addr,
        &req,
        403,
        "identity_revoked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn body_one_byte_over_the_limit() {
    let env = Env::start().await;
    let req = Req::post(BULK_PATH, vec![1u8; BULK_MAX + 1]).signed(&env.a1.key_id, &env.a1.secret);
    env.refused(&req, 413, "body_too_large").await;
    // Chunked (no declared length) is bounded while reading.
    let mut req =
        Req::post(BULK_PATH, vec![1u8; BULK_MAX + 1]).signed(&env.a1.key_id, &env.a1.secret);
    req.chunked = true;
    env.refused(&req, 413, "body_too_large").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_cache_full() {
    let env = Env::start_with(Opts {
        replay_capacity: 1,
        ..Opts::default()
    })
    .await;
    let first =
        Req::post("/agent/v1/heartbeat", b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &first).await.unwrap().status, 200);
    let before = env.refusals("replay_cache_full").await;
    let bytes = env.upstream.bytes();
    let second =
        Req::post("/agent/v1/heartbeat", b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.agent(&env.a1, &second).await.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.error_code(), "replay_cache_full");
    assert_eq!(env.refusals("replay_cache_full").await, before + 1.0);
    assert_eq!(env.upstream.bytes(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_unavailable() {
    let env = Env::start_with(Opts {
        upstream_dead: true,
        ..Opts::default()
    })
    .await;
    let req = Req::get(DS_C1).signed(&env.a1.key_id, &env.a1.secret);
    env.refused(&req, 502, "upstream_unavailable").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_404_json() {
    let env = Env::start().await;
    let req = Req::get("/agent/v1/nope").signed(&env.a1.key_id, &env.a1.secret);
    env.refused(&req, 404, "no_route").await;
    // Bootstrap routes are not served on the agent listener.
    env.refused(
        &Req::post("/enroll/v1/request", b"{}".to_vec()),
        404,
        "no_route",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_serves_only_bootstrap_routes() {
    let env = Env::start().await;
    let req = Req::get(DS_C1).signed(&env.a1.key_id, &env.a1.secret);
    env.assert_refused(
        env.a1.cfg.clone(),
        env.bootstrap_addr,
        &req,
        404,
        "no_route",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_require_spiffe_needs_a_client_cert() {
    let env = Env::start_with(Opts {
        require_spiffe: true,
        ..Opts::default()
    })
    .await;
    env.handshake_refused(env.anon_cfg.clone(), env.bootstrap_addr, None)
        .await;
    let req = Req::post("/enroll/v1/request", b"{}".to_vec());
    let resp = once(env.bootstrap_addr, env.a1.cfg.clone(), &req)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
}

/// A keep-alive connection outlives its handshake: once its certificate has expired, the next
/// request on it is refused and the connection closed, so an agent cannot keep (or renew) an
/// identity on a connection opened while its SVID was valid.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_connection_is_refused_once_its_certificate_expires() {
    let env = Env::start().await;
    let short = env.ca.leaf(
        A1,
        LeafOpts {
            valid_for: Some(std::time::Duration::from_secs(2)),
            ..LeafOpts::default()
        },
    );
    let cfg = client_config(&env.ca.pem(), Some(&short), false);
    let mut conn = super::client::Conn::connect(env.agent_addr, cfg)
        .await
        .unwrap();
    let req =
        || Req::post("/agent/v1/heartbeat", b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(conn.send(&req()).await.unwrap().status, 200);
    let forwarded = env.upstream.requests().len();

    // notAfter has whole-second precision and is inclusive: 3.5 s is past it.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let before = env.refusals("client_cert_required").await;
    let resp = conn.send(&req()).await.unwrap();
    assert_eq!(
        (resp.status, resp.error_code()),
        (401, "client_cert_required".to_owned()),
        "{resp:?}"
    );
    assert_eq!(env.refusals("client_cert_required").await, before + 1.0);
    assert_eq!(
        env.upstream.requests().len(),
        forwarded,
        "a refused request reached the upstream"
    );
    assert!(conn.closed_by_peer(std::time::Duration::from_secs(2)).await);
}

/// The replay cache is written last: a peer that got hold of another agent's signed request
/// and sends it on its own connection is refused as `identity_mismatch` without spending the
/// nonce, so the owner's own request still goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_peer_cannot_spend_another_agents_nonce() {
    let env = Env::start().await;
    let req =
        Req::post("/agent/v1/heartbeat", b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    env.assert_refused(
        env.b2.cfg.clone(),
        env.agent_addr,
        &req,
        403,
        "identity_mismatch",
    )
    .await;
    assert_eq!(env.agent(&env.a1, &req).await.unwrap().status, 200);
    // And once spent by its owner, it is a replay.
    let resp = env.agent(&env.a1, &req).await.unwrap();
    assert_eq!(resp.error_code(), "replay");
    assert_eq!(env.upstream.requests().len(), 1);
}

/// Two `Host` fields make the authority ambiguous: the signature covers one, the upstream might
/// act on the other. pingora 0.9.1 would refuse such a head while parsing it with its bare 400;
/// the proxy checks the head first (head.rs) and refuses it with the contract's JSON and metric.
#[tokio::test(flavor = "multi_thread")]
async fn two_host_headers_are_request_malformed() {
    let env = Env::start().await;
    let req = Req::get(DS_C1)
        .header("host", "evil.zen.local")
        .signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.refused(&req, 400, "request_malformed").await;
    assert_eq!(resp.detail(), "more than one Host field");
}

/// Every kind of head that pingora would refuse with its bare 400 gets the contract's answer
/// instead (status, JSON, metric, nothing upstream), and the connection is closed after it.
#[tokio::test(flavor = "multi_thread")]
async fn heads_pingora_would_refuse_are_request_malformed() {
    let env = Env::start().await;
    let before = env
        .metric("zen_proxy_requests_total{listener=\"agent\",route=\"-\",status=\"400\"}")
        .await;
    let timed = "zen_proxy_request_duration_seconds_count{listener=\"agent\"}";
    let timed_before = env.metric(timed).await;
    let host = b"host: localhost\r\n".to_vec();
    let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (
            host.clone(),
            b"host: localhost\r\ncontent-length: 5, 6\r\n".to_vec(),
            "Content-Length is not one decimal number",
        ),
        (
            host.clone(),
            b"host: localhost\r\ncontent-length: +0\r\n".to_vec(),
            "Content-Length is not one decimal number",
        ),
        (
            host.clone(),
            b"host: localhost\r\ntransfer-encoding: gzip\r\n".to_vec(),
            "the final Transfer-Encoding is not chunked",
        ),
        (
            host.clone(),
            b"host: localhost\r\nbad name: v\r\n".to_vec(),
            "the request head is not valid HTTP/1.1: invalid header name",
        ),
        (
            host.clone(),
            b"host: u@localhost\r\n".to_vec(),
            "userinfo in the Host field",
        ),
        (
            format!("GET {DS_C1} HTTP/1.1").into_bytes(),
            format!("GET {DS_C1}?a b HTTP/1.1").into_bytes(),
            "the request line is not valid HTTP/1.1 (method, target or version)",
        ),
        (
            format!("GET {DS_C1} HTTP/1.1\r\n").into_bytes(),
            format!("GET https://other.zen.local{DS_C1} HTTP/1.1\r\n").into_bytes(),
            "the Host field differs from the request target's authority",
        ),
        (
            b" HTTP/1.1\r\nhost: localhost\r\n".to_vec(),
            b" HTTP/1.0\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n".to_vec(),
            "an HTTP/1.0 request cannot carry Transfer-Encoding",
        ),
    ];
    for (i, (from, to, detail)) in cases.iter().enumerate() {
        let mut req = Req::get(DS_C1).signed(&env.a1.key_id, &env.a1.secret);
        req.wire_patch = Some((from.clone(), to.clone()));
        let resp = env.refused(&req, 400, "request_malformed").await;
        assert_eq!(resp.detail(), *detail, "case {i}");
        assert!(
            resp.headers
                .iter()
                .any(|(n, v)| n == "connection" && v == "close"),
            "case {i}: {resp:?}"
        );
    }
    // A head larger than pingora allows (1 MiB), sent whole.
    let req = Req::get(DS_C1)
        .header("x-pad", &"a".repeat(1 << 20))
        .signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.refused(&req, 400, "request_malformed").await;
    assert_eq!(
        resp.detail(),
        "the request head is larger than 1048575 bytes"
    );
    assert_eq!(
        env.metric("zen_proxy_requests_total{listener=\"agent\",route=\"-\",status=\"400\"}")
            .await,
        before + cases.len() as f64 + 1.0
    );
    assert_eq!(
        env.metric(timed).await,
        timed_before + cases.len() as f64 + 1.0,
        "each refused head is timed as a request"
    );
    // The connection is not reused after the answer: what followed the head cannot be framed.
    let mut conn = env.conn(&env.a1).await;
    let mut bad = Req::get(DS_C1).signed(&env.a1.key_id, &env.a1.secret);
    bad.wire_patch = Some((
        host.clone(),
        b"host: localhost\r\nhost: localhost\r\n".to_vec(),
    ));
    let resp = conn.send(&bad).await.unwrap();
    assert_eq!(resp.error_code(), "request_malformed");
    let good = Req::get(DS_C1).signed(&env.a1.key_id, &env.a1.secret);
    assert!(
        conn.send(&good).await.is_err(),
        "the connection stayed open"
    );
    assert_eq!(env.upstream.bytes(), 0);
}

/// A signed field that the `Connection` header names would be stripped as hop-by-hop on the way
/// to the upstream, which would then act on a request without it: refused, not forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn signature_malformed_covered_field_named_by_connection() {
    let env = Env::start().await;
    let mut req = Req::get(DS_C1)
        .header("x-tenant", "t1")
        .header("connection", "keep-alive, X-Tenant");
    req.cover = vec!["x-tenant".into()];
    let req = req.signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.refused(&req, 400, "signature_malformed").await;
    let detail = resp.detail();
    assert!(
        detail.contains("\"x-tenant\" is named by the Connection header"),
        "{detail}"
    );
}

/// A signature may not cover what the proxy drops or replaces on the way up (the fixed
/// hop-by-hop fields, `x-zen-*`, `x-forwarded-client-cert`, `Expect`): the upstream would act
/// without what was signed, or with the proxy's value in its place.
#[tokio::test(flavor = "multi_thread")]
async fn signature_malformed_covered_field_dropped_in_transit() {
    let env = Env::start().await;
    for (field, value) in [
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("trailer", "x-t"),
        ("x-zen-tenant", "t1"),
        ("x-zen-spiffe-id", A1),
        (
            "x-forwarded-client-cert",
            "Hash=00;URI=spiffe://example.org/x",
        ),
        ("expect", "x-anything"),
    ] {
        let mut req = Req::get(DS_C1).header(field, value);
        req.cover = vec![field.into()];
        let req = req.signed(&env.a1.key_id, &env.a1.secret);
        let resp = env.refused(&req, 400, "signature_malformed").await;
        let detail = resp.detail();
        assert!(
            detail.contains(&format!(
                "covered field \"{field}\" is hop-by-hop or set by the proxy"
            )),
            "{field}: {detail}"
        );
    }
}

/// A covered Cookie on two lines verifies as "a, b" but would reach the upstream as "a; b"
/// (two cookies where one was signed), so it is refused; on one line it is admitted.
#[tokio::test(flavor = "multi_thread")]
async fn signature_malformed_covered_cookie_on_two_lines() {
    let env = Env::start().await;
    let mut one = Req::get(DS_C1).header("cookie", "s=1, t=2");
    one.cover = vec!["cookie".into()];
    let one = one.signed(&env.a1.key_id, &env.a1.secret);
    // Signed as the one line "s=1, t=2", sent as the two lines a joined reading gives back.
    let mut two = one.clone();
    two.wire_patch = Some((
        b"cookie: s=1, t=2".to_vec(),
        b"cookie: s=1\r\ncookie: t=2".to_vec(),
    ));
    let resp = env.refused(&two, 400, "signature_malformed").await;
    let detail = resp.detail();
    assert!(
        detail.contains("covered field \"cookie\" is on more than one line"),
        "{detail}"
    );
    let resp = env.agent(&env.a1, &one).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// A Content-Digest that lists sha-256 twice is refused even when the signature covers it as
/// sent and one member matches the body: a recipient reading the other member would see a
/// digest of different content.
#[tokio::test(flavor = "multi_thread")]
async fn signature_malformed_content_digest_lists_an_algorithm_twice() {
    let env = Env::start().await;
    let body = br#"{"cluster":"c1","status":"ok"}"#.to_vec();
    let good = zen_trust::signature::content_digest(zen_trust::signature::DigestAlg::Sha256, &body);
    let other =
        zen_trust::signature::content_digest(zen_trust::signature::DigestAlg::Sha256, b"other");
    for listed in [format!("{other}, {good}"), format!("{good}, {good}")] {
        // Signed without a body, so that the signature covers this Content-Digest as it is.
        let mut req =
            Req::post("/agent/v1/heartbeat", Vec::new()).header("content-digest", &listed);
        req.cover = vec!["content-digest".into()];
        let mut req = req.signed(&env.a1.key_id, &env.a1.secret);
        req.body = body.clone();
        let resp = env.refused(&req, 400, "signature_malformed").await;
        let detail = resp.detail();
        assert!(
            detail.contains("lists sha-256 more than once"),
            "{listed}: {detail}"
        );
    }
}

/// A covered field whose bytes are not UTF-8 is refused, not verified as text: here the client
/// signed `a\u{fffd}b` and sends `a\xffb`, which a lossy decoding would read as the signed text
/// while forwarding other bytes.
#[tokio::test(flavor = "multi_thread")]
async fn signature_malformed_covered_field_not_utf8() {
    let env = Env::start().await;
    let mut req = Req::get(DS_C1).header("x-tenant", "a\u{fffd}b");
    req.cover = vec!["x-tenant".into()];
    let mut req = req.signed(&env.a1.key_id, &env.a1.secret);
    req.wire_patch = Some(("a\u{fffd}b".as_bytes().to_vec(), b"a\xffb".to_vec()));
    let resp = env.refused(&req, 400, "signature_malformed").await;
    assert!(resp.detail().contains("not UTF-8"), "{resp:?}");
}

/// The signature's window is judged once the body is in, not when the head arrived: a body held
/// back past the window cannot carry its signature through (nor a copy of an accepted request,
/// once that one's replay entry has aged out).
#[tokio::test(flavor = "multi_thread")]
async fn signature_stale_when_the_body_arrives_after_the_window() {
    let env = Env::start().await;
    // 297 s old at the head (inside the 300 s window); ≥ 301 s once its last bytes arrive.
    let created = UnixTime(UnixTime::now().as_secs() - 297);
    let body = br#"{"cluster":"c1","status":"held back"}"#.to_vec();
    let req = Req::post("/agent/v1/heartbeat", body).signed_at(
        &env.a1.key_id,
        &env.a1.secret,
        created,
        None,
    );
    let before = env.refusals("signature_stale").await;
    let mut conn = env.conn(&env.a1).await;
    let len = req.encode().len();
    let resp = conn
        .send_in_pieces(&req, &[len - 5], std::time::Duration::from_secs(4))
        .await
        .unwrap();
    env.assert_refusal(&resp, 401, "signature_stale", before, 0)
        .await;
}

/// A body may take no longer than the signature window (max_age + max_skew) to arrive after its
/// head: pingora bounds each read, not the whole body, and after the window no signature on the
/// head could be admitted anyway. Here the window is 3 s and the body's last bytes never come.
#[tokio::test(flavor = "multi_thread")]
async fn body_unreadable_when_the_body_does_not_arrive_within_the_window() {
    let env = Env::start_with(Opts {
        signature_window: Some((2, 1)),
        ..Opts::default()
    })
    .await;
    let body = br#"{"cluster":"c1","status":"held back"}"#.to_vec();
    let req = Req::post("/agent/v1/heartbeat", body).signed(&env.a1.key_id, &env.a1.secret);
    let before = env.refusals("body_unreadable").await;
    let mut conn = env.conn(&env.a1).await;
    let len = req.encode().len();
    // The last 5 bytes never come; the answer does, at the 3 s window.
    let started = std::time::Instant::now();
    let resp = conn.send_partial(&req, len - 5).await.unwrap();
    let took = started.elapsed();
    env.assert_refusal(&resp, 400, "body_unreadable", before, 0)
        .await;
    assert!(
        resp.detail()
            .contains("did not arrive within 3 s of its head"),
        "{resp:?}"
    );
    assert!(
        took >= std::time::Duration::from_millis(2500) && took < std::time::Duration::from_secs(20),
        "answered after {took:?}"
    );
    // Closed: the rest of the body could not be told from a next request.
    assert!(conn.closed_by_peer(std::time::Duration::from_secs(5)).await);
    // A body that arrives within the window is admitted.
    let req = Req::post("/agent/v1/heartbeat", br#"{"ok":1}"#.to_vec())
        .signed(&env.a1.key_id, &env.a1.secret);
    let len = req.encode().len();
    let mut conn = env.conn(&env.a1).await;
    let resp = conn
        .send_in_pieces(&req, &[len - 3], std::time::Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
}

/// A request target whose bytes are not UTF-8 is refused before anything reads it as text
/// (pingora would decode it lossily, so different bytes would verify alike).
#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_is_not_utf8_is_request_malformed() {
    let env = Env::start().await;
    let mut req = Req::get(&format!("{DS_C1}?t=QQ")).signed(&env.a1.key_id, &env.a1.secret);
    req.wire_patch = Some((b"?t=QQ".to_vec(), b"?t=\xff".to_vec()));
    let resp = env.refused(&req, 400, "request_malformed").await;
    assert_eq!(resp.detail(), "the request target is not UTF-8 text");
}

/// A request that names no authority (HTTP/1.0 without Host) is refused: a signature over an
/// empty `@authority` would hold for any host.
#[tokio::test(flavor = "multi_thread")]
async fn request_malformed_no_authority() {
    let env = Env::start().await;
    let mut req = Req::get(DS_C1).signed(&env.a1.key_id, &env.a1.secret);
    req.wire_patch = Some((
        b" HTTP/1.1\r\nhost: localhost\r\n".to_vec(),
        b" HTTP/1.0\r\n".to_vec(),
    ));
    let resp = env.refused(&req, 400, "request_malformed").await;
    assert!(resp.detail().contains("names no authority"), "{resp:?}");
}
