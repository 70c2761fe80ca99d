//! GET /proxy/v1/state long-poll.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zen_control::operator::OpRequest;
use zen_trust::keys::{KeySet, KeySetFile, KeyStatus, ProxyState};
use zen_trust::spiffe::SpiffeId;

use crate::common::*;

#[tokio::test]
async fn only_proxies_may_sync_and_version_must_parse() {
    let h = Harness::new().await;
    h.call(agent_req(
        "GET",
        "/proxy/v1/state?version=0",
        &agent_id("c1", "a1"),
        None,
        None,
    ))
    .await
    .expect(403, "spiffe_forbidden");
    h.call(agent_req(
        "GET",
        "/proxy/v1/state?version=0",
        "spiffe://zen.local/operator/bob",
        None,
        None,
    ))
    .await
    .expect(403, "spiffe_forbidden");
    h.call(agent_req(
        "GET",
        "/proxy/v1/state?version=abc",
        "spiffe://zen.local/proxy/p1",
        None,
        None,
    ))
    .await
    .expect(400, "invalid_request");
}

#[tokio::test]
async fn state_is_a_usable_key_set_and_each_answer_is_audited() {
    let h = Harness::new().await;
    let e = h.enroll(&agent_id("c1", "a1")).await;
    let st = h.proxy_state(0).await;
    assert_eq!(st.trust_domain, "zen.local");
    assert!(st.trust_bundle_pem.contains("BEGIN CERTIFICATE"));
    assert!(st.version >= 2);
    let ks = KeySet::from_file(KeySetFile {
        version: st.version,
        keys: st.keys.clone(),
    })
    .unwrap();
    assert_eq!(
        ks.get(&e.bundle.hmac.key_id).unwrap().owner().to_string(),
        e.spiffe_id
    );
    h.proxy_state(0).await;
    let n = h
        .audit_kinds()
        .await
        .iter()
        .filter(|k| *k == "secret_distribution")
        .count();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_waits_for_a_change_and_times_out_otherwise() {
    let h = Arc::new(Harness::with(|c| c.long_poll_timeout = Duration::from_secs(1)).await);
    let v = h.proxy_state(0).await.version;
    // Nothing changes: the answer comes after the timeout with the same version.
    let t = Instant::now();
    let st = h.proxy_state(v).await;
    assert_eq!(st.version, v);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // A change wakes a waiting poll right away.
    let h2 = Arc::new(Harness::with(|c| c.long_poll_timeout = Duration::from_secs(30)).await);
    let v = h2.proxy_state(0).await.version;
    let poll = {
        let h2 = h2.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            (h2.proxy_state(v).await, t.elapsed())
        })
    };
    while h2.app.metrics.longpoll_waiters.get() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(metric(&h2.app, "zen_control_longpoll_waiters"), 1.0);
    h2.op(OpRequest::ClusterSetAllowlist {
        cluster: "c1".into(),
        entries: serde_json::json!([]),
    })
    .await;
    let (st, took) = poll.await.unwrap();
    assert!(st.version > v);
    assert_eq!(st.policy_version, 2);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(h2.app.metrics.longpoll_waiters.get(), 0);
}

/// The proxy state rebuilt from the store's rows with the `ProxyState` type, independently of
/// the in-memory mirror that serves `GET /proxy/v1/state`.
async fn state_from_store(h: &Harness) -> ProxyState {
    let app = &h.app;
    let now = h.now();
    let keys = app
        .store
        .live_keys(now)
        .await
        .unwrap()
        .iter()
        .map(|k| zen_control::keys::to_entry(&app.custody, k).unwrap())
        .collect();
    ProxyState {
        version: app.store.state_version().await.unwrap(),
        trust_domain: "zen.local".into(),
        trust_bundle_pem: app.ca.view().bundle_pem.clone(),
        keys,
        revoked_spiffe_ids: app
            .store
            .revoked_ids()
            .await
            .unwrap()
            .iter()
            .map(|i| SpiffeId::parse(i).unwrap())
            .collect(),
        revoked_serials: app
            .store
            .revoked_serials(now)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.serial)
            .collect(),
        policy_version: app.store.policy_version().await.unwrap(),
    }
}

/// Served state equals the store's; returns its version, which must have grown if `changed`.
async fn check(h: &Harness, step: &str, last: u64, changed: bool) -> u64 {
    let served = h.proxy_state(0).await;
    let rebuilt = state_from_store(h).await;
    assert_eq!(served, rebuilt, "after {step}");
    if changed {
        assert!(
            served.version > last,
            "after {step}: {} <= {last}",
            served.version
        );
    } else {
        assert_eq!(served.version, last, "after {step}");
    }
    served.version
}

