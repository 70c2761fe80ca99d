//! End-to-end: the real zen-control and zen-proxy binaries on loopback, agents enrolled with the real
//! zen-agent binary, requests through the proxy's agent listener.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use zen_agent::client::{self, Response, SigningKey};
use zen_agent::files::AgentFiles;
use zen_e2e::{RecordingUpstream, Stack};

// Each group of scenarios that a later change adds lives in its own module file beside this one,
// declared here.
mod agent_run;
mod bootstrap_spiffe;
mod ca_rotation;
mod proxy_svid;

const AGENT_C1: &str = "spiffe://zen.local/cluster/c1/agent/a1";

/// An enrolled agent's mTLS config and key, as `zen-agent request` would use them.
pub(crate) struct Agent {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) key: SigningKey,
}

impl Agent {
    pub(crate) fn load(dir: &Path) -> Agent {
        let files = AgentFiles::load(dir).expect("agent files");
        let tls = zen_agent::tls::mtls_config(&files.bundle, files.svid_chain, files.svid_key)
            .expect("mTLS config");
        Agent {
            tls,
            key: SigningKey {
                key_id: files.hmac.key_id.clone(),
                secret: Arc::new(files.hmac.secret),
            },
        }
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        client::send(
            self.tls.clone(),
            method,
            url,
            headers,
            body.map(|b| Bytes::from(b.to_owned())),
            Some(&self.key),
        )
        .await
        .expect("request reaches the proxy")
    }
}

