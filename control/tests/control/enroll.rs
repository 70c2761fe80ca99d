//! POST /enroll/v1/request and /enroll/v1/confirm, every refusal of the issue, concurrency.

use std::sync::Arc;

use serde_json::json;
use zen_control::operator::OpRequest;
use zen_trust::secret::Secret;
use zen_trust::svid::{check_svid_leaf, pem_to_der_chain};
use zen_trust::time::UnixTime;

use crate::common::*;

#[tokio::test]
async fn enrollment_returns_a_complete_bundle() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll(&id).await;
    let b = &e.bundle;
    assert_eq!(b.spiffe_id.as_str(), id);
    assert_eq!(b.expires_at, UnixTime(T0 + 86_400));
    assert!(b.renew_after > UnixTime(T0) && b.renew_after < b.expires_at);
    assert_eq!(b.hmac.secret.expose().len(), 32);
    assert_eq!(b.hmac.not_after, UnixTime(T0 + 86_400));
    let chain = pem_to_der_chain(b.svid_chain_pem.as_bytes()).unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    let leaf = check_svid_leaf(&chain[0], UnixTime(T0)).unwrap();
    assert_eq!(leaf.spiffe_id.as_str(), id);
    assert_eq!(leaf.serial_hex.len(), 32);
    assert!(b.trust_bundle_pem.contains("BEGIN CERTIFICATE"));

    // The key is in the proxies' key set, owned by the enrolled ID.
    let st = h.proxy_state(0).await;
    let k = st.keys.iter().find(|k| k.key_id == b.hmac.key_id).unwrap();
    assert_eq!(k.owner.as_str(), id);
    assert_eq!(k.secret.expose(), b.hmac.secret.expose());

    let kinds = h.audit_kinds().await;
    for k in [
        "token_create",
        "token_use",
        "svid_issue",
        "key_issue",
        "enrollment_accepted",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "missing audit {k} in {kinds:?}"
        );
    }
    assert_eq!(
        metric(&h.app, "zen_control_enrollments_total{result=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        metric(&h.app, "zen_control_svids_issued_total{kind=\"enroll\"}"),
        1.0
    );
}

