//! Requests that pass every check reach the upstream exactly as sent, with
//! identity headers added and spoofed ones stripped.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::client::{once, Req};
use super::harness::{Env, A1, BULK_MAX, BULK_PATH};

#[tokio::test(flavor = "multi_thread")]
async fn signed_get_reaches_upstream_with_identity_headers_and_spoofs_stripped() {
    let env = Env::start().await;
    let req = Req::get("/agent/v1/clusters/c1/desired-state?since=3")
        .header(
            "x-zen-spiffe-id",
            "spiffe://zen.local/cluster/c2/agent/evil",
        )
        .header("X-Zen-Key-Id", "k-b2")
        .header("x-zen-anything", "1")
        .header(
            "x-forwarded-client-cert",
            "Hash=00;URI=spiffe://zen.local/proxy/x",
        )
        .signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.agent(&env.a1, &req).await.unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["ok"], true);

    let got = env.upstream.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.target, "/agent/v1/clusters/c1/desired-state?since=3");
    assert_eq!(r.headers_named("x-zen-spiffe-id"), vec![A1]);
    assert_eq!(r.headers_named("x-zen-key-id"), vec!["k-a1"]);
    assert!(r.header("x-zen-anything").is_none());
    let leaf_hash = hex::encode(Sha256::digest(&env.a1.leaf.der));
    assert_eq!(
        r.headers_named("x-forwarded-client-cert"),
        vec![format!("Hash={leaf_hash};URI={A1}").as_str()]
    );
    // The signature headers travel on for the upstream's own audit.
    assert!(r.header("signature-input").is_some());
    // Counted in pingora's logging phase, after the response went out.
    let series =
        "zen_proxy_requests_total{listener=\"agent\",route=\"desired-state\",status=\"200\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while env.metric(series).await != 1.0 {
        assert!(std::time::Instant::now() < deadline, "{series} not 1");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_connection_named_headers_stay_at_the_proxy() {
    let env = Env::start().await;
    let req = Req::get("/agent/v1/clusters/c1/desired-state")
        // Naming Host does not take the authority away: the request was decided on it.
        .header("Connection", "keep-alive, X-Hop-Only, Host")
        .header("X-Hop-Only", "1")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Connection", "keep-alive")
        .header("X-End-To-End", "2")
        .signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.agent(&env.a1, &req).await.unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));

    let got = env.upstream.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    for dropped in ["x-hop-only", "keep-alive", "proxy-connection"] {
        assert!(
            r.header(dropped).is_none(),
            "{dropped} reached the upstream"
        );
    }
    // The proxy's own connection header, if any, names nothing of the client's.
    assert!(r
        .headers_named("connection")
        .iter()
        .all(|v| !v.to_ascii_lowercase().contains("x-hop-only")));
    assert_eq!(r.headers_named("x-end-to-end"), vec!["2"]);
    assert_eq!(r.header("host"), Some("localhost"));
    // A GET without a body gets no framing header of its own.
    assert!(r.header("content-length").is_none());
}

/// A covered field sent on two lines is verified as the lines joined; the upstream gets that one
/// joined line, not two of which it might read only the first. Cookies join with "; ".
#[tokio::test(flavor = "multi_thread")]
async fn a_field_on_several_lines_reaches_the_upstream_as_the_one_value_signed() {
    let env = Env::start().await;
    let mut req = Req::get("/agent/v1/clusters/c1/desired-state")
        .header("X-Tenant", "a ")
        .header("X-Tenant", "b")
        .header("Cookie", "s=1")
        .header("Cookie", "t=2");
    req.cover = vec!["x-tenant".into()];
    let req = req.signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.agent(&env.a1, &req).await.unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let got = env.upstream.requests();
    assert_eq!(got[0].headers_named("x-tenant"), vec!["a, b"]);
    assert_eq!(got[0].headers_named("cookie"), vec!["s=1; t=2"]);
}

