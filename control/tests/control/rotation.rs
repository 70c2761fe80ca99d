//! Time-driven owners with a manual clock: HMAC key rotation and CA rotation.

use zen_control::operator::OpRequest;
use zen_trust::keys::KeyStatus;
use zen_trust::svid::pem_to_der_chain;
use zen_trust::time::UnixTime;

use crate::common::*;

fn issuer_cn(chain_pem: &str) -> String {
    let der = &pem_to_der_chain(chain_pem.as_bytes()).unwrap()[0];
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.issuer().to_string()
}

#[tokio::test]
async fn successor_key_is_issued_grace_before_expiry_and_both_are_valid() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll_confirmed(&id).await;
    let k1 = e.bundle.hmac.key_id.clone();
    let lifetime = 86_400;
    let grace = 3_600;

    h.clock.set(T0 + lifetime - grace - 1);
    h.app.tick().await.unwrap();
    assert_eq!(
        h.proxy_state(0).await.keys.len(),
        1,
        "not yet in the grace window"
    );

    h.clock.set(T0 + lifetime - grace);
    h.app.tick().await.unwrap();
    let st = h.proxy_state(0).await;
    assert_eq!(st.keys.len(), 2);
    let old = st.keys.iter().find(|k| k.key_id == k1).unwrap();
    let new = st.keys.iter().find(|k| k.key_id != k1).unwrap();
    assert_eq!(old.status, KeyStatus::Retiring);
    assert_eq!(
        old.not_after,
        UnixTime(T0 + lifetime),
        "old key keeps its full life"
    );
    assert_eq!(new.status, KeyStatus::Active);
    assert_eq!(new.owner.as_str(), id);
    assert_eq!(new.not_before, UnixTime(T0 + lifetime - grace));
    assert_eq!(new.not_after, UnixTime(T0 + 2 * lifetime - grace));
    assert_eq!(metric(&h.app, "zen_control_key_rotations_total"), 1.0);

    // A second pass does not issue yet another key.
    h.app.tick().await.unwrap();
    assert_eq!(h.proxy_state(0).await.keys.len(), 2);

    // The heartbeat tells the agent a new key is waiting.
    let hb = h
        .call(agent_req(
            "POST",
            "/agent/v1/heartbeat",
            &id,
            Some(&k1),
            Some(&serde_json::json!({"version": "1", "status": "ok"})),
        ))
        .await
        .json();
    assert_eq!(hb["keys"]["new_key_available"], true);
    assert_eq!(hb["keys"]["next_key_id"], new.key_id.as_str());

    // After the old key's end only the successor is distributed.
    h.clock.set(T0 + lifetime);
    h.app.tick().await.unwrap();
    let st = h.proxy_state(0).await;
    assert_eq!(
        st.keys
            .iter()
            .map(|k| k.key_id.as_str())
            .collect::<Vec<_>>(),
        [new.key_id.as_str()]
    );
    assert!(h.audit_kinds().await.iter().any(|k| k == "key_rotate"));
}

#[tokio::test]
async fn forced_rotation_shortens_the_old_key_to_the_grace_window() {
    let h = Harness::new().await;
    let a = h.enroll_confirmed(&agent_id("c1", "a1")).await;
    let b = h.enroll_confirmed(&agent_id("c1", "a2")).await;
    h.clock.advance(100);
    let v = h.op(OpRequest::KeysRotate { spiffe_id: None }).await;
    assert_eq!(v["rotated"].as_array().unwrap().len(), 2);
    let st = h.proxy_state(0).await;
    assert_eq!(st.keys.len(), 4);
    for old in [&a.bundle.hmac.key_id, &b.bundle.hmac.key_id] {
        let k = st.keys.iter().find(|k| &k.key_id == old).unwrap();
        assert_eq!(k.status, KeyStatus::Retiring);
        assert_eq!(k.not_after, UnixTime(T0 + 100 + 3600));
    }
    assert!(h
        .op_err(OpRequest::KeysRotate {
            spiffe_id: Some(agent_id("c1", "ghost"))
        })
        .await
        .contains("no live"));
}