/// After a refusal the token is still unused and works.
async fn still_usable(h: &Harness, t: &Token) {
    let (_, csr) = csr(&t.spiffe_id);
    let r = h.enroll_with(t, &csr).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

async fn refused_count(h: &Harness) -> usize {
    h.audit_kinds()
        .await
        .iter()
        .filter(|k| *k == "enrollment_refused")
        .count()
}

#[tokio::test]
async fn malformed_json_is_csr_invalid_and_changes_nothing() {
    let h = Harness::new().await;
    let t = h.token(&agent_id("c1", "a1")).await;
    let r = h.call(h.enroll_req(&t.id, &t.secret, b"{not json")).await;
    r.expect(400, "csr_invalid");
    assert_eq!(refused_count(&h).await, 1);
    still_usable(&h, &t).await;
}

#[tokio::test]
async fn garbage_and_tampered_csrs_are_csr_invalid() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let t = h.token(&id).await;
    h.enroll_with(
        &t,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .await
    .expect(400, "csr_invalid");
    h.enroll_with(&t, "hello").await.expect(400, "csr_invalid");
    // A CSR without any URI SAN.
    let key = rcgen::KeyPair::generate().unwrap();
    let no_san = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    h.enroll_with(&t, &no_san).await.expect(400, "csr_invalid");
    assert_eq!(refused_count(&h).await, 3);
    still_usable(&h, &t).await;
}

#[tokio::test]
async fn unknown_used_and_expired_tokens_are_refused() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    // Unknown.
    let ghost = Token {
        id: "tok-000000000000000000000000".into(),
        secret: Secret::generate(),
        spiffe_id: id.clone(),
    };
    let (_, csr1) = csr(&id);
    h.enroll_with(&ghost, &csr1)
        .await
        .expect(401, "token_unknown");
    // Used.
    let t = h.token(&id).await;
    assert_eq!(h.enroll_with(&t, &csr1).await.status, 200);
    h.enroll_with(&t, &csr1).await.expect(401, "token_used");
    // Expired (default TTL 1 h).
    let t2 = h.token(&agent_id("c1", "a2")).await;
    h.clock.advance(3600);
    let (_, csr2) = csr(&t2.spiffe_id);
    h.enroll_with(&t2, &csr2).await.expect(401, "token_expired");
    assert_eq!(refused_count(&h).await, 3);
    assert_eq!(
        metric(
            &h.app,
            "zen_control_enrollments_total{result=\"token_expired\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn csr_for_another_id_is_spiffe_mismatch() {
    let h = Harness::new().await;
    let t = h.token(&agent_id("c1", "a1")).await;
    let (_, other) = csr(&agent_id("c1", "a2"));
    h.enroll_with(&t, &other)
        .await
        .expect(403, "spiffe_mismatch");
    let (_, other_cluster) = csr(&agent_id("c2", "a1"));
    h.enroll_with(&t, &other_cluster)
        .await
        .expect(403, "spiffe_mismatch");
    assert_eq!(refused_count(&h).await, 2);
    still_usable(&h, &t).await;
}

#[tokio::test]
async fn weak_or_disallowed_keys_are_key_too_weak() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let t = h.token(&id).await;
    h.enroll_with(&t, &csr_with(&id, &WeakRsa::new()))
        .await
        .expect(400, "key_too_weak");
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    h.enroll_with(&t, &csr_with(&id, &p384))
        .await
        .expect(400, "key_too_weak");
    // Ed25519 is allowed.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert_eq!(h.enroll_with(&t, &csr_with(&id, &ed)).await.status, 200);
}

#[tokio::test]
async fn body_over_64k_is_413() {
    let h = Harness::new().await;
    let t = h.token(&agent_id("c1", "a1")).await;
    let big =
        serde_json::to_vec(&json!({"token_id": t.id, "csr_pem": "A".repeat(70 * 1024)})).unwrap();
    h.call(h.enroll_req(&t.id, &t.secret, &big))
        .await
        .expect(413, "body_too_large");
    still_usable(&h, &t).await;
}

#[tokio::test]
async fn signature_is_required_and_checked() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let t = h.token(&id).await;
    let (_, csr) = csr(&id);
    let body = serde_json::to_vec(&json!({"token_id": t.id, "csr_pem": csr})).unwrap();
    // No signature at all.
    let unsigned = axum::http::Request::builder()
        .method("POST")
        .uri("/enroll/v1/request")
        .header("host", HOST)
        .body(axum::body::Body::from(body.clone()))
        .unwrap();
    h.call(unsigned).await.expect(401, "signature_missing");
    // Signed with the wrong secret.
    h.call(h.enroll_req(&t.id, &Secret::generate(), &body))
        .await
        .expect(401, "signature_invalid");
    // Signed for a different host than the one received.
    let mut req = h.enroll_req(&t.id, &t.secret, &body);
    req.headers_mut()
        .insert("host", "evil.test:8443".parse().unwrap());
    h.call(req).await.expect(401, "signature_invalid");
    // Stale signature.
    let old = signed_request(
        "POST",
        "/enroll/v1/request",
        &t.id,
        &t.secret,
        &body,
        h.now() - 1000,
        &[],
    );
    h.call(old).await.expect(401, "signature_stale");
    still_usable(&h, &t).await;
}

