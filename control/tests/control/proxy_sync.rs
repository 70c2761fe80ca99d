//! GET /proxy/v1/state long-poll.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zen_control::operator::OpRequest;
use zen_trust::keys::{KeySet, KeySetFile};

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