#[tokio::test]
async fn ca_rotation_adds_first_switches_after_delay_removes_after_svid_ttl() {
    let h = Harness::with(|c| c.trust_bundle_file = Some(c.data_dir.join("out/bundle.pem"))).await;
    let bundle_file = h.data_dir().join("out/bundle.pem");
    let id = agent_id("c1", "a1");
    let e1 = h.enroll_confirmed(&id).await;
    let old_issuer = issuer_cn(&e1.bundle.svid_chain_pem);
    let roots = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
    assert_eq!(roots(&h.proxy_state(0).await.trust_bundle_pem), 1);

    let v = h.op(OpRequest::CaRotate).await;
    let new_ca = v["new_ca_id"].as_str().unwrap().to_string();
    // Joined the bundle, not issuing yet.
    assert_eq!(roots(&h.proxy_state(0).await.trust_bundle_pem), 2);
    assert_eq!(roots(&std::fs::read_to_string(&bundle_file).unwrap()), 2);
    let e2 = h.enroll(&agent_id("c1", "a2")).await;
    assert_eq!(issuer_cn(&e2.bundle.svid_chain_pem), old_issuer);
    assert!(h
        .op_err(OpRequest::CaRotate)
        .await
        .contains("already in progress"));

    // After the propagation delay issuance switches.
    h.clock.advance(h.cfg.ca_propagation_delay.as_secs() as i64);
    h.app.tick().await.unwrap();
    let e3 = h.enroll(&agent_id("c1", "a3")).await;
    let new_issuer = issuer_cn(&e3.bundle.svid_chain_pem);
    assert_ne!(new_issuer, old_issuer);
    assert!(new_issuer.contains(&new_ca), "{new_issuer}");
    assert_eq!(
        roots(&e3.bundle.trust_bundle_pem),
        2,
        "old root stays while its SVIDs live"
    );

    // The old root leaves once the longest SVID it could have signed has expired.
    h.clock.advance(86_400 - 1);
    h.app.tick().await.unwrap();
    assert_eq!(roots(&h.proxy_state(0).await.trust_bundle_pem), 2);
    h.clock.advance(1);
    h.app.tick().await.unwrap();
    assert_eq!(roots(&h.proxy_state(0).await.trust_bundle_pem), 1);
    assert_eq!(roots(&std::fs::read_to_string(&bundle_file).unwrap()), 1);
    let kinds = h.audit_kinds().await;
    for k in ["ca_create", "ca_rotate", "ca_activate", "ca_retire"] {
        assert!(kinds.iter().any(|x| x == k), "missing {k}");
    }
}

#[tokio::test]
async fn ca_issue_ttl_may_not_outlive_the_old_roots_removal() {
    let h = Harness::new().await;
    let id = "spiffe://zen.local/proxy/p1".to_string();
    let (_, c) = csr(&id);
    let issue = |ttl_secs| OpRequest::CaIssue {
        spiffe_id: id.clone(),
        csr_pem: c.clone(),
        dns: vec![],
        ips: vec![],
        ttl_secs,
    };
    let ttl = h.cfg.svid_ttl.as_secs();
    let e = h.op_err(issue(Some(ttl + 1))).await;
    assert!(e.contains("--ttl") && e.contains("svid.ttl"), "{e}");
    assert!(h.op(issue(Some(ttl))).await["serial"].is_string());
    assert!(h.op(issue(None)).await["serial"].is_string());
}

/// A CA change commits its state version before this process reloads its CA view, so a proxy
/// state built in between carries that version with the old bundle. A later version must follow
/// the reload: a proxy holding the in-between version is then answered at once, with the new bundle.
#[tokio::test]
async fn a_ca_change_is_followed_by_a_version_that_carries_its_bundle() {
    let h = Harness::new().await;
    let v0 = h.proxy_state(0).await.version;
    h.op(OpRequest::CaRotate).await;
    let started = std::time::Instant::now();
    // What a proxy may hold: the version the CA row committed with.
    let st = h.proxy_state(v0 + 1).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "a proxy at version {} waited {:?} for the new bundle",
        v0 + 1,
        started.elapsed()
    );
    assert!(st.version > v0 + 1, "version {}", st.version);
    assert_eq!(st.trust_bundle_pem.matches("BEGIN CERTIFICATE").count(), 2);
}
