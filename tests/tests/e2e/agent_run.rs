//! `zen-agent run` — the real binary against the real stack: heartbeats reach control, the desired
//! state reaches the agent's output file (and unchanged polls are answered 304), the SVID is renewed
//! before it expires, a key rotation moves hmac.json to the new key, requests keep succeeding
//! throughout, and SIGTERM stops the agent with exit status 0.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use zen_e2e::{binary, wait_until, Proc, RecordingUpstream, Stack, StackOptions};
use zen_trust::svid::{check_svid_leaf, pem_to_der_chain, SvidLeaf};
use zen_trust::time::UnixTime;

use super::{Agent, AGENT_C1};

fn leaf(dir: &Path) -> SvidLeaf {
    let pem = std::fs::read(dir.join("svid.pem")).expect("svid.pem");
    let chain = pem_to_der_chain(&pem).expect("svid.pem chain");
    check_svid_leaf(&chain[0], UnixTime::now()).expect("svid.pem leaf")
}

fn key_id(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("hmac.json")).expect("hmac.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("hmac.json JSON");
    v["key_id"].as_str().expect("key_id").to_owned()
}

/// The agent's row in `zen-control agent list --output json`.
fn agent_row(stack: &Stack) -> serde_json::Value {
    let out = stack
        .control_cli(&["agent", "list", "--output", "json"])
        .expect("agent list");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("agent list JSON");
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|a| a["spiffe_id"] == AGENT_C1)
        .cloned()
        .unwrap_or_default()
}

fn last_seen(stack: &Stack) -> i64 {
    agent_row(stack)["last_seen"].as_i64().unwrap_or(0)
}

/// Waits until control records a heartbeat newer than `after` (whole seconds).
async fn heartbeat_after(stack: &Stack, after: i64, what: &str) {
    wait_until(what, Duration::from_secs(10), || async move {
        last_seen(stack) > after
    })
    .await
    .unwrap();
}

fn set_desired_state(stack: &Stack, doc: &str) {
    let file = stack.path("desired-in.json");
    std::fs::write(&file, doc).unwrap();
    let out = stack
        .control_cli(&[
            "cluster",
            "set-desired-state",
            "--cluster",
            "c1",
            "--file",
            &file.display().to_string(),
        ])
        .unwrap();
    assert!(out.contains("ETag"), "{out}");
}

