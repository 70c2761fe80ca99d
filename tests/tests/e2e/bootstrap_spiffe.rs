//! BOOTSTRAP_REQUIRE_SPIFFE=true: the bootstrap listener wants a client certificate, and control
//! enrolls only when the proxy-verified client SPIFFE ID is the token's own (a workload that already
//! holds a pre-provisioned identity, re-enrolling into the mesh).

use std::path::Path;
use std::process::Command;

use http::{Method, StatusCode};
use zen_e2e::{binary, http_get, RecordingUpstream, Stack, StackOptions};

use crate::Agent;

const AGENT: &str = "spiffe://zen.local/cluster/c1/agent/provisioned";
const OTHER: &str = "spiffe://zen.local/cluster/c1/agent/someone-else";

/// `zen-agent enroll` against the stack, optionally with `--client-dir`; Ok(output) or Err(output).
fn enroll(
    stack: &Stack,
    token: &(String, String),
    out: &Path,
    client_dir: Option<&Path>,
) -> Result<String, String> {
    let mut cmd = Command::new(binary("zen-agent").unwrap());
    cmd.args(["enroll", "--server"])
        .arg(format!("https://localhost:{}", stack.bootstrap_port))
        .arg("--agent-server")
        .arg(format!("https://localhost:{}", stack.agent_port))
        .args(["--token-id", &token.0, "--spiffe-id", AGENT, "--ca-file"])
        .arg(stack.path("bundle.pem"))
        .arg("--out")
        .arg(out)
        .env("ZEN_TOKEN_SECRET", &token.1);
    if let Some(dir) = client_dir {
        cmd.arg("--client-dir").arg(dir);
    }
    let result = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    if result.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// An operator-issued SVID (`zen-control ca issue`): tls.crt, tls.key, ca.crt in `dir`.
fn provision(stack: &Stack, id: &str, dir: &Path) {
    let out = stack
        .control_cli(&[
            "ca",
            "issue",
            "--spiffe-id",
            id,
            "--out",
            dir.to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.contains("issued"), "{out}");
}

/// Sum of a control metric's series whose labels contain `labels`.
async fn control_metric(stack: &Stack, name: &str, labels: &str) -> f64 {
    let (_, text) = http_get(&stack.control_admin, "/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_require_spiffe_enrolls_only_with_the_tokens_own_svid() {
    let saas = RecordingUpstream::start().await.unwrap();
    let stack = Stack::start_with(
        saas.port,
        StackOptions {
            control_yaml: "enrollment:\n  require_spiffe: true\n".into(),
            proxy_env: vec![("BOOTSTRAP_REQUIRE_SPIFFE".into(), "true".into())],
            ..StackOptions::default()
        },
    )
    .await
    .unwrap();
    let token = stack.token(AGENT).unwrap();
    let out = stack.path("agent");

    // No client certificate: the proxy fails the TLS handshake (alert certificate_required), so no
    // byte reaches control and the token stays unused; zen-agent says what is missing.
    let err = enroll(&stack, &token, &out, None).unwrap_err();
    assert!(
        err.contains("requires a client certificate") && err.contains("--client-dir"),
        "{err}"
    );
    assert_eq!(
        control_metric(&stack, "zen_control_enrollments_total", "").await,
        0.0,
        "a refused handshake reached control"
    );

    // A valid SVID of the trust domain, but for another ID: the proxy verifies it and passes the
    // ID on; control refuses because it is not the token's.
    let other = stack.path("other-svid");
    provision(&stack, OTHER, &other);
    let err = enroll(&stack, &token, &out, Some(&other)).unwrap_err();
    assert!(
        err.contains("403") && err.contains("spiffe_mismatch") && err.contains(OTHER),
        "{err}"
    );
    assert_eq!(
        control_metric(
            &stack,
            "zen_control_enrollments_total",
            "result=\"spiffe_mismatch\""
        )
        .await,
        1.0
    );

    // The pre-provisioned SVID for the token's own ID: enrolled (the refusals did not use the
    // token up), and the new credentials work on the agent listener.
    let provisioned = stack.path("provisioned-svid");
    provision(&stack, AGENT, &provisioned);
    let ok = enroll(&stack, &token, &out, Some(&provisioned)).expect("enroll with the right SVID");
    assert!(ok.contains(&format!("enrolled {AGENT}")), "{ok}");
    let agent = Agent::load(&out);
    let r = agent
        .send(Method::GET, &stack.agent_url("/saas/v1/echo"), &[], None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(saas.count(), 1);

    // One use only, client certificate or not.
    let again = enroll(&stack, &token, &stack.path("again"), Some(&provisioned)).unwrap_err();
    assert!(again.contains("token_used"), "{again}");
}
