//! CA rotation while signed requests flow (DESIGN §8): the new root joins every bundle first (the
//! proxy's by state sync, the agent's by its heartbeat), issuance switches after
//! `ca.propagation_delay` (the proxy's serving SVID and the agent's renewed SVID come from the new
//! CA), and the old root leaves after the longest SVID lifetime — with no failed request throughout.
//!
//! Short lifetimes (svid.ttl 20 s, test-only `testing.short_svid_ttl`) make the whole rotation fit
//! in well under a minute.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use zen_agent::client;
use zen_agent::files::{self, AgentFiles};
use zen_e2e::{http_get, wait_until, RecordingUpstream, Stack, StackOptions};

use crate::Agent;

const AGENT: &str = "spiffe://zen.local/cluster/c1/agent/rotating";
/// The proxy identity the harness issues (`Stack::start`).
const PROXY_ID: &str = "spiffe://zen.local/proxy/e2e";
const SVID_TTL: Duration = Duration::from_secs(20);

const CONTROL_YAML: &str = "svid:\n  ttl: 20s\nca:\n  propagation_delay: 2s\n\
                            controller:\n  interval: 1s\ntesting:\n  short_svid_ttl: true\n";

/// The number of CA certificates in the proxy's published bundle (its `/config_dump`).
async fn proxy_roots(stack: &Stack) -> usize {
    let Ok((200, body)) = http_get(&stack.proxy_admin, "/config_dump").await else {
        return 0;
    };
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    dump["trust_bundles"][0]["ca_certificates"]
        .as_u64()
        .unwrap_or(0) as usize
}

