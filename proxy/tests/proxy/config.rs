//! Fail-closed start rules: the binary refuses to start, non-zero, with one
//! line naming the YAML path; `check` prints every error.

use std::process::Command;

use super::harness::{Env, Opts};

fn run_bin(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zen-proxy"))
        .args(args)
        .arg(config)
        .env("RUST_LOG", "off")
        .env_remove("BOOTSTRAP_REQUIRE_SPIFFE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn refuses_to_start(edit: impl FnOnce(&Env, String) -> String, expect: &str) {
    let env = Env::prepare(Opts::default()).await;
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(env.config_path(), edit(&env, text)).unwrap();
    let (code, _, stderr) = run_bin(&["run", "--config"], &env.config_path());
    assert_ne!(code, 0, "started anyway: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one clear line, got: {stderr}");
    assert!(
        lines[0].starts_with("zen-proxy: refusing to start:"),
        "{stderr}"
    );
    assert!(lines[0].contains(expect), "want {expect:?} in: {stderr}");
}

#[tokio::test]
async fn refuses_client_auth_not_required() {
    refuses_to_start(
        |_, t| t.replace("client_auth: required", "client_auth: optional"),
        "listeners.agent.client_auth",
    )
    .await;
}

#[tokio::test]
async fn refuses_agent_route_with_hmac_off() {
    refuses_to_start(
        |_, t| t.replace("agent/*\"], hmac: required }", "agent/*\"], hmac: off }"),
        "routes[0].auth.hmac",
    )
    .await;
}

#[tokio::test]
async fn refuses_missing_cert_file() {
    refuses_to_start(
        |env, t| {
            std::fs::remove_file(env.dir.path().join("tls.crt")).unwrap();
            t
        },
        "tls.cert_file",
    )
    .await;
}

#[tokio::test]
async fn refuses_unparsable_bundle() {
    refuses_to_start(
        |env, t| {
            std::fs::write(env.dir.path().join("bundle.pem"), "not a pem").unwrap();
            t
        },
        "trust_bundles[0].file",
    )
    .await;
}

#[tokio::test]
async fn refuses_unparsable_key() {
    refuses_to_start(
        |env, t| {
            std::fs::write(
                env.dir.path().join("tls.key"),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            )
            .unwrap();
            t
        },
        "tls.key_file",
    )
    .await;
}

#[tokio::test]
async fn refuses_key_owner_that_is_not_a_spiffe_id() {
    refuses_to_start(
        |env, t| {
            let p = env.dir.path().join("keys.json");
            let keys = std::fs::read_to_string(&p).unwrap();
            std::fs::write(
                &p,
                keys.replacen(
                    "spiffe://zen.local/cluster/c1/agent/a1",
                    "https://zen.local/a1",
                    1,
                ),
            )
            .unwrap();
            t
        },
        "key_set_file",
    )
    .await;
}

#[tokio::test]
async fn check_prints_every_error_with_its_yaml_path() {
    let env = Env::prepare(Opts::default()).await;
    let (code, out, _) = run_bin(&["check", "--config"], &env.config_path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok"));

    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace("client_auth: required", "client_auth: none")
        .replace("agent/*\"], hmac: required }", "agent/*\"], hmac: off }");
    std::fs::write(env.config_path(), text).unwrap();
    let (code, out, _) = run_bin(&["check", "--config"], &env.config_path());
    assert_eq!(code, 1);
    assert!(out.contains("listeners.agent.client_auth"), "{out}");
    assert!(out.contains("routes[0].auth.hmac"), "{out}");
    assert!(out.contains("routes[1].auth.hmac"), "{out}");

    std::fs::write(env.config_path(), "listeners: {}\nbogus: 1\n").unwrap();
    let (code, out, _) = run_bin(&["check", "--config"], &env.config_path());
    assert_eq!(code, 1);
    assert!(out.contains("line"), "{out}");
}
