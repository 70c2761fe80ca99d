//! The proxy's own SVID from control (`tls.from_control`): enrolled with a one-use token on first
//! start and confirmed, renewed at ~50 % of a short lifetime while agent traffic flows (0 failed),
//! a rotated HMAC key of its own followed, and a restart that serves from the files in `dir`
//! without enrolling again (the token is spent).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use zen_e2e::{wait_until, RecordingUpstream, Stack, StackOptions, PROXY_ID};

use crate::{enrolled, Agent};

const AGENT: &str = "spiffe://zen.local/cluster/c1/agent/svid";

/// The leaf certificate the agent listener serves, as a new TLS handshake sees it (DER).
fn serving_cert(agent: &Agent, port: u16) -> Option<Vec<u8>> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // No session resumption: a resumed session reports the certificate of the first handshake.
    let mut config = (*agent.tls).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    while conn.is_handshaking() {
        // e.g. the served certificate expired: None, and the caller sees no renewal.
        conn.complete_io(&mut sock).ok()?;
    }
    Some(conn.peer_certificates()?.first()?.to_vec())
}

/// Serial of a serving certificate that must be a valid SVID of the proxy now.
fn serial(der: &[u8]) -> String {
    let leaf = zen_trust::check_svid_leaf(der, zen_trust::UnixTime::now()).expect("a valid SVID");
    assert_eq!(leaf.spiffe_id.as_str(), PROXY_ID);
    leaf.serial_hex
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn hmac_key_id(stack: &Stack) -> String {
    let text = std::fs::read_to_string(stack.path("proxy/hmac.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["key_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_enrolls_renews_under_traffic_and_restarts_without_its_token() {
    let saas = RecordingUpstream::start().await.unwrap();
    let mut stack = Stack::start_with(
        saas.port,
        StackOptions {
            // 30 s SVIDs: the proxy renews ~15 s after it got one.
            control_yaml: "svid:\n  ttl: 30s\ntesting:\n  short_svid_ttl: true\n".into(),
            proxy_svid_from_control: true,
            ..StackOptions::default()
        },
    )
    .await
    .unwrap();

    // Enrolled: cert-manager layout, secrets 0600; then confirmed through its own agent listener.
    assert_eq!(mode(&stack.path("proxy/tls.key")), 0o600);
    assert_eq!(mode(&stack.path("proxy/hmac.json")), 0o600);
    assert!(stack.path("proxy/ca.crt").is_file());
    let pending = stack.path("proxy/enrollment.json");
    wait_until(
        "the proxy's enrollment confirm",
        Duration::from_secs(15),
        || {
            let done = !pending.exists();
            async move { done }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        stack
            .proxy_metric("zen_proxy_svid_confirm_pending", "")
            .await
            .unwrap(),
        0.0
    );

    // An agent verifies the proxy by host name (DNS SAN localhost) and is served.
    let agent = enrolled(&stack, AGENT, "agent").await;
    let url = stack.agent_url("/saas/v1/echo");
    let first = agent.send(Method::GET, &url, &[], None).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let cert_before = serving_cert(&agent, stack.agent_port).expect("a TLS handshake");
    let serial_before = serial(&cert_before);

    // A forced rotation of the proxy's own HMAC key: it switches once its key set shows the
    // successor, so the renewal below is signed with the new key.
    let key_before = hmac_key_id(&stack);
    stack
        .control_cli(&["keys", "rotate", "--spiffe-id", PROXY_ID])
        .unwrap();
    let dir = stack.dir.path().to_path_buf();
    let followed = wait_until(
        "the proxy to follow its key rotation",
        Duration::from_secs(10),
        || {
            let path = dir.join("proxy/hmac.json");
            let before = key_before.clone();
            async move {
                std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|v| v["key_id"].as_str() != Some(before.as_str()))
            }
        },
    )
    .await;
    if let Err(e) = followed {
        panic!("{e}; proxy log:\n{}", stack.proxy.as_ref().unwrap().log());
    }

    // Requests flow while the proxy renews: a new handshake sees a new serial, none fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ok, mut failed) = (0u32, Vec::new());
    let serial_after = loop {
        let r = agent.send(Method::GET, &url, &[], None).await;
        if r.status == StatusCode::OK {
            ok += 1;
        } else {
            failed.push((r.status, r.body));
        }
        match serving_cert(&agent, stack.agent_port) {
            Some(cert) if cert != cert_before => break serial(&cert),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within 30 s; proxy log:\n{}",
            stack.proxy.as_ref().unwrap().log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for _ in 0..20 {
        let r = agent.send(Method::GET, &url, &[], None).await;
        if r.status == StatusCode::OK {
            ok += 1;
        } else {
            failed.push((r.status, r.body));
        }
    }
    assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
    assert_ne!(serial_after, serial_before);
    assert!(
        stack
            .proxy_metric("zen_proxy_svid_renewals_total", "result=\"ok\"")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(
        stack
            .proxy_metric("zen_proxy_own_hmac_key_refreshes_total", "result=\"ok\"")
            .await
            .unwrap()
            >= 1.0
    );

    // Restart: the SVID in dir is used; the spent token would make a second enrollment fail.
    stack.proxy.take();
    stack.start_proxy().await.unwrap();
    let log = stack.proxy.as_ref().unwrap().log();
    assert!(log.contains("not enrolling again"), "{log}");
    assert!(!log.contains("enrolling with zen-control"), "{log}");
    let fresh = enrolled(
        &stack,
        "spiffe://zen.local/cluster/c1/agent/svid2",
        "agent2",
    )
    .await;
    let r = fresh.send(Method::GET, &url, &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}
