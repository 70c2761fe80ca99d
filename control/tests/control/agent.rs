//! Agent routes: desired state + ETag, heartbeat(s), adapter sync, allowlist, renew, hmac-key,
//! revocation.

use serde_json::json;
use zen_control::operator::OpRequest;
use zen_trust::svid::{check_svid_leaf, pem_to_der_chain};
use zen_trust::time::UnixTime;

use crate::common::*;

#[tokio::test]
async fn desired_state_etag_304_and_cluster_binding() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    h.call(agent_req(
        "GET",
        "/agent/v1/clusters/c1/desired-state",
        &id,
        None,
        None,
    ))
    .await
    .expect(404, "desired_state_unknown");
    h.op(OpRequest::ClusterSetDesiredState {
        cluster: "c1".into(),
        document: json!({"replicas": 3, "policies": ["a", "b"]}),
    })
    .await;
    let r = h
        .call(agent_req(
            "GET",
            "/agent/v1/clusters/c1/desired-state",
            &id,
            None,
            None,
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["replicas"], 3);
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    let mut req = agent_req(
        "GET",
        "/agent/v1/clusters/c1/desired-state",
        &id,
        None,
        None,
    );
    req.headers_mut()
        .insert("if-none-match", etag.parse().unwrap());
    let r = h.call(req).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    // A change gives a new ETag.
    h.op(OpRequest::ClusterSetDesiredState {
        cluster: "c1".into(),
        document: json!({"replicas": 4}),
    })
    .await;
    let mut req = agent_req(
        "GET",
        "/agent/v1/clusters/c1/desired-state",
        &id,
        None,
        None,
    );
    req.headers_mut()
        .insert("if-none-match", etag.parse().unwrap());
    let r = h.call(req).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.headers["etag"].to_str().unwrap(), etag);
    // Cluster c2's agent may not read c1; a proxy ID is not an agent; no header is 401.
    h.call(agent_req(
        "GET",
        "/agent/v1/clusters/c1/desired-state",
        &agent_id("c2", "a1"),
        None,
        None,
    ))
    .await
    .expect(403, "spiffe_forbidden");
    h.call(agent_req(
        "GET",
        "/agent/v1/clusters/c1/desired-state",
        "spiffe://zen.local/proxy/p1",
        None,
        None,
    ))
    .await
    .expect(403, "spiffe_forbidden");
    h.call(agent_req(
        "GET",
        "/agent/v1/clusters/c1/desired-state",
        "spiffe://other.td/cluster/c1/agent/a1",
        None,
        None,
    ))
    .await
    .expect(403, "spiffe_forbidden");
    let anon = axum::http::Request::builder()
        .uri("/agent/v1/clusters/c1/desired-state")
        .body(axum::body::Body::empty())
        .unwrap();
    h.call(anon).await.expect(401, "identity_missing");
    assert!(h
        .op_err(OpRequest::ClusterSetDesiredState {
            cluster: "../x".into(),
            document: json!({})
        })
        .await
        .contains("cluster id"));
}

