//! Lock-free swaps while traffic flows; invalid files keep the old value;
//! SIGHUP reloads; SIGTERM drains.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zen_trust::{KeySetFile, KeyStatus, Secret};

use super::client::{Conn, Req};
use super::harness::{key_entry, write_atomic, Env, Opts, A1, B2, R1};
use super::pki::LeafOpts;

const HB: &str = "/agent/v1/heartbeat";

async fn wait_metric(env: &Env, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.metric(series).await < at_least {
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}: {}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key_file(env: &Env, version: u64, extra: Vec<zen_trust::KeySetEntry>) -> Vec<u8> {
    let mut keys = vec![
        key_entry("k-a1", &env.a1.secret, A1, KeyStatus::Active, false),
        key_entry("k-b2", &env.b2.secret, B2, KeyStatus::Active, false),
        key_entry("k-r1", &env.r1.secret, R1, KeyStatus::Active, false),
    ];
    keys.extend(extra);
    serde_json::to_vec(&KeySetFile { version, keys }).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_key_set_keeps_the_old_one_and_a_valid_one_is_picked_up() {
    let env = Env::start().await;
    let keys = env.dir.path().join("keys.json");
    let err = "zen_proxy_reloads_total{result=\"error\",what=\"key_set\"}";
    let ok = "zen_proxy_reloads_total{result=\"ok\",what=\"key_set\"}";

    write_atomic(&keys, b"{ not json");
    wait_metric(&env, err, 1.0).await;
    let req = Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &req).await.unwrap().status, 200);
    assert_eq!(env.metric("zen_proxy_key_set_version").await, 1.0);

    let fresh = Secret::generate();
    write_atomic(
        &keys,
        &key_file(
            &env,
            2,
            vec![key_entry("k-a1-v2", &fresh, A1, KeyStatus::Active, false)],
        ),
    );
    wait_metric(&env, ok, 1.0).await;
    assert_eq!(env.metric("zen_proxy_key_set_version").await, 2.0);
    let req = Req::post(HB, b"{}".to_vec()).signed("k-a1-v2", &fresh);
    assert_eq!(env.agent(&env.a1, &req).await.unwrap().status, 200);
    assert!(
        env.log().contains("reload refused"),
        "the bad file is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_serving_cert_keeps_the_old_one() {
    let env = Env::start().await;
    write_atomic(&env.dir.path().join("tls.crt"), b"garbage");
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"error\",what=\"serving_cert\"}",
        1.0,
    )
    .await;
    let req = Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &req).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_revocations() {
    let env = Env::start_with(Opts {
        watch: false,
        ..Opts::default()
    })
    .await;
    let req = || Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &req()).await.unwrap().status, 200);
    std::fs::write(
        env.dir.path().join("revocations.json"),
        serde_json::json!({"version": 2, "revoked_spiffe_ids": [A1]}).to_string(),
    )
    .unwrap();
    // Without watching, nothing changes until SIGHUP.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.agent(&env.a1, &req()).await.unwrap().status, 200);
    env.sighup();
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"ok\",what=\"revocations\"}",
        1.0,
    )
    .await;
    let resp = env.agent(&env.a1, &req()).await.unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "identity_revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn swap_under_load_cert_and_key_set_100_times_no_failed_request() {
    let env = Arc::new(Env::start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    let mut tasks = Vec::new();
    for keep_alive in [true, false] {
        let (env, stop, ok, failed) = (env.clone(), stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            while !stop.load(Ordering::Relaxed) {
                let req =
                    Req::post(HB, b"{\"load\":1}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
                let c = match (&mut conn, keep_alive) {
                    (Some(c), true) => c,
                    _ => conn.insert(
                        match Conn::connect(env.agent_addr, env.a1.cfg.clone()).await {
                            Ok(c) => c,
                            Err(e) => {
                                failed.lock().unwrap().push(format!("connect: {e}"));
                                continue;
                            }
                        },
                    ),
                };
                match c.send(&req).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.lock().unwrap().push(format!(
                        "status {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => {
                        failed.lock().unwrap().push(format!("io: {e}"));
                        conn = None;
                    }
                }
            }
        }));
    }

    let crt = env.dir.path().join("tls.crt");
    let key = env.dir.path().join("tls.key");
    let keys = env.dir.path().join("keys.json");
    let mut last_leaf = Vec::new();
    for i in 0..100u64 {
        let leaf = env.ca.leaf(
            "spiffe://zen.local/proxy/test",
            LeafOpts {
                dns: vec!["localhost".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                ..LeafOpts::default()
            },
        );
        // Key first, then cert: a reload between the two sees a mismatched
        // pair, refuses it and keeps serving the previous one.
        write_atomic(&key, leaf.key_pem.as_bytes());
        write_atomic(&crt, leaf.cert_pem.as_bytes());
        write_atomic(&keys, &key_file(&env, 10 + i, vec![]));
        last_leaf = leaf.der.clone();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }

    // A connection opened after the last rewrite sees the new cert within 1 s.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let c = Conn::connect(env.agent_addr, env.a1.cfg.clone())
            .await
            .unwrap();
        if c.peer_leaf_der() == last_leaf {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new serving cert not visible within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed requests, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "load generator made only {} requests",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(env.metric("zen_proxy_key_set_version").await, 109.0);
    assert!(
        env.metric("zen_proxy_reloads_total{result=\"ok\",what=\"serving_cert\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_then_exits() {
    let mut env = Env::start().await;
    // A keep-alive connection that has served a request and sits idle: the
    // proxy closes it when the drain starts rather than serve more on it.
    let mut idle = env.conn(&env.a1).await;
    let ping = Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(idle.send(&ping).await.unwrap().status, 200);
    let upstream_bytes = env.upstream.bytes();
    let mut conn = env.conn(&env.a1).await;
    let slow = Req::post(HB, b"{}".to_vec())
        .header("x-test-delay-ms", "1500")
        .signed(&env.a1.key_id, &env.a1.secret);
    let in_flight = tokio::spawn(async move { conn.send(&slow).await });
    // Let the request reach the upstream, then ask the proxy to stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.upstream.bytes() == upstream_bytes {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.sigterm();
    assert!(
        idle.closed_by_peer(Duration::from_secs(5)).await,
        "an idle keep-alive connection stays open after SIGTERM"
    );
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes during drain");
    assert_eq!(resp.status, 200);
    let child = env.child.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "zen-proxy did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.code().is_some(),
        "killed by a signal instead of exiting: {status}"
    );
    // New connections are refused once it is gone.
    assert!(Conn::connect(env.agent_addr, env.a1.cfg.clone())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_certificate_serial_is_refused_after_reload() {
    let env = Env::start().await;
    let (_, cert) = x509_parser::parse_x509_certificate(&env.a1.leaf.der).unwrap();
    let raw = cert.tbs_certificate.raw_serial();
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len() - 1);
    let serial = hex::encode(&raw[first..]);
    write_atomic(
        &env.dir.path().join("revocations.json"),
        serde_json::json!({"version": 2, "revoked_spiffe_ids": [R1], "revoked_serials": [serial]})
            .to_string()
            .as_bytes(),
    );
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"ok\",what=\"revocations\"}",
        1.0,
    )
    .await;
    let req = Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    env.assert_refused(
        env.a1.cfg.clone(),
        env.agent_addr,
        &req,
        403,
        "identity_revoked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_reload_from_the_config_file_and_a_broken_file_keeps_them() {
    let env = Env::start().await;
    let allow = Req::get("/agent/v1/allowlist").signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &allow).await.unwrap().status, 404);

    let cfg = std::fs::read_to_string(env.config_path()).unwrap();
    write_atomic(
        &env.config_path(),
        format!("{cfg}  - {{ bogus: 1 }}\n").as_bytes(),
    );
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"error\",what=\"routes\"}",
        1.0,
    )
    .await;
    let hb = Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &hb).await.unwrap().status, 200);

    let added = format!(
        "{cfg}  - name: allowlist\n    listener: agent\n    methods: [GET]\n    path: /agent/v1/allowlist\n    upstream: control\n    auth: {{ spiffe: [\"spiffe://zen.local/cluster/*/agent/*\"], hmac: required }}\n"
    );
    write_atomic(&env.config_path(), added.as_bytes());
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"ok\",what=\"routes\"}",
        1.0,
    )
    .await;
    let allow = Req::get("/agent/v1/allowlist").signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &allow).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_bundle_rotation_admits_the_new_ca_after_reload() {
    let env = Env::start().await;
    let new_ca = super::pki::Ca::new("zen.local");
    let leaf = new_ca.leaf(A1, LeafOpts::default());
    let cfg = super::client::client_config(&env.ca.pem(), Some(&leaf), false);
    let req = || Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert!(super::client::once(env.agent_addr, cfg.clone(), &req())
        .await
        .is_err());

    let bundle = format!("{}{}", env.ca.pem(), new_ca.pem());
    write_atomic(&env.dir.path().join("bundle.pem"), bundle.as_bytes());
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"ok\",what=\"trust_bundles\"}",
        1.0,
    )
    .await;
    let resp = super::client::once(env.agent_addr, cfg, &req())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    // The old CA still works during the rotation.
    assert_eq!(env.agent(&env.a1, &req()).await.unwrap().status, 200);
}