#[tokio::test]
async fn served_state_equals_the_state_rebuilt_from_the_store_through_every_change() {
    let h = Harness::new().await;
    let (a1, a2, a3) = (
        agent_id("c1", "a1"),
        agent_id("c1", "a2"),
        agent_id("c2", "a3"),
    );
    let mut v = check(&h, "start", h.proxy_state(0).await.version, false).await;

    h.enroll_confirmed(&a1).await;
    v = check(&h, "enroll a1", v, true).await;
    h.enroll_confirmed(&a2).await;
    let e3 = h.enroll(&a3).await; // left unconfirmed
    v = check(&h, "enroll a2, a3", v, true).await;
    assert_eq!(h.proxy_state(0).await.keys.len(), 3);

    h.clock.advance(60);
    h.op(OpRequest::KeysRotate { spiffe_id: None }).await;
    v = check(&h, "forced rotation of every key", v, true).await;
    h.op(OpRequest::KeysRotate {
        spiffe_id: Some(a1.clone()),
    })
    .await;
    v = check(&h, "second rotation of a1", v, true).await;
    assert_eq!(h.proxy_state(0).await.keys.len(), 7);

    h.op(OpRequest::AgentRevoke {
        spiffe_id: a2.clone(),
    })
    .await;
    v = check(&h, "revoke a2", v, true).await;
    let st = h.proxy_state(0).await;
    assert_eq!(st.revoked_spiffe_ids.len(), 1);
    assert_eq!(st.revoked_serials.len(), 1);
    assert!(st
        .keys
        .iter()
        .filter(|k| k.owner.as_str() == a2)
        .all(|k| k.status == KeyStatus::Revoked));

    // a3's enrollment times out: its key is revoked and its serial listed, by the controller.
    h.clock.advance(h.cfg.confirm_timeout.as_secs() as i64);
    h.app.tick().await.unwrap();
    v = check(&h, "unconfirmed a3 expired", v, true).await;
    let st = h.proxy_state(0).await;
    assert!(st
        .keys
        .iter()
        .any(|k| k.key_id == e3.bundle.hmac.key_id && k.status == KeyStatus::Revoked));
    assert_eq!(st.revoked_serials.len(), 2);

    h.op(OpRequest::ClusterSetAllowlist {
        cluster: "c1".into(),
        entries: serde_json::json!(["x"]),
    })
    .await;
    v = check(&h, "allowlist", v, true).await;

    // The grace window ends: the keys cut short by the forced rotations leave the state without
    // any write (same version), then the controller's next rotation is a change again.
    h.clock.advance(h.cfg.key_grace.as_secs() as i64);
    v = check(&h, "forced-rotation keys ended", v, false).await;
    assert_eq!(h.proxy_state(0).await.keys.len(), 3);
    // The surviving keys were issued at T0 + 60; their grace window opens at end - grace.
    h.clock
        .set(T0 + 60 + (h.cfg.key_lifetime - h.cfg.key_grace).as_secs() as i64);
    h.app.tick().await.unwrap();
    v = check(&h, "rotation by the controller", v, true).await;

    // A restart loads the same state in one read.
    let h = h.reopen().await;
    check(&h, "restart", v, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_on_the_same_store_serves_the_first_ones_changes() {
    let h1 = Harness::with(|c| c.long_poll_timeout = Duration::from_secs(1)).await;
    let h2 = Harness::open_in(h1.dir.clone(), h1.cfg.clone(), h1.now()).await;
    let a1 = agent_id("c1", "a1");
    let v0 = h2.proxy_state(0).await.version;

    let e = h1.enroll_confirmed(&a1).await;
    let v1 = check(&h2, "enroll through replica 1", v0, true).await;
    assert_eq!(h2.proxy_state(0).await.keys[0].key_id, e.bundle.hmac.key_id);

    h1.op(OpRequest::AgentRevoke { spiffe_id: a1 }).await;
    // Replica 2 is not woken by replica 1's change: its long-poll answers at the timeout, with
    // the change.
    let t = Instant::now();
    let st = h2.proxy_state(v1).await;
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(st.version > v1);
    assert_eq!(st, state_from_store(&h2).await);
    assert_eq!(st.keys[0].status, KeyStatus::Revoked);
}