pub(crate) async fn enrolled(stack: &Stack, id: &str, name: &str) -> Agent {
    let token = stack.token(id).expect("token");
    let dir = stack.path(name);
    stack.enroll(&token, id, &dir).expect("enroll");
    Agent::load(&dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_enroll_use_rotate_revoke() {
    let saas = RecordingUpstream::start().await.unwrap();
    let stack = Stack::start(saas.port).await.unwrap();
    let agent = enrolled(&stack, AGENT_C1, "a1").await;

    // Heartbeat and desired state with ETag / 304.
    let hb = agent
        .send(
            Method::POST,
            &stack.agent_url("/agent/v1/heartbeat"),
            &[],
            Some(r#"{"version":"1.0","status":"ok"}"#),
        )
        .await;
    assert_eq!(hb.status, StatusCode::OK, "{:?}", hb.body);
    let doc = stack.path("desired.json");
    std::fs::write(&doc, r#"{"replicas": 2}"#).unwrap();
    stack
        .control_cli(&[
            "cluster",
            "set-desired-state",
            "--cluster",
            "c1",
            "--file",
            doc.to_str().unwrap(),
        ])
        .unwrap();
    let url = stack.agent_url("/agent/v1/clusters/c1/desired-state");
    let first = agent.send(Method::GET, &url, &[], None).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let etag = first
        .headers
        .get("etag")
        .expect("ETag")
        .to_str()
        .unwrap()
        .to_owned();
    let again = agent
        .send(Method::GET, &url, &[("if-none-match", &etag)], None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);

    // Cluster binding: an agent of c1 reads neither c2's desired state nor posts its adapter sync.
    let other = agent
        .send(
            Method::GET,
            &stack.agent_url("/agent/v1/clusters/c2/desired-state"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (other.status, other.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("spiffe_forbidden"))
    );
    let sync = agent
        .send(
            Method::POST,
            &stack.agent_url("/agent/v1/clusters/c2/adapters/sync"),
            &[],
            Some("{}"),
        )
        .await;
    assert_eq!(
        (sync.status, sync.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("spiffe_forbidden"))
    );

    // HMAC key rotation while requests flow: the old key stays valid through the grace window, and
    // the successor works once the proxy has it.
    let echo = stack.agent_url("/saas/v1/echo");
    let flowing = {
        let (tls, key, echo) = (agent.tls.clone(), agent.key.clone(), echo.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..40 {
                let r = client::send(tls.clone(), Method::GET, &echo, &[], None, Some(&key))
                    .await
                    .unwrap();
                if r.status != StatusCode::OK {
                    failures.push((r.status, r.error_code()));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            failures
        })
    };
    stack
        .control_cli(&["keys", "rotate", "--spiffe-id", AGENT_C1])
        .unwrap();
    let keys = agent
        .send(
            Method::GET,
            &stack.agent_url("/agent/v1/hmac-key"),
            &[],
            None,
        )
        .await;
    assert_eq!(keys.status, StatusCode::OK, "{:?}", keys.body);
    let view: serde_json::Value = serde_json::from_slice(&keys.body).unwrap();
    let next: zen_trust::keys::HmacKeyFile =
        serde_json::from_value(view["next"].clone()).expect("a successor key");
    assert_eq!(
        flowing.await.unwrap(),
        vec![],
        "requests failed during rotation"
    );
    let rotated = Agent {
        tls: agent.tls.clone(),
        key: SigningKey {
            key_id: next.key_id.clone(),
            secret: Arc::new(next.secret),
        },
    };
    let started = Instant::now();
    loop {
        let r = rotated.send(Method::GET, &echo, &[], None).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(
            r.error_code().as_deref(),
            Some("key_unknown"),
            "{:?}",
            r.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "proxy did not learn the new key in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Revocation: refused by the proxy within 5 s, and the SaaS upstream sees nothing more.
    stack
        .control_cli(&["agent", "revoke", "--spiffe-id", AGENT_C1])
        .unwrap();
    let revoked_at = Instant::now();
    let forwarded_before = loop {
        let before = saas.count();
        let r = rotated.send(Method::GET, &echo, &[], None).await;
        if r.status != StatusCode::OK {
            // The key set and the revocation list are separate swaps: a
            // request overlapping the publish can check the old key set
            // (key still active) and then the new revocation list. Each
            // code refuses the revoked agent.
            assert!(
                matches!(
                    r.error_code().as_deref(),
                    Some("key_revoked" | "spiffe_forbidden" | "key_unknown" | "identity_revoked")
                ),
                "unexpected refusal {:?}",
                r.body
            );
            break before;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "revoked agent still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        saas.count(),
        forwarded_before,
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_down_proxy_keeps_enforcing_and_restarts_from_cache() {
    let saas = RecordingUpstream::start().await.unwrap();
    let mut stack = Stack::start(saas.port).await.unwrap();
    let agent = enrolled(&stack, AGENT_C1, "a1").await;
    let echo = stack.agent_url("/saas/v1/echo");

    stack.control.as_mut().unwrap().kill();
    let ok = agent.send(Method::GET, &echo, &[], None).await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "valid request refused with control down: {:?}",
        ok.body
    );
    let unsigned = client::send(agent.tls.clone(), Method::GET, &echo, &[], None, None)
        .await
        .unwrap();
    assert_eq!(unsigned.error_code().as_deref(), Some("signature_missing"));
    let to_control = agent
        .send(
            Method::POST,
            &stack.agent_url("/agent/v1/heartbeat"),
            &[],
            Some("{}"),
        )
        .await;
    assert_eq!(
        to_control.error_code().as_deref(),
        Some("upstream_unavailable")
    );

    // Restart the proxy while control is still down: it serves from its state cache.
    stack.proxy.as_mut().unwrap().kill();
    stack
        .start_proxy()
        .await
        .expect("proxy starts from its cache while control is down");
    let after_restart = agent.send(Method::GET, &echo, &[], None).await;
    assert_eq!(
        after_restart.status,
        StatusCode::OK,
        "{:?}",
        after_restart.body
    );
    assert!(
        stack
            .proxy_metric("zen_proxy_state_age_seconds", "")
            .await
            .unwrap()
            >= 0.0
    );

    // Control back: new keys flow again (a fresh enrollment's key reaches the proxy).
    stack.start_control().await.unwrap();
    let second = enrolled(&stack, "spiffe://zen.local/cluster/c1/agent/a2", "a2").await;
    let r = second.send(Method::GET, &echo, &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_raced_by_twenty_agents_enrolls_exactly_one() {
    let saas = RecordingUpstream::start().await.unwrap();
    let stack = Arc::new(Stack::start(saas.port).await.unwrap());
    let token = stack.token(AGENT_C1).unwrap();
    let mut racers = Vec::new();
    for i in 0..20 {
        let (stack, token) = (stack.clone(), token.clone());
        racers.push(tokio::task::spawn_blocking(move || {
            stack.enroll(&token, AGENT_C1, &stack.path(&format!("race{i}")))
        }));
    }
    let mut ok = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                e.to_string().contains("token_used"),
                "unexpected failure: {e}"
            ),
        }
    }
    assert_eq!(ok, 1, "exactly one enrollment per token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_client_curl_and_openssl_is_accepted_and_tamper_refused() {
    let saas = RecordingUpstream::start().await.unwrap();
    let stack = Stack::start(saas.port).await.unwrap();
    let dir = stack.path("a1");
    enrolled(&stack, AGENT_C1, "a1").await;
    let hmac: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("hmac.json")).unwrap()).unwrap();
    let key_id = hmac["key_id"].as_str().unwrap();
    let secret_b64 = hmac["secret"].as_str().unwrap();

    // The RFC 9421 signature base, written out by hand here — no project code computes it.
    let authority = format!("localhost:{}", stack.agent_port);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let params = format!(
        r#"("@method" "@authority" "@path");created={created};keyid="{key_id}";nonce="curl-{created}";alg="hmac-sha256""#
    );
    let base = format!(
        "\"@method\": GET\n\"@authority\": {authority}\n\"@path\": /saas/v1/echo\n\"@signature-params\": {params}"
    );
    let signature = openssl_hmac(secret_b64, &base);
    let curl = |path: &str, sig: &str| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cert"])
            .arg(dir.join("svid.pem"))
            .arg("--key")
            .arg(dir.join("svid.key"))
            .arg("--cacert")
            .arg(dir.join("bundle.pem"))
            .arg("-H")
            .arg(format!("Signature-Input: sig1={params}"))
            .arg("-H")
            .arg(format!("Signature: sig1=:{sig}:"))
            .arg(format!("https://{authority}{path}"))
            .output()
            .expect("curl runs")
    };
    let accepted = curl("/saas/v1/echo", &signature);
    assert_eq!(
        String::from_utf8_lossy(&accepted.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert_eq!(saas.count(), 1);

    // One byte changed in the path: the same signature no longer verifies (and nothing is forwarded).
    let tampered = curl("/saas/v1/echO", &signature);
    let code = String::from_utf8_lossy(&tampered.stdout).into_owned();
    assert!(
        code == "401" || code == "404",
        "tampered request answered {code}"
    );
    // One byte changed in the signature itself.
    let mut bad = signature.clone().into_bytes();
    bad[0] = if bad[0] == b'A' { b'B' } else { b'A' };
    let forged = curl("/saas/v1/echo", &String::from_utf8(bad).unwrap());
    assert_eq!(String::from_utf8_lossy(&forged.stdout), "401");
    assert_eq!(saas.count(), 1, "a refused request reached the upstream");
}

/// base64(HMAC-SHA256(secret, base)) computed by the openssl CLI.
fn openssl_hmac(secret_b64: &str, base: &str) -> String {
    use std::io::Write;
    let key_hex: String = {
        let out = std::process::Command::new("openssl")
            .args(["base64", "-d", "-A"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(secret_b64.as_bytes())?;
                c.wait_with_output()
            })
            .expect("openssl base64");
        out.stdout.iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl dgst -sha256 -mac HMAC -macopt hexkey:{key_hex} -binary | openssl base64 -A"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(base.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
