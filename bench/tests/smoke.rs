//! Smoke test: the real `zen-bench` against the real `zen-proxy` in front of
//! `zen-bench upstream`, all on 127.0.0.1 free ports, for a few seconds per
//! scenario.
//!
//! Finding zen-proxy: a test can only use `CARGO_BIN_EXE_*` for its own
//! package's binaries. In order:
//! 1. `ZEN_PROXY_BIN=/path/to/zen-proxy`;
//! 2. `target/<profile>/zen-proxy` next to this test, which
//!    `cargo test --workspace` (make test) builds in the same run, when no
//!    proxy/trust source is newer than it;
//! 3. otherwise the test runs `cargo build -p zen-proxy --bin zen-proxy
//!    --message-format=json` itself and takes the path from cargo's
//!    artifact message (right profile and target dir, whatever they are).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zen_e2e::free_port;

const BENCH: &str = env!("CARGO_BIN_EXE_zen-bench");

/// A child process killed when the test ends; its log is printed if the test
/// failed.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- {} log -----\n{log}", self.name);
        }
    }
}

fn zen_proxy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ZEN_PROXY_BIN") {
        return PathBuf::from(p);
    }
    // `cargo test --workspace` (make test) builds zen-proxy next to this
    // test's own profile dir; use it unless a proxy or trust source is newer.
    let exe = std::env::current_exe().expect("test executable path");
    if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
        let sibling = profile_dir.join("zen-proxy");
        if let Ok(built) = std::fs::metadata(&sibling).and_then(|m| m.modified()) {
            let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let sources = ["proxy/src", "proxy/Cargo.toml", "trust/src", "Cargo.lock"];
            if sources.iter().all(|s| !newer_than(&ws.join(s), built)) {
                return sibling;
            }
        }
    }
    cargo_build_zen_proxy()
}

/// Whether `path` (a file, or any file under a dir) was modified after `t`.
fn newer_than(path: &Path, t: std::time::SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| rd.flatten().any(|e| newer_than(&e.path(), t)))
            .unwrap_or(false)
    } else {
        meta.modified().is_ok_and(|m| m > t)
    }
}

/// Builds zen-proxy with the cargo running this test and returns the path
/// cargo reports in its compiler-artifact message.
fn cargo_build_zen_proxy() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "-p",
            "zen-proxy",
            "--bin",
            "zen-proxy",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build -p zen-proxy");
    assert!(out.status.success(), "cargo build -p zen-proxy failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "zen-proxy")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no zen-proxy executable")
}

fn bench(args: &[&str]) -> Value {
    let out = Command::new(BENCH)
        .args(args)
        .output()
        .expect("running zen-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zen-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("zen-bench {args:?}: {e}\n{stdout}"))
}

/// Waits for `GET /readyz` on the admin listener to answer 200.
fn wait_ready(admin: &str, proxy: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("zen-proxy exited early: {status}");
        }
        if let Ok(mut s) = TcpStream::connect(admin) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ =
                s.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            if resp.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "zen-proxy not ready within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn bench_drives_the_real_proxy() {
    let proxy_bin = zen_proxy_binary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids = dir.join("ids");
    let ids_s = ids.to_str().unwrap();

    let out = Command::new(BENCH)
        // Leaf + intermediate, as zen-control issues SVIDs.
        .args([
            "identities",
            "--out",
            ids_s,
            "--agents",
            "2",
            "--intermediate",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Upstream on a free port; its first stdout line says which.
    let up_log = dir.join("upstream.log");
    let mut up_child = Command::new(BENCH)
        .args(["upstream", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&up_log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(up_child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _upstream = Proc {
        name: "upstream",
        child: up_child,
        log: up_log,
    };
    let up_addr = line
        .trim()
        .strip_prefix("upstream listening on ")
        .unwrap_or_else(|| panic!("unexpected upstream output {line:?}"))
        .to_owned();

    let agent = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.join("proxy.yaml");
    let out = Command::new(BENCH)
        .args([
            "proxy-config",
            "--identities",
            ids_s,
            "--listen",
            &agent,
            "--admin",
            &admin,
            "--upstream",
            &up_addr,
            "--out",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let proxy_log = dir.join("proxy.log");
    let log = std::fs::File::create(&proxy_log).unwrap();
    let child = Command::new(&proxy_bin)
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut proxy = Proc {
        name: "zen-proxy",
        child,
        log: proxy_log,
    };
    wait_ready(&admin, &mut proxy);
    let pid = proxy.child.id().to_string();
    let url = format!("https://{agent}/agent/v1/clusters/c1/desired-state");
    let common = [
        "--identities",
        ids_s,
        "--url",
        &url,
        "--target-pid",
        &pid,
        "--json",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |extra: &[&str]| {
        let args = with(extra);
        bench(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // keepalive: every request accepted, figures sane.
    let r = run(&["keepalive", "-c", "4", "-d", "2"]);
    let requests = u(&r["requests"]);
    assert!(requests > 0, "{r}");
    assert_eq!(u(&r["ok"]), requests, "{r}");
    assert_eq!(u(&r["unexpected"]), 0, "{r}");
    assert!(r["requests_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    let lat = &r["latency_us"];
    assert!(
        u(&lat["p50"]) > 0 && u(&lat["p50"]) <= u(&lat["p99"]),
        "{r}"
    );
    assert!(u(&lat["p99"]) <= u(&lat["max"]), "{r}");
    assert!(
        r["target"]["cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(u(&r["target"]["peak_rss_kb"]) > 0, "{r}");

    // refusals: every bad request refused with the right status and code,
    // every good one accepted.
    let r = run(&["refusals", "-c", "4", "-d", "2", "--bad-share", "0.5"]);
    assert_eq!(u(&r["unexpected"]), 0, "{r}");
    let kinds = &r["details"]["kinds"];
    for kind in ["good", "bad_signature", "replay", "wrong_cluster"] {
        let t = &kinds[kind];
        assert!(u(&t["sent"]) > 0, "{kind} never sent: {r}");
        assert_eq!(u(&t["as_expected"]), u(&t["sent"]), "{kind}: {r}");
    }
    let codes = &r["refusal_codes"];
    assert_eq!(
        u(&codes["signature_invalid"]),
        u(&kinds["bad_signature"]["sent"])
    );
    assert_eq!(u(&codes["replay"]), u(&kinds["replay"]["sent"]));
    assert_eq!(
        u(&codes["spiffe_forbidden"]),
        u(&kinds["wrong_cluster"]["sent"])
    );

    // swap: files rewritten under load, no failure, new certs served.
    let r = run(&[
        "swap",
        "-c",
        "4",
        "-d",
        "2",
        "--interval",
        "0.5",
        "--proxy-dir",
        ids.join("proxy").to_str().unwrap(),
        "--ca-dir",
        ids.join("ca").to_str().unwrap(),
    ]);
    assert_eq!(u(&r["unexpected"]), 0, "{r}");
    assert!(u(&r["details"]["certs_issued"]) >= 2, "{r}");
    assert!(u(&r["details"]["issued_certs_seen"]) >= 1, "{r}");

    // idle: connections stay open and the target's memory is read.
    let r = run(&["idle", "-c", "50", "--hold", "0.5"]);
    assert_eq!(u(&r["details"]["open_after_hold"]), 50, "{r}");
    assert!(u(&r["details"]["target_with_idle"]["rss_kb"]) > 0, "{r}");
    assert_eq!(u(&r["unexpected"]), 0, "{r}");
}