async fn post_body_of(env: &Env, size: usize) {
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let req = Req::post(BULK_PATH, body.clone()).signed(&env.a1.key_id, &env.a1.secret);
    let resp = env.agent(&env.a1, &req).await.unwrap();
    assert_eq!(
        resp.status,
        200,
        "size {size}: {}",
        String::from_utf8_lossy(&resp.body)
    );
    let got = env.upstream.requests();
    let last = got.last().unwrap();
    assert_eq!(last.body.len(), size);
    assert!(last.body == body, "upstream body differs for size {size}");
    assert_eq!(
        last.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert!(last.header("content-digest").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_post_bodies_below_above_64k_and_at_the_maximum_arrive_byte_exact() {
    let env = Env::start().await;
    for size in [
        1,
        1000,
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        150_000,
        BULK_MAX,
    ] {
        post_body_of(&env, size).await;
    }
    assert_eq!(env.upstream.requests().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_body_is_verified_and_forwarded_with_content_length() {
    let env = Env::start().await;
    let body: Vec<u8> = (0..100_000).map(|i| (i % 7) as u8).collect();
    let mut req = Req::post(BULK_PATH, body.clone()).signed(&env.a1.key_id, &env.a1.secret);
    req.chunked = true;
    let resp = env.agent(&env.a1, &req).await.unwrap();
    assert_eq!(resp.status, 200);
    let r = env.upstream.requests().pop().unwrap();
    assert!(r.body == body);
    assert_eq!(r.header("content-length"), Some("100000"));
    assert!(r.header("transfer-encoding").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connection_serves_many_requests() {
    let env = Env::start().await;
    let mut conn = env.conn(&env.a1).await;
    for i in 0..20 {
        let req = Req::post("/agent/v1/heartbeat", format!("{{\"n\":{i}}}").into_bytes())
            .signed(&env.a1.key_id, &env.a1.secret);
        let resp = conn.send(&req).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(env.upstream.requests().len(), 20);
}

/// An idle keep-alive connection waits for its next request outside the
/// proxy session (src/downstream.rs), which hands the first byte on to
/// pingora's parser: a request that then trickles in, header and body, must
/// arrive whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_trickling_in_after_an_idle_pause_arrives_whole() {
    let env = Env::start().await;
    let mut conn = env.conn(&env.a1).await;
    let first =
        Req::get("/agent/v1/clusters/c1/desired-state").signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(conn.send(&first).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = br#"{"cluster":"c1","status":"trickled"}"#.to_vec();
    let second =
        Req::post("/agent/v1/heartbeat", body.clone()).signed(&env.a1.key_id, &env.a1.secret);
    let len = second.encode().len();
    let resp = conn
        .send_in_pieces(&second, &[1, 2, 40, len - 10], Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    // And the connection is still good for a third.
    let third =
        Req::get("/agent/v1/clusters/c1/desired-state").signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(conn.send(&third).await.unwrap().status, 200);

    let got = env.upstream.requests();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].method, "POST");
    assert_eq!(got[1].target, "/agent/v1/heartbeat");
    assert_eq!(got[1].body, body);
    assert_eq!(got[1].header("x-zen-spiffe-id"), Some(A1));
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_listener_serves_bootstrap_routes_without_client_cert() {
    let env = Env::start().await;
    let req = Req::post("/enroll/v1/request", b"{\"csr\":\"...\"}".to_vec())
        .header("x-zen-spiffe-id", A1);
    let resp = once(env.bootstrap_addr, env.anon_cfg.clone(), &req)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let r = env.upstream.requests().pop().unwrap();
    assert_eq!(r.target, "/enroll/v1/request");
    // Anonymous: no identity headers, and the spoofed one is gone.
    assert!(r.header("x-zen-spiffe-id").is_none());
    assert!(r.header("x-forwarded-client-cert").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_off_proxy_route_admits_proxy_identity() {
    let env = Env::start().await;
    let leaf = env
        .ca
        .leaf("spiffe://zen.local/proxy/edge-2", Default::default());
    let cfg = super::client::client_config(&env.ca.pem(), Some(&leaf), false);
    let resp = once(env.agent_addr, cfg, &Req::get("/proxy/v1/state?version=3"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let r = env.upstream.requests().pop().unwrap();
    assert_eq!(
        r.header("x-zen-spiffe-id"),
        Some("spiffe://zen.local/proxy/edge-2")
    );
    assert!(r.header("x-zen-key-id").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints() {
    let env = Env::start().await;
    assert_eq!(env.admin_get("/healthz").await.unwrap().0, 200);
    assert_eq!(env.admin_get("/readyz").await.unwrap().0, 200);
    let (status, dump) = env.admin_get("/config_dump").await.unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["key_set"]["version"], 1);
    assert_eq!(v["key_set"]["keys"][0]["secret"], "<redacted>");
    // No key material anywhere in the dump.
    for secret in [&env.a1.secret, &env.b2.secret] {
        assert!(!dump.contains(&secret.to_base64()));
    }
    let (_, metrics) = env.admin_get("/metrics").await.unwrap();
    for name in [
        "zen_proxy_key_set_version 1",
        "zen_proxy_key_set_keys 5",
        "zen_proxy_serving_cert_expiry_seconds",
        "zen_proxy_state_loaded{what=\"key_set\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_signed_post_above_64k_is_forwarded_byte_exact() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let env = Env::start().await;
    let mut cfg = (*super::client::client_config(&env.ca.pem(), Some(&env.a1.leaf), false)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(env.agent_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    let body: Vec<u8> = (0..100_000).map(|i| (i % 13) as u8).collect();
    // Sign exactly what goes on the wire: :authority "localhost", no Host header.
    let signed = Req::post(BULK_PATH, body.clone()).signed(&env.a1.key_id, &env.a1.secret);
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{BULK_PATH}"));
    for (n, v) in &signed.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    let resp = send
        .send_request(b.body(Full::new(bytes::Bytes::from(body.clone()))).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], br#"{"ok":true}"#);
    let r = env.upstream.requests().pop().unwrap();
    assert!(r.body == body);
    assert_eq!(r.header("x-zen-spiffe-id"), Some(A1));
    assert_eq!(r.header("host"), Some("localhost"));
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_gets_the_go_ahead_and_is_not_forwarded() {
    let env = Env::start().await;
    let body = vec![5u8; 70_000];
    let req = Req::post(BULK_PATH, body.clone())
        .header("expect", "100-continue")
        .signed(&env.a1.key_id, &env.a1.secret);
    let mut conn = env.conn(&env.a1).await;
    let resp = conn.send_expect_continue(&req).await.unwrap();
    assert_eq!(resp.status, 200);
    let r = env.upstream.requests().pop().unwrap();
    assert!(r.body == body);
    assert!(r.header("expect").is_none());
}

/// Requests over one client connection reuse one pooled upstream connection;
/// when the upstream closes it behind the proxy's back, the next request
/// still gets through — retried once on a fresh connection right after the
/// close, or never handed the dead one after a pause (probe) — and reaches
/// the upstream exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn pooled_upstream_connections_are_reused_and_a_closed_one_is_replaced() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let env = Env::start().await;
    let mut conn = env.conn(&env.a1).await;
    let path = "/agent/v1/clusters/c1/desired-state";
    for _ in 0..3 {
        let resp = conn
            .send(&Req::get(path).signed(&env.a1.key_id, &env.a1.secret))
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(env.upstream.log.connections.load(Ordering::SeqCst), 1);

    // Each of these makes the upstream close the connection after answering.
    for pause_ms in [0u64, 0, 700] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let req = Req::get(path)
            .header("x-test-close", "1")
            .signed(&env.a1.key_id, &env.a1.secret);
        let resp = conn.send(&req).await.unwrap();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    }
    assert_eq!(
        env.upstream.requests().len(),
        6,
        "each request reached the upstream once"
    );
    // The first connection (closed after request 4), then one per closing request.
    assert_eq!(env.upstream.log.connections.load(Ordering::SeqCst), 3);

    // A POST is never retried, so it gets a probed connection: released only
    // 50 ms ago, the closed one is still noticed and a fresh one used.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let req = Req::post(BULK_PATH, b"{}".to_vec())
            .header("x-test-close", "1")
            .signed(&env.a1.key_id, &env.a1.secret);
        let resp = conn.send(&req).await.unwrap();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    }
    assert_eq!(env.upstream.requests().len(), 8);
    assert_eq!(env.upstream.log.connections.load(Ordering::SeqCst), 5);
}

/// A request lost by the upstream on a reused connection (it arrived, then
/// the connection closed unanswered) is sent once more on a fresh connection
/// when its method is idempotent, and never when it is not: a second POST
/// would be a replay made by the proxy. Both end in 502 here, as the
/// upstream drops every copy.
#[tokio::test(flavor = "multi_thread")]
async fn only_idempotent_requests_are_retried_after_a_lost_exchange() {
    let env = Env::start().await;
    let mut conn = env.conn(&env.a1).await;
    let path = "/agent/v1/clusters/c1/desired-state";
    let warm = |env: &Env| Req::get(path).signed(&env.a1.key_id, &env.a1.secret);
    // One pooled connection, then a POST the upstream loses on it.
    assert_eq!(conn.send(&warm(&env)).await.unwrap().status, 200);
    let post = Req::post(BULK_PATH, b"{}".to_vec())
        .header("x-test-drop", "1")
        .signed(&env.a1.key_id, &env.a1.secret);
    let resp = conn.send(&post).await.unwrap();
    assert_eq!(resp.status, 502, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["error"], "upstream_unavailable");
    assert_eq!(
        env.upstream.requests().len(),
        2,
        "the POST reached the upstream once"
    );
    assert_eq!(env.refusals("upstream_unavailable").await, 1.0);

    // The same for a GET: it goes out twice (reused, then fresh).
    let mut conn = env.conn(&env.a1).await;
    assert_eq!(conn.send(&warm(&env)).await.unwrap().status, 200);
    let get = Req::get(path)
        .header("x-test-drop", "1")
        .signed(&env.a1.key_id, &env.a1.secret);
    let resp = conn.send(&get).await.unwrap();
    assert_eq!(resp.status, 502, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(
        env.upstream.requests().len(),
        5,
        "warm-up, then the GET twice"
    );
    assert_eq!(env.refusals("upstream_unavailable").await, 2.0);
}

/// A read timeout on a reused upstream connection is not a stale connection: the upstream got
/// the request and may still be working on it, so even an idempotent request is not sent again.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_timed_out_upstream_is_not_sent_again() {
    use std::time::Duration;

    let env = Env::start_with(super::harness::Opts {
        upstream_read_timeout_ms: 300,
        ..super::harness::Opts::default()
    })
    .await;
    let mut conn = env.conn(&env.a1).await;
    let path = "/agent/v1/clusters/c1/desired-state";
    // One pooled connection, so the slow request goes out on a reused one.
    let warm = Req::get(path).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(conn.send(&warm).await.unwrap().status, 200);
    let slow = Req::get(path)
        .header("x-test-delay-ms", "800")
        .signed(&env.a1.key_id, &env.a1.secret);
    let resp = conn.send(&slow).await.unwrap();
    assert_eq!(resp.status, 502, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json()["error"], "upstream_unavailable");
    // The upstream records a request once its delay is over: wait past any second copy's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        env.upstream.requests().len(),
        2,
        "the warm-up, then the slow GET exactly once"
    );
}