#[tokio::test]
async fn heartbeat_records_and_validates() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll_confirmed(&id).await;
    h.clock.advance(30);
    let r = h
        .call(agent_req(
            "POST",
            "/agent/v1/heartbeat",
            &id,
            Some(&e.bundle.hmac.key_id),
            Some(&json!({"version": "1.2.3", "status": "healthy"})),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["keys"]["new_key_available"], false);
    // The current trust bundle rides on every heartbeat (how agents learn a rotation's new root).
    assert_eq!(
        r.json()["trust_bundle_pem"],
        e.bundle.trust_bundle_pem.as_str()
    );
    let agents = h.op(OpRequest::AgentList).await;
    assert_eq!(agents[0]["last_seen"], T0 + 30);
    assert_eq!(agents[0]["agent_version"], "1.2.3");
    assert_eq!(agents[0]["agent_status"], "healthy");

    h.call(agent_req(
        "POST",
        "/agent/v1/heartbeat",
        &id,
        None,
        Some(&json!({"version": "1", "status": "weird"})),
    ))
    .await
    .expect(400, "invalid_request");
    h.call(agent_req(
        "POST",
        "/agent/v1/heartbeat",
        &id,
        None,
        Some(&json!({"status": "ok"})),
    ))
    .await
    .expect(400, "invalid_request");
    h.call(agent_req(
        "POST",
        "/agent/v1/heartbeat",
        &id,
        None,
        Some(&json!({"version": "1", "status": "ok", "spiffe_id": agent_id("c1", "a2")})),
    ))
    .await
    .expect(400, "invalid_request");
    h.call(raw_req(
        "POST",
        "/agent/v1/heartbeat",
        &id,
        vec![b'x'; 65 * 1024],
    ))
    .await
    .expect(413, "body_too_large");
    h.call(agent_req(
        "POST",
        "/agent/v1/heartbeat",
        &agent_id("c9", "nobody"),
        None,
        Some(&json!({"version": "1", "status": "ok"})),
    ))
    .await
    .expect(404, "agent_unknown");
    h.call(agent_req(
        "POST",
        "/agent/v1/heartbeat",
        "spiffe://zen.local/proxy/p1",
        None,
        Some(&json!({"version": "1", "status": "ok"})),
    ))
    .await
    .expect(403, "spiffe_forbidden");
}

#[tokio::test]
async fn heartbeat_batch_reports_per_item() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    h.enroll_confirmed(&id).await;
    let body = json!({"heartbeats": [
        {"version": "1.0", "status": "healthy"},
        {"version": "", "status": "healthy"},
        {"status": "healthy"},
        {"version": "1.1", "status": "degraded", "spiffe_id": id},
        {"version": "1.1", "status": "ok", "spiffe_id": agent_id("c1", "a2")},
    ]});
    let r = h
        .call(agent_req(
            "POST",
            "/agent/v1/heartbeats",
            &id,
            None,
            Some(&body),
        ))
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(3))
    );
    let statuses: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "rejected", "rejected", "ok", "rejected"]);
    assert_eq!(v["results"][1]["error"], "invalid_heartbeat");
    let agents = h.op(OpRequest::AgentList).await;
    assert_eq!(agents[0]["agent_status"], "degraded");

    h.call(agent_req(
        "POST",
        "/agent/v1/heartbeats",
        &id,
        None,
        Some(&json!({"heartbeats": []})),
    ))
    .await
    .expect(400, "invalid_request");
    h.call(agent_req(
        "POST",
        "/agent/v1/heartbeats",
        &id,
        None,
        Some(&json!([1, 2])),
    ))
    .await
    .expect(400, "invalid_request");
}

#[tokio::test]
async fn adapter_sync_and_allowlist_are_per_cluster() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let report = json!({"adapters": [{"name": "k8s", "status": "ok"}, {"name": "helm"}]});
    let r = h
        .call(agent_req(
            "POST",
            "/agent/v1/clusters/c1/adapters/sync",
            &id,
            None,
            Some(&report),
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["adapters"], 2);
    let stored = h.app.store.get_adapter_report("c1").await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stored.body).unwrap();
    assert_eq!(v["adapters"][0]["name"], "k8s");
    assert_eq!(stored.tag, id, "reporter recorded");
    h.call(agent_req(
        "POST",
        "/agent/v1/clusters/c2/adapters/sync",
        &id,
        None,
        Some(&report),
    ))
    .await
    .expect(403, "spiffe_forbidden");
    h.call(agent_req(
        "POST",
        "/agent/v1/clusters/c1/adapters/sync",
        &id,
        None,
        Some(&json!({"adapters": [{"status": "x"}]})),
    ))
    .await
    .expect(400, "invalid_request");
    h.call(agent_req(
        "POST",
        "/agent/v1/clusters/c1/adapters/sync",
        &id,
        None,
        Some(&json!({"adapters": [{"name": "a"}, {"name": "a"}]})),
    ))
    .await
    .expect(400, "invalid_request");

    let r = h
        .call(agent_req("GET", "/agent/v1/allowlist", &id, None, None))
        .await;
    assert_eq!(
        r.json(),
        json!({"cluster_id": "c1", "version": 0, "entries": []})
    );
    h.op(OpRequest::ClusterSetAllowlist {
        cluster: "c1".into(),
        entries: json!({"entries": [{"host": "api.example.com", "port": 443}]}),
    })
    .await;
    let r = h
        .call(agent_req("GET", "/agent/v1/allowlist", &id, None, None))
        .await;
    assert_eq!(r.json()["version"], 1);
    assert_eq!(r.json()["entries"][0]["host"], "api.example.com");
    let r = h
        .call(agent_req(
            "GET",
            "/agent/v1/allowlist",
            &agent_id("c2", "a1"),
            None,
            None,
        ))
        .await;
    assert_eq!(r.json()["entries"], json!([]));
    assert!(h
        .op_err(OpRequest::ClusterSetAllowlist {
            cluster: "c1".into(),
            entries: json!("x")
        })
        .await
        .contains("list"));
}