/// What the agent's heartbeat says the trust bundle is now: (PEM, certificates).
async fn heartbeat_bundle(stack: &Stack, agent: &Agent) -> (String, Vec<CertificateDer<'static>>) {
    let r = agent
        .send(
            Method::POST,
            &stack.agent_url("/agent/v1/heartbeat"),
            &[],
            Some(r#"{"version":"1.0","status":"ok"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let pem = v["trust_bundle_pem"]
        .as_str()
        .expect("heartbeat answer carries trust_bundle_pem");
    (pem.to_owned(), files::parse_certs(pem.as_bytes()).unwrap())
}

/// The agent's current credential files with `bundle` as its roots.
fn agent_with_bundle(dir: &Path, bundle: &[CertificateDer<'static>]) -> Agent {
    let mut agent = Agent::load(dir);
    let f = AgentFiles::load(dir).unwrap();
    agent.tls = zen_agent::tls::mtls_config(bundle, f.svid_chain, f.svid_key).unwrap();
    agent
}

/// The same client config without TLS session resumption: a resumed session skips certificate
/// verification on both sides, so every request of the flow must be a full handshake for it to
/// prove that each side still trusts the other's current certificate.
fn full_handshakes(tls: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = (*tls).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// `zen-control ca issue` of the proxy's serving SVID into its watched directory.
fn reissue_proxy_svid(stack: &Stack) {
    let out = stack
        .control_cli(&[
            "ca",
            "issue",
            "--spiffe-id",
            PROXY_ID,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            stack.path("proxy").to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.contains("issued"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_while_requests_flow_with_svid_renewal() {
    let started = Instant::now();
    let saas = RecordingUpstream::start().await.unwrap();
    let stack = Stack::start_with(
        saas.port,
        StackOptions {
            control_yaml: CONTROL_YAML.into(),
            ..StackOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = stack.path("agent");
    let token = stack.token(AGENT).unwrap();
    stack.enroll(&token, AGENT, &dir).unwrap();
    let old_root = files::read_certs(&stack.path("bundle.pem")).unwrap();
    assert_eq!(old_root.len(), 1);
    // The enrollment's (old-CA) SVID, kept aside for the end.
    let old_svid = AgentFiles::load(&dir).unwrap();
    let agent = Agent::load(&dir);
    let echo = stack.agent_url("/saas/v1/echo");

    // Signed requests flow for the whole test, each on a new mTLS connection, with whatever
    // credentials the "agent" holds at that moment.
    let current: Arc<RwLock<Arc<ClientConfig>>> =
        Arc::new(RwLock::new(full_handshakes(agent.tls.clone())));
    let stop = Arc::new(AtomicBool::new(false));
    let flow = {
        let (current, stop, key, echo) = (
            current.clone(),
            stop.clone(),
            agent.key.clone(),
            echo.clone(),
        );
        tokio::spawn(async move {
            let (mut ok, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let tls = current.read().unwrap().clone();
                match client::send(tls, Method::GET, &echo, &[], None, Some(&key)).await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    Ok(r) => failures.push(format!("{}: {:?}", r.status, r.error_code())),
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failures)
        })
    };
    let swap = |tls: Arc<ClientConfig>| *current.write().unwrap() = full_handshakes(tls);

    // 1. Rotate: the new root joins the proxy's bundle (state sync) and the agent's (heartbeat).
    let out = stack.control_cli(&["ca", "rotate"]).unwrap();
    assert!(out.contains("is in the trust bundle"), "{out}");
    wait_until("the new root at the proxy", Duration::from_secs(10), || {
        let stack = &stack;
        async move { proxy_roots(stack).await == 2 }
    })
    .await
    .unwrap();
    let (both_pem, both) = heartbeat_bundle(&stack, &agent).await;
    assert_eq!(both.len(), 2, "heartbeat bundle during the rotation");
    let new_root: Vec<_> = both
        .iter()
        .filter(|c| !old_root.contains(c))
        .cloned()
        .collect();
    assert_eq!(new_root.len(), 1);
    files::write_atomic(&dir.join(files::BUNDLE), both_pem.as_bytes(), 0o644).unwrap();
    swap(agent_with_bundle(&dir, &both).tls);

    // 2. After the propagation delay the new CA issues: the proxy's serving SVID is re-issued (its
    //    file watcher swaps it) while the agent still presents its old-CA SVID — its bundle from
    //    the heartbeat already verifies the new serving certificate.
    wait_until("the new CA to issue", Duration::from_secs(10), || {
        let stack = &stack;
        async move {
            stack
                .control_cli(&["audit", "list", "--output", "json"])
                .is_ok_and(|o| o.contains("ca_activate"))
        }
    })
    .await
    .unwrap();
    reissue_proxy_svid(&stack);
    let mut proxy_issued = Instant::now();
    let only_new_root = Agent {
        tls: agent_with_bundle(&dir, &new_root).tls,
        key: agent.key.clone(),
    };
    wait_until(
        "the proxy to serve its new-CA SVID",
        Duration::from_secs(10),
        || {
            let (a, echo) = (&only_new_root, &echo);
            async move {
                client::send(a.tls.clone(), Method::GET, echo, &[], None, Some(&a.key))
                    .await
                    .is_ok_and(|r| r.status == StatusCode::OK)
            }
        },
    )
    .await
    .unwrap();

    // 3. The agent renews its SVID under the new CA and switches to it.
    let renewed = zen_agent::renew::renew_svid(&dir, &stack.agent_url(""))
        .await
        .unwrap();
    let mut agent_renewed = Instant::now();
    let issuer = |f: &AgentFiles| f.svid_chain[1].clone();
    assert_ne!(
        issuer(&AgentFiles::load(&dir).unwrap()),
        issuer(&old_svid),
        "renewed SVID {} is not from the new CA",
        renewed.serial_hex
    );
    swap(Agent::load(&dir).tls);

    // 4. Until the old root leaves (svid.ttl after the switch), both sides renew at half-life as
    //    they would in production.
    let old_root_gone = Instant::now() + Duration::from_secs(40);
    while proxy_roots(&stack).await != 1 {
        assert!(
            Instant::now() < old_root_gone,
            "old root still at the proxy"
        );
        if proxy_issued.elapsed() > SVID_TTL / 2 {
            reissue_proxy_svid(&stack);
            proxy_issued = Instant::now();
        }
        if agent_renewed.elapsed() > SVID_TTL / 2 {
            zen_agent::renew::renew_svid(&dir, &stack.agent_url(""))
                .await
                .unwrap();
            agent_renewed = Instant::now();
            swap(Agent::load(&dir).tls);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, now_bundle) = heartbeat_bundle(&stack, &Agent::load(&dir)).await;
    assert_eq!(
        now_bundle, new_root,
        "the agent's bundle after the rotation"
    );
    let control_bundle = files::read_certs(&stack.path("bundle.pem")).unwrap();
    assert_eq!(
        control_bundle, new_root,
        "control's bundle.pem after the rotation"
    );

    // 5. The old-CA SVID is refused at the handshake (every SVID the old CA signed has expired by
    //    the time its root leaves); the new one is accepted.
    let refusals = || async {
        stack
            .proxy_metric("zen_proxy_tls_handshakes_total", "listener=\"agent\"")
            .await
            .unwrap()
            - stack
                .proxy_metric(
                    "zen_proxy_tls_handshakes_total",
                    "listener=\"agent\",result=\"ok",
                )
                .await
                .unwrap()
    };
    let refused_before = refusals().await;
    let old =
        zen_agent::tls::mtls_config(&new_root, old_svid.svid_chain, old_svid.svid_key).unwrap();
    let attempt = client::send(old, Method::GET, &echo, &[], None, Some(&agent.key)).await;
    assert!(
        attempt.is_err(),
        "old-CA SVID got an answer: {:?}",
        attempt.map(|r| r.status)
    );
    assert_eq!(refusals().await, refused_before + 1.0);
    let new = Agent::load(&dir);
    let r = new.send(Method::GET, &echo, &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = flow.await.unwrap();
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "requests failed during the CA rotation"
    );
    assert!(ok >= 20, "only {ok} requests flowed");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