async fn desired_file_is(path: &Path, want: serde_json::Value) {
    let path = path.to_owned();
    wait_until(
        "the desired state in the agent's file",
        Duration::from_secs(10),
        || {
            let (path, want) = (path.clone(), want.clone());
            async move {
                std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| v == want)
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_heartbeats_polls_desired_state_renews_svid_and_follows_key_rotation() {
    let saas = RecordingUpstream::start().await.unwrap();
    // The shortest SVID control allows; renew_fraction 0.2 brings the renewal ~12 s after enrollment.
    let stack = Stack::start_with(
        saas.port,
        StackOptions {
            control_yaml: "svid:\n  ttl: 60s\n".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = stack.path("a1");
    stack
        .enroll(&stack.token(AGENT_C1).unwrap(), AGENT_C1, &dir)
        .unwrap();
    let enrolled = leaf(&dir);
    let first_key = key_id(&dir);

    let desired = stack.path("desired-state.json");
    let config = stack.path("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "files_dir: {dir}\nserver: {server}\nheartbeat_interval: 1s\n\
             desired_state_interval: 500ms\ndesired_state_file: {desired}\nrenew_fraction: 0.2\n\
             backoff_min: 200ms\nbackoff_max: 2s\n",
            dir = dir.display(),
            server = stack.agent_url(""),
            desired = desired.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(binary("zen-agent").unwrap());
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "zen_agent=debug");
    let mut agent = Proc::spawn("zen-agent-run", &mut cmd, stack.dir.path()).unwrap();

    // Heartbeats arrive, with the agent's version.
    heartbeat_after(&stack, 0, "the first heartbeat").await;
    assert_eq!(
        agent_row(&stack)["agent_version"],
        env!("CARGO_PKG_VERSION"),
        "{}",
        agent_row(&stack)
    );

    // The desired state reaches the output file; an unchanged document is answered 304; a new one
    // replaces it.
    set_desired_state(&stack, r#"{"replicas": 3, "image": "zen/app:1"}"#);
    desired_file_is(
        &desired,
        serde_json::json!({"replicas": 3, "image": "zen/app:1"}),
    )
    .await;
    wait_until(
        "a 304 for the unchanged document",
        Duration::from_secs(5),
        || {
            let log = agent.log();
            async move { log.contains("desired state not modified") }
        },
    )
    .await
    .unwrap();
    set_desired_state(&stack, r#"{"replicas": 5, "image": "zen/app:2"}"#);
    desired_file_is(
        &desired,
        serde_json::json!({"replicas": 5, "image": "zen/app:2"}),
    )
    .await;

    // The SVID is renewed (new serial, later notAfter), the key stays private, and the agent goes on
    // with the new one.
    let d = dir.clone();
    wait_until("the SVID renewal", Duration::from_secs(25), || {
        let d = d.clone();
        let serial = enrolled.serial_hex.clone();
        async move { leaf(&d).serial_hex != serial }
    })
    .await
    .unwrap();
    let renewed = leaf(&dir);
    assert!(
        renewed.not_after > enrolled.not_after,
        "{renewed:?} vs {enrolled:?}"
    );
    assert_eq!(renewed.spiffe_id, enrolled.spiffe_id);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("svid.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    heartbeat_after(
        &stack,
        last_seen(&stack),
        "a heartbeat with the renewed SVID",
    )
    .await;

    // A forced key rotation: the agent learns of the new key from its heartbeat, switches to it and
    // writes hmac.json; its requests keep being accepted.
    stack
        .control_cli(&["keys", "rotate", "--spiffe-id", AGENT_C1])
        .unwrap();
    let d = dir.clone();
    wait_until(
        "hmac.json to move to the new key",
        Duration::from_secs(15),
        || {
            let (d, first) = (d.clone(), first_key.clone());
            async move { key_id(&d) != first }
        },
    )
    .await
    .unwrap();
    heartbeat_after(
        &stack,
        last_seen(&stack),
        "a heartbeat signed with the new key",
    )
    .await;

    // The files on disk are a working credential set: a request made with them is accepted.
    let files = Agent::load(&dir);
    let response = files
        .send(Method::GET, &stack.agent_url("/saas/v1/echo"), &[], None)
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    agent.check_alive().unwrap();
    let log = agent.log();
    // Nothing failed along the way: no refusal (a key_unknown right after the switch is absorbed by
    // the fallback key / short retry), no unavailability, no write error.
    for bad in [
        "request refused",
        "HMAC key refused",
        "identity revoked",
        "mesh unavailable",
        "cannot",
    ] {
        assert!(!log.contains(bad), "agent log has {bad:?}:\n{log}");
    }
    assert!(
        log.contains("SVID renewed") && log.contains("switched to the new HMAC key"),
        "{log}"
    );

    // SIGTERM: a clean stop with exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = String::new();
    for _ in 0..100 {
        if let Err(e) = agent.check_alive() {
            exit = e.to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        exit.contains("exit status: 0"),
        "agent did not stop cleanly: {exit}"
    );
    assert!(agent.log().contains("zen-agent stopped"));
}

/// Counts the agent's log lines that report a failed call.
fn failure_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_revoked_agent_is_logged_as_revoked_and_backs_off_without_spinning() {
    let saas = RecordingUpstream::start().await.unwrap();
    let stack = Stack::start(saas.port).await.unwrap();
    let dir = stack.path("a1");
    stack
        .enroll(&stack.token(AGENT_C1).unwrap(), AGENT_C1, &dir)
        .unwrap();
    let config = stack.path("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "files_dir: {dir}\nserver: {server}\nheartbeat_interval: 200ms\n\
             desired_state_interval: 200ms\nbackoff_min: 100ms\nbackoff_max: 2s\n",
            dir = dir.display(),
            server = stack.agent_url(""),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(binary("zen-agent").unwrap());
    cmd.args(["run", "--config"]).arg(&config);
    let mut agent = Proc::spawn("zen-agent-run", &mut cmd, stack.dir.path()).unwrap();
    heartbeat_after(&stack, 0, "the first heartbeat").await;

    stack
        .control_cli(&["agent", "revoke", "--spiffe-id", AGENT_C1])
        .unwrap();
    wait_until(
        "the agent to log its revocation",
        Duration::from_secs(15),
        || {
            let log = agent.log();
            async move { log.contains("identity revoked") }
        },
    )
    .await
    .unwrap();

    // Every loop now waits 1..2 s (backoff_max with jitter): over 4 s the three polling loops
    // (heartbeat, desired state, key pickup) make at most a dozen attempts; a spinning loop would
    // make thousands.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = failure_lines(&agent.log());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = failure_lines(&agent.log()) - before;
    assert!(
        during <= 40,
        "{during} failed calls in 4 s: the agent spins\n{}",
        agent.log()
    );
    agent.check_alive().unwrap();
    let log = agent.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("identity revoked"), "last log line: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_bad_config_or_credential_dir_naming_the_key_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = |yaml: &str| {
        let config = dir.path().join("agent.yaml");
        std::fs::write(&config, yaml).unwrap();
        let out = Command::new(binary("zen-agent").unwrap())
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, err) = run("renew_fraction: 2\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("agent.yaml") && err.contains("`renew_fraction`"),
        "{err}"
    );
    let (code, err) = run("heartbeat_intervall: 5s\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("heartbeat_intervall"), "{err}");

    // A credential dir whose svid.pem was cut short.
    let creds = dir.path().join("agent");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(
        creds.join("svid.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU",
    )
    .unwrap();
    let (code, err) = run(&format!("files_dir: {}\n", creds.display()));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&creds.join("svid.pem").display().to_string()),
        "{err}"
    );
}

/// The library the binary is built from, driven directly: requests flow on four tasks while the
/// SVID is renewed and the HMAC key rotated under them — a swap never fails a request in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_swaps_svid_and_key_under_flowing_requests_without_a_failure() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use zen_agent::session::{Session, SessionOptions};

    let saas = RecordingUpstream::start().await.unwrap();
    let stack = Stack::start(saas.port).await.unwrap();
    let dir = stack.path("a1");
    stack
        .enroll(&stack.token(AGENT_C1).unwrap(), AGENT_C1, &dir)
        .unwrap();
    let session =
        Arc::new(Session::load(&dir, &stack.agent_url(""), SessionOptions::default()).unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (session, stop, ok, failed) =
            (session.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = session
                    .call(
                        Method::POST,
                        "/saas/v1/echo",
                        &[],
                        Some(bytes::Bytes::from_static(b"{}")),
                    )
                    .await;
                match r {
                    Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let wait_for_traffic = |n: usize| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            wait_until("requests to flow", Duration::from_secs(10), || {
                let ok = ok.clone();
                async move { ok.load(Ordering::Relaxed) >= target }
            })
            .await
            .unwrap();
        }
    };
    wait_for_traffic(10).await;

    let before = leaf(&dir);
    let renewed = session.renew_svid().await.unwrap();
    assert_ne!(renewed.serial_hex, before.serial_hex);
    assert_eq!(
        session.leaf().serial_hex,
        renewed.serial_hex,
        "new requests present the new SVID"
    );
    assert_eq!(
        leaf(&dir).serial_hex,
        renewed.serial_hex,
        "svid.pem is the new SVID"
    );
    wait_for_traffic(10).await;

    let first_key = session.key_id();
    stack
        .control_cli(&["keys", "rotate", "--spiffe-id", AGENT_C1])
        .unwrap();
    let refresh = session.refresh_hmac_key().await.unwrap();
    assert_eq!(refresh.switched_from.as_deref(), Some(first_key.as_str()));
    assert_eq!(key_id(&dir), refresh.key_id);
    wait_for_traffic(10).await;

    // The one-shot library form works on the same directory.
    let again = zen_agent::renew::renew_svid(&dir, &stack.agent_url(""))
        .await
        .unwrap();
    assert_eq!(leaf(&dir).serial_hex, again.serial_hex);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
}