#[tokio::test]
async fn renew_issues_for_own_id_only() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll_confirmed(&id).await;
    h.clock.advance(43_200);
    let (_, csr) = csr(&id);
    let r = h
        .call(agent_req(
            "POST",
            "/agent/v1/svid/renew",
            &id,
            Some(&e.bundle.hmac.key_id),
            Some(&json!({"csr_pem": csr})),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let chain = pem_to_der_chain(v["svid_chain_pem"].as_str().unwrap().as_bytes()).unwrap();
    let leaf = check_svid_leaf(&chain[0], UnixTime(h.now())).unwrap();
    assert_eq!(leaf.spiffe_id.as_str(), id);
    assert_eq!(leaf.not_after, UnixTime(h.now() + 86_400));
    assert_eq!(v["serial"], leaf.serial_hex);

    let (_, other) = csr_for_other();
    h.call(agent_req(
        "POST",
        "/agent/v1/svid/renew",
        &id,
        None,
        Some(&json!({"csr_pem": other})),
    ))
    .await
    .expect(403, "spiffe_mismatch");
    h.call(agent_req(
        "POST",
        "/agent/v1/svid/renew",
        &id,
        None,
        Some(&json!({"csr_pem": csr_with(&id, &WeakRsa::new())})),
    ))
    .await
    .expect(400, "key_too_weak");
    h.call(agent_req(
        "POST",
        "/agent/v1/svid/renew",
        &id,
        None,
        Some(&json!({"csr_pem": "junk"})),
    ))
    .await
    .expect(400, "csr_invalid");
    h.call(raw_req(
        "POST",
        "/agent/v1/svid/renew",
        &id,
        b"nope".to_vec(),
    ))
    .await
    .expect(400, "csr_invalid");
    h.call(raw_req(
        "POST",
        "/agent/v1/svid/renew",
        &id,
        vec![b'x'; 65 * 1024],
    ))
    .await
    .expect(413, "body_too_large");
    assert_eq!(
        metric(&h.app, "zen_control_renewals_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &h.app,
            "zen_control_renewals_total{result=\"spiffe_mismatch\"}"
        ),
        1.0
    );
    let kinds = h.audit_kinds().await;
    assert_eq!(kinds.iter().filter(|k| *k == "svid_renew").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "renew_refused").count(), 5);
}

fn csr_for_other() -> (rcgen::KeyPair, String) {
    csr(&agent_id("c1", "a2"))
}