#[tokio::test]
async fn require_spiffe_needs_the_proxy_verified_matching_id() {
    let h = Harness::with(|c| c.require_spiffe = true).await;
    let id = agent_id("c1", "a1");
    let t = h.token(&id).await;
    let (_, csr) = csr(&id);
    h.enroll_with(&t, &csr).await.expect(403, "spiffe_mismatch");
    let body = serde_json::to_vec(&json!({"token_id": t.id, "csr_pem": csr})).unwrap();
    let other = agent_id("c1", "zz");
    let r = signed_request(
        "POST",
        "/enroll/v1/request",
        &t.id,
        &t.secret,
        &body,
        h.now(),
        &[("x-zen-spiffe-id", &other)],
    );
    h.call(r).await.expect(403, "spiffe_mismatch");
    let r = signed_request(
        "POST",
        "/enroll/v1/request",
        &t.id,
        &t.secret,
        &body,
        h.now(),
        &[("x-zen-spiffe-id", &id)],
    );
    assert_eq!(h.call(r).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_uses_of_one_token_yield_one_enrollment() {
    let h = Arc::new(Harness::new().await);
    let id = agent_id("c1", "a1");
    let t = h.token(&id).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (_, csr) = csr(&id);
        let body = serde_json::to_vec(&json!({"token_id": t.id, "csr_pem": csr})).unwrap();
        let req = h.enroll_req(&t.id, &t.secret, &body);
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.call(req).await }));
    }
    let mut ok = 0;
    let mut used = 0;
    for task in tasks {
        let r = task.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            401 if r.code() == "token_used" => used += 1,
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!((ok, used), (1, 49));
    let agents = h.op(OpRequest::AgentList).await;
    assert_eq!(agents.as_array().unwrap().len(), 1);
    let st = h.proxy_state(0).await;
    assert_eq!(st.keys.len(), 1, "exactly one HMAC key issued");
    let kinds = h.audit_kinds().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "enrollment_accepted").count(),
        1
    );
    assert_eq!(kinds.iter().filter(|k| *k == "svid_issue").count(), 1);
}

#[tokio::test]
async fn confirm_requires_the_new_key_and_own_identity() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll(&id).await;
    let body = json!({"enrollment_id": e.bundle.enrollment_id});
    // Another identity.
    h.call(agent_req(
        "POST",
        "/enroll/v1/confirm",
        &agent_id("c1", "a2"),
        Some(&e.bundle.hmac.key_id),
        Some(&body),
    ))
    .await
    .expect(403, "spiffe_mismatch");
    // Not the issued key.
    h.call(agent_req(
        "POST",
        "/enroll/v1/confirm",
        &id,
        Some("k-other"),
        Some(&body),
    ))
    .await
    .expect(403, "spiffe_forbidden");
    // Not the issued SVID (proxy-reported certificate hash).
    let mut req = agent_req(
        "POST",
        "/enroll/v1/confirm",
        &id,
        Some(&e.bundle.hmac.key_id),
        Some(&body),
    );
    req.headers_mut().insert(
        "x-forwarded-client-cert",
        format!("Hash={};URI={id}", "ab".repeat(32))
            .parse()
            .unwrap(),
    );
    h.call(req).await.expect(403, "spiffe_forbidden");
    // No identity header.
    let anon = axum::http::Request::builder()
        .method("POST")
        .uri("/enroll/v1/confirm")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    h.call(anon).await.expect(401, "identity_missing");
    // Unknown enrollment.
    h.call(agent_req(
        "POST",
        "/enroll/v1/confirm",
        &id,
        Some(&e.bundle.hmac.key_id),
        Some(&json!({"enrollment_id": "enr-nope"})),
    ))
    .await
    .expect(404, "enrollment_unknown");
    // Malformed body.
    h.call(raw_req("POST", "/enroll/v1/confirm", &id, b"{".to_vec()))
        .await
        .expect(400, "invalid_request");

    // The right SVID hash and key confirm; a repeat is idempotent.
    let leaf = pem_to_der_chain(e.bundle.svid_chain_pem.as_bytes()).unwrap();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&leaf[0]));
    let mut req = agent_req(
        "POST",
        "/enroll/v1/confirm",
        &id,
        Some(&e.bundle.hmac.key_id),
        Some(&body),
    );
    req.headers_mut().insert(
        "x-forwarded-client-cert",
        format!("Hash={hash};URI={id}").parse().unwrap(),
    );
    let r = h.call(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "confirmed");
    let r = h
        .call(agent_req(
            "POST",
            "/enroll/v1/confirm",
            &id,
            Some(&e.bundle.hmac.key_id),
            Some(&body),
        ))
        .await;
    assert_eq!(r.status, 200);
    let agents = h.op(OpRequest::AgentList).await;
    assert_eq!(agents[0]["status"], "active");
    assert_eq!(metric(&h.app, "zen_control_active_agents"), 1.0);
    assert!(h
        .audit_kinds()
        .await
        .iter()
        .any(|k| k == "enrollment_confirm"));
}