/// TLS 1.3 resumption restores the client certificate from the session cache without running the
/// client-certificate verifier again; the handshake callback must check the chain against the
/// bundle as it is now, or a CA removed from the bundle keeps working for resumed sessions.
#[tokio::test(flavor = "multi_thread")]
async fn a_ca_removed_from_the_bundle_is_refused_on_a_resumed_session() {
    let env = Env::start().await;
    let new_ca = super::pki::Ca::new("zen.local");
    let leaf = new_ca.leaf(A1, LeafOpts::default());
    // One client config (so one session cache): the second connection resumes the first's session.
    let cfg = super::client::client_config(&env.ca.pem(), Some(&leaf), false);
    let req = || Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);

    let bundle = format!("{}{}", env.ca.pem(), new_ca.pem());
    write_atomic(&env.dir.path().join("bundle.pem"), bundle.as_bytes());
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"ok\",what=\"trust_bundles\"}",
        1.0,
    )
    .await;
    let first = super::client::once(env.agent_addr, cfg.clone(), &req())
        .await
        .unwrap();
    assert_eq!(first.status, 200);

    // The new CA leaves the bundle again.
    write_atomic(&env.dir.path().join("bundle.pem"), env.ca.pem().as_bytes());
    wait_metric(
        &env,
        "zen_proxy_reloads_total{result=\"ok\",what=\"trust_bundles\"}",
        2.0,
    )
    .await;
    let forwarded = env.upstream.requests().len();
    // A full handshake (no resumption) would be refused by the verifier: also correct.
    if let Ok(resp) = super::client::once(env.agent_addr, cfg, &req()).await {
        assert_eq!(
            (resp.status, resp.error_code()),
            (401, "client_cert_required".to_owned()),
            "a resumed session kept an identity whose CA left the bundle: {resp:?}"
        );
    }
    assert_eq!(
        env.upstream.requests().len(),
        forwarded,
        "a refused request reached the upstream"
    );
}

