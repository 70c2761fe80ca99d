//! The operator socket and the CLI binary against it; the admin listener.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::common::*;

fn cli(h: &Harness, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_zen-control"))
        .arg("--data-dir")
        .arg(h.data_dir())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_talks_to_the_socket() {
    let h = Harness::new().await;
    let listener = zen_control::operator::server::bind(&h.cfg.socket).unwrap();
    let mode = std::fs::metadata(&h.cfg.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let task = tokio::spawn(zen_control::operator::server::serve(
        Arc::clone(&h.app),
        listener,
    ));

    let id = agent_id("c1", "a1");
    let out = tokio::task::block_in_place(|| {
        cli(
            &h,
            &[
                "token",
                "create",
                "--spiffe-id",
                &id,
                "--ttl",
                "30m",
                "--output",
                "json",
            ],
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4);
    for k in ["token_id", "secret", "spiffe_id", "expires_at"] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["spiffe_id"], id.as_str());
    assert_eq!(
        v["expires_at"],
        zen_trust::time::UnixTime(T0 + 1800).to_rfc3339()
    );

    // The token works for enrollment.
    let t = Token {
        id: v["token_id"].as_str().unwrap().into(),
        secret: zen_trust::secret::Secret::from_base64(v["secret"].as_str().unwrap()).unwrap(),
        spiffe_id: id.clone(),
    };
    let (_, c) = csr(&id);
    assert_eq!(h.enroll_with(&t, &c).await.status, 200);

    let out = tokio::task::block_in_place(|| cli(&h, &["agent", "list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ds.yaml");
    std::fs::write(&f, "replicas: 2\nimage: zen:1\n").unwrap();
    let out = tokio::task::block_in_place(|| {
        cli(
            &h,
            &[
                "cluster",
                "set-desired-state",
                "--cluster",
                "c1",
                "--file",
                f.to_str().unwrap(),
            ],
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = h
        .call(agent_req(
            "GET",
            "/agent/v1/clusters/c1/desired-state",
            &id,
            None,
            None,
        ))
        .await;
    assert_eq!(r.json()["image"], "zen:1");

    let out = tokio::task::block_in_place(|| cli(&h, &["audit", "verify"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK"));

    let out = tokio::task::block_in_place(|| {
        cli(
            &h,
            &["agent", "revoke", "--spiffe-id", "spiffe://elsewhere/x"],
        )
    });
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust domain"));

    for args in [
        &["keys", "rotate"][..],
        &["ca", "rotate"][..],
        &["audit", "list"][..],
    ] {
        let out = tokio::task::block_in_place(|| cli(&h, args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    task.abort();
}

#[tokio::test]
async fn cli_without_a_server_says_where_it_looked() {
    let h = Harness::new().await;
    let out = cli(&h, &["agent", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("control.sock"));
}

#[tokio::test]
async fn admin_serves_metrics_health_and_readiness() {
    let h = Harness::new().await;
    h.enroll(&agent_id("c1", "a1")).await;
    let admin = zen_control::admin::router(h.app.clone());
    for (path, want) in [
        ("/healthz", "ok"),
        ("/readyz", "ready"),
        (
            "/metrics",
            "zen_control_enrollments_total{result=\"accepted\"} 1",
        ),
    ] {
        let r = admin
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(want), "{path}");
    }
    let text = h.app.metrics.render();
    for m in [
        "zen_control_svids_issued_total",
        "zen_control_active_agents",
        "zen_control_audit_events_total",
        "zen_control_longpoll_waiters",
        "zen_control_key_rotations_total",
    ] {
        assert!(text.contains(m), "missing {m}");
    }
}

#[test]
fn dev_config_parses_and_refuses_public_bind() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/dev/control.yaml");
    let cfg = zen_control::config::Config::load(std::path::Path::new(path)).unwrap();
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:8081");
    assert!(cfg.check_bind().is_ok());
    let bad = zen_control::config::Config::parse("listen: 0.0.0.0:8081\n").unwrap();
    let e = bad.check_bind().unwrap_err().to_string();
    assert!(e.contains("fronted_by_proxy"), "{e}");
}