#[tokio::test]
async fn unconfirmed_enrollment_is_revoked_after_the_timeout() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll(&id).await;
    let leaf = check_svid_leaf(
        &pem_to_der_chain(e.bundle.svid_chain_pem.as_bytes()).unwrap()[0],
        UnixTime(T0),
    )
    .unwrap();
    // Just before the deadline nothing happens.
    h.clock.advance(h.cfg.confirm_timeout.as_secs() as i64 - 1);
    h.app.tick().await.unwrap();
    let st = h.proxy_state(0).await;
    assert!(st.revoked_serials.is_empty());
    // At the deadline the key is revoked and the serial listed.
    h.clock.advance(1);
    h.app.tick().await.unwrap();
    let st = h.proxy_state(0).await;
    assert_eq!(st.revoked_serials, vec![leaf.serial_hex.clone()]);
    let k = st
        .keys
        .iter()
        .find(|k| k.key_id == e.bundle.hmac.key_id)
        .unwrap();
    assert_eq!(k.status, zen_trust::keys::KeyStatus::Revoked);
    // Too late to confirm.
    h.call(agent_req(
        "POST",
        "/enroll/v1/confirm",
        &id,
        Some(&e.bundle.hmac.key_id),
        Some(&json!({"enrollment_id": e.bundle.enrollment_id})),
    ))
    .await
    .expect(409, "enrollment_not_pending");
    assert!(h
        .audit_kinds()
        .await
        .iter()
        .any(|k| k == "enrollment_expired"));
}

/// A key rotation while the enrollment waits for its confirm issues the identity a successor key;
/// when the confirm window closes, that successor must go with the enrollment's own key.
#[tokio::test]
async fn unconfirmed_enrollment_expiry_revokes_keys_rotated_meanwhile() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll(&id).await;
    h.clock.advance(10);
    h.op(OpRequest::KeysRotate {
        spiffe_id: Some(id.clone()),
    })
    .await;
    let st = h.proxy_state(0).await;
    let owned: Vec<_> = st.keys.iter().filter(|k| k.owner.as_str() == id).collect();
    assert!(
        owned.len() >= 2,
        "the forced rotation issued a successor: {owned:?}"
    );

    h.clock.advance(h.cfg.confirm_timeout.as_secs() as i64);
    h.app.tick().await.unwrap();
    let st = h.proxy_state(0).await;
    let live: Vec<_> = st
        .keys
        .iter()
        .filter(|k| k.owner.as_str() == id && k.status != zen_trust::keys::KeyStatus::Revoked)
        .map(|k| k.key_id.clone())
        .collect();
    assert!(
        live.is_empty(),
        "keys of an expired, never-confirmed enrollment still usable: {live:?} (enrollment key {})",
        e.bundle.hmac.key_id
    );
}

#[tokio::test]
async fn token_create_validates_its_input() {
    let h = Harness::new().await;
    let e = h
        .op_err(OpRequest::TokenCreate {
            spiffe_id: "spiffe://other.td/x".into(),
            ttl_secs: None,
        })
        .await;
    assert!(e.contains("trust domain"), "{e}");
    let e = h
        .op_err(OpRequest::TokenCreate {
            spiffe_id: "not a spiffe id".into(),
            ttl_secs: None,
        })
        .await;
    assert!(e.contains("not a valid SPIFFE ID"), "{e}");
    let e = h
        .op_err(OpRequest::TokenCreate {
            spiffe_id: agent_id("c1", "a1"),
            ttl_secs: Some(86400 * 30),
        })
        .await;
    assert!(e.contains("--ttl"), "{e}");
    let v = h
        .op(OpRequest::TokenCreate {
            spiffe_id: agent_id("c1", "a1"),
            ttl_secs: Some(600),
        })
        .await;
    let secret = Secret::from_base64(v["secret"].as_str().unwrap()).unwrap();
    assert!(secret.expose().len() >= 32);
    assert_eq!(v["expires_at"], UnixTime(T0 + 600).to_rfc3339());
}