/// A live connection is held to the bundles as they are now, not as they were at its
/// handshake: a reload that keeps its CA keeps it serving; once its CA leaves the bundle, its
/// next request is refused and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_connection_is_refused_once_its_ca_leaves_the_bundle() {
    let env = Env::start().await;
    let new_ca = super::pki::Ca::new("zen.local");
    let leaf = new_ca.leaf(A1, LeafOpts::default());
    let cfg = super::client::client_config(&env.ca.pem(), Some(&leaf), false);
    let req = || Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    let reloads = "zen_proxy_reloads_total{result=\"ok\",what=\"trust_bundles\"}";
    let bundle_path = env.dir.path().join("bundle.pem");

    let both = format!("{}{}", env.ca.pem(), new_ca.pem());
    write_atomic(&bundle_path, both.as_bytes());
    wait_metric(&env, reloads, 1.0).await;
    let mut conn = Conn::connect(env.agent_addr, cfg).await.unwrap();
    assert_eq!(conn.send(&req()).await.unwrap().status, 200);

    // The same CAs, loaded again: a new generation, the chain verifies again, still served.
    write_atomic(&bundle_path, format!("{both}\n").as_bytes());
    wait_metric(&env, reloads, 2.0).await;
    assert_eq!(conn.send(&req()).await.unwrap().status, 200);

    // The connection's CA leaves the bundle.
    write_atomic(&bundle_path, env.ca.pem().as_bytes());
    wait_metric(&env, reloads, 3.0).await;
    let forwarded = env.upstream.requests().len();
    let before = env.refusals("client_cert_required").await;
    let resp = conn.send(&req()).await.unwrap();
    assert_eq!(
        (resp.status, resp.error_code()),
        (401, "client_cert_required".to_owned()),
        "a live connection kept an identity whose CA left the bundle: {resp:?}"
    );
    assert_eq!(env.refusals("client_cert_required").await, before + 1.0);
    assert_eq!(env.upstream.requests().len(), forwarded);
    // The agent's own connection, under the CA that stayed, is unaffected.
    assert_eq!(env.agent(&env.a1, &req()).await.unwrap().status, 200);
}
