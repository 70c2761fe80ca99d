//! Benchmarks (ignored by default; figures go to the README):
//! `cargo test -p zen-control --release --test control -- --ignored --nocapture bench_`

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use zen_control::operator::OpRequest;
use zen_control::store::KeyRotation;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_enrollments_per_second() {
    let h = Arc::new(Harness::with(|c| c.token_ttl = std::time::Duration::from_secs(7200)).await);
    let n = 600;
    let mut reqs = Vec::with_capacity(n);
    for i in 0..n {
        let id = agent_id("bench", &format!("a{i}"));
        let t = h.token(&id).await;
        let (_, csr) = csr(&id);
        let body = serde_json::to_vec(&json!({"token_id": t.id, "csr_pem": csr})).unwrap();
        reqs.push(h.enroll_req(&t.id, &t.secret, &body));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per = n / 8;
    let mut it = reqs.into_iter();
    for _ in 0..8 {
        let chunk: Vec<_> = it.by_ref().take(per).collect();
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for r in chunk {
                assert_eq!(h.call(r).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "BENCH enrollments: {n} in {secs:.3}s = {:.0}/s (8 concurrent clients, in-process router, SQLite WAL)",
        n as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_long_poll_with_10000_keys() {
    let h = Harness::new().await;
    let mut rot = KeyRotation::default();
    for i in 0..10_000 {
        let owner = agent_id("bench", &format!("a{i}"));
        let (rec, _) = zen_control::keys::issue(&h.app.custody, &owner, T0, 86_400);
        rot.new_keys.push(rec);
    }
    let v = h.app.store.apply_key_rotation(rot).await.unwrap();
    h.app.published(v);
    let t = Instant::now();
    let st = h.proxy_state(0).await;
    let cold = t.elapsed();
    assert_eq!(st.keys.len(), 10_000);
    let mut warm = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = h
            .call(agent_req(
                "GET",
                "/proxy/v1/state?version=0",
                "spiffe://zen.local/proxy/p1",
                None,
                None,
            ))
            .await;
        warm.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    warm.sort();
    // A waiting poll woken by a change: one that touches no key, then one that revokes a key.
    let h = Arc::new(h);
    let policy = woken_by(
        &h,
        OpRequest::ClusterSetAllowlist {
            cluster: "c1".into(),
            entries: json!([]),
        },
    )
    .await;
    let revoke = woken_by(
        &h,
        OpRequest::AgentRevoke {
            spiffe_id: agent_id("bench", "a77"),
        },
    )
    .await;
    println!(
        "BENCH long-poll 10,000 keys: cold build {:?}, cached answer median {:?} (max {:?}), \
         change->answer {:?} (allowlist set), {:?} (agent revoke)",
        cold,
        warm[warm.len() / 2],
        warm[warm.len() - 1],
        policy,
        revoke
    );
}

/// Time from the `change` to the answer of a long-poll that was waiting for it.
async fn woken_by(h: &Arc<Harness>, change: OpRequest) -> std::time::Duration {
    let known = h.app.sync.version();
    let poll = {
        let h = h.clone();
        tokio::spawn(async move {
            let r = h
                .call(agent_req(
                    "GET",
                    &format!("/proxy/v1/state?version={known}"),
                    "spiffe://zen.local/proxy/p1",
                    None,
                    None,
                ))
                .await;
            (r, Instant::now())
        })
    };
    while h.app.metrics.longpoll_waiters.get() == 0 {
        tokio::task::yield_now().await;
    }
    let t = Instant::now();
    h.op(change).await;
    let (r, done) = poll.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json()["version"].as_u64().unwrap() > known);
    done - t
}