#[tokio::test]
async fn hmac_key_returns_current_and_next_during_rotation() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll_confirmed(&id).await;
    let k1 = e.bundle.hmac.key_id.clone();
    let r = h
        .call(agent_req("GET", "/agent/v1/hmac-key", &id, Some(&k1), None))
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["current"]["key_id"], k1.as_str());
    assert_eq!(v["current"]["secret"], e.bundle.hmac.secret.to_base64());
    assert!(v["next"].is_null());
    assert_eq!(v["rotation_pending"], false);

    h.op(OpRequest::KeysRotate {
        spiffe_id: Some(id.clone()),
    })
    .await;
    let v = h
        .call(agent_req("GET", "/agent/v1/hmac-key", &id, Some(&k1), None))
        .await
        .json();
    assert_eq!(v["current"]["key_id"], k1.as_str());
    let k2 = v["next"]["key_id"].as_str().unwrap().to_string();
    assert_ne!(k2, k1);
    assert_eq!(v["rotation_pending"], true);
    // The old key now ends after the grace window.
    assert_eq!(v["current"]["not_after"], UnixTime(T0 + 3600).to_rfc3339());
    let hb = h
        .call(agent_req(
            "POST",
            "/agent/v1/heartbeat",
            &id,
            Some(&k1),
            Some(&json!({"version": "1", "status": "ok"})),
        ))
        .await
        .json();
    assert_eq!(hb["keys"]["new_key_available"], true);
    assert_eq!(hb["keys"]["next_key_id"], k2.as_str());
    // Signing with the new key: nothing newer is waiting.
    let v = h
        .call(agent_req("GET", "/agent/v1/hmac-key", &id, Some(&k2), None))
        .await
        .json();
    assert_eq!(v["current"]["key_id"], k2.as_str());
    assert!(v["next"].is_null());
    assert!(
        h.audit_kinds()
            .await
            .iter()
            .filter(|k| *k == "secret_read")
            .count()
            >= 3
    );
    // Unknown identity has no key.
    h.call(agent_req(
        "GET",
        "/agent/v1/hmac-key",
        &agent_id("c1", "ghost"),
        None,
        None,
    ))
    .await
    .expect(404, "key_unknown");
}

#[tokio::test]
async fn revoke_lists_id_and_serials_and_refuses_the_agent() {
    let h = Harness::new().await;
    let id = agent_id("c1", "a1");
    let e = h.enroll_confirmed(&id).await;
    let other = h.enroll_confirmed(&agent_id("c1", "a2")).await;
    let serial = check_svid_leaf(
        &pem_to_der_chain(e.bundle.svid_chain_pem.as_bytes()).unwrap()[0],
        UnixTime(T0),
    )
    .unwrap()
    .serial_hex;
    let before = h.app.sync.version();
    let v = h
        .op(OpRequest::AgentRevoke {
            spiffe_id: id.clone(),
        })
        .await;
    assert_eq!(v["keys_revoked"], 1);
    assert_eq!(v["serials_revoked"], json!([serial]));
    let st = h.proxy_state(before).await;
    assert!(st.version > before);
    assert_eq!(
        st.revoked_spiffe_ids
            .iter()
            .map(|i| i.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert_eq!(st.revoked_serials, vec![serial]);
    let k = st
        .keys
        .iter()
        .find(|k| k.key_id == e.bundle.hmac.key_id)
        .unwrap();
    assert_eq!(k.status, zen_trust::keys::KeyStatus::Revoked);
    let k2 = st
        .keys
        .iter()
        .find(|k| k.key_id == other.bundle.hmac.key_id)
        .unwrap();
    assert_eq!(
        k2.status,
        zen_trust::keys::KeyStatus::Active,
        "other agents untouched"
    );

    let (_, csr) = csr(&id);
    h.call(agent_req(
        "POST",
        "/agent/v1/svid/renew",
        &id,
        None,
        Some(&json!({"csr_pem": csr})),
    ))
    .await
    .expect(403, "spiffe_revoked");
    h.call(agent_req("GET", "/agent/v1/hmac-key", &id, None, None))
        .await
        .expect(403, "spiffe_revoked");
    let agents = h.op(OpRequest::AgentList).await;
    assert_eq!(agents[0]["status"], "revoked");
    assert!(h
        .op_err(OpRequest::TokenCreate {
            spiffe_id: id.clone(),
            ttl_secs: None
        })
        .await
        .contains("revoked"));
    assert!(h.audit_kinds().await.iter().any(|k| k == "agent_revoke"));
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let h = Harness::new().await;
    h.call(agent_req(
        "GET",
        "/agent/v1/nope",
        &agent_id("c1", "a1"),
        None,
        None,
    ))
    .await
    .expect(404, "not_found");
}
