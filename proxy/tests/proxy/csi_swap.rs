//! The file SVID source against a directory updated the way the cert-manager
//! CSI driver (and the kubelet, for ConfigMaps and Secrets) update it:
//!
//! ```text
//! svid/tls.crt -> ..data/tls.crt        (and tls.key, ca.crt)
//! svid/..data  -> ..2026_11_25_18_00_00.000000001
//! ```
//!
//! An update writes a new timestamped directory, points a `..data_tmp`
//! symlink at it, renames that over `..data` (atomic) and deletes the old
//! directory. `tls.crt` itself never changes: only the `..data` rename is
//! seen in the watched directory.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{client_config, Conn, Req};
use super::harness::{Env, Opts, A1};
use super::pki::{Ca, Leaf, LeafOpts};

const HB: &str = "/agent/v1/heartbeat";

/// A directory in the Kubernetes atomic-writer layout.
struct AtomicDir {
    root: PathBuf,
    current: Option<String>,
    generation: u32,
}

impl AtomicDir {
    fn create(root: PathBuf, files: &[(&str, &str)]) -> AtomicDir {
        std::fs::create_dir_all(&root).unwrap();
        let mut d = AtomicDir {
            root,
            current: None,
            generation: 0,
        };
        d.update(files);
        for (f, _) in files {
            symlink(format!("..data/{f}"), d.root.join(f)).unwrap();
        }
        d
    }

    /// One atomic update, step by step as the atomic writer does it.
    fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let ts = format!("..2026_11_25_18_00_{:02}.{:09}", self.generation, 1);
        let dir = self.root.join(&ts);
        std::fs::create_dir(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(self.root.join(old)).unwrap();
        }
    }
}

fn serving_leaf(ca: &Ca) -> Leaf {
    ca.leaf(
        "spiffe://zen.local/proxy/test",
        LeafOpts {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            ..LeafOpts::default()
        },
    )
}

/// Starts the proxy (as harness::Env does) with its config rewritten so the
/// serving cert, key and zen.local bundle come from `svid/`.
async fn start_with_svid_dir(env: &mut Env, svid: &Path) {
    let d = env.dir.path().display().to_string();
    let cfg = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace(
            &format!("{d}/tls.crt"),
            &svid.join("tls.crt").display().to_string(),
        )
        .replace(
            &format!("{d}/tls.key"),
            &svid.join("tls.key").display().to_string(),
        )
        .replace(
            &format!("{d}/bundle.pem"),
            &svid.join("ca.crt").display().to_string(),
        );
    assert!(cfg.contains("svid/ca.crt") && cfg.contains("svid/tls.key"));
    std::fs::write(env.config_path(), cfg).unwrap();
    let config = env.config_path();
    spawn(env, &config).await;
}

/// Starts the proxy as harness::Env does, with the config at `config`.
async fn spawn(env: &mut Env, config: &Path) {
    let log = std::fs::File::create(env.dir.path().join("proxy.log")).unwrap();
    env.child = Some(
        Command::new(env!("CARGO_BIN_EXE_zen-proxy"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("BOOTSTRAP_REQUIRE_SPIFFE")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = env.admin_get_once("/readyz").await {
            if tokio::net::TcpStream::connect(env.agent_addr).await.is_ok() {
                return;
            }
        }
        if let Some(status) = env.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("zen-proxy exited early ({status}): {}", env.log());
        }
        assert!(
            Instant::now() < deadline,
            "zen-proxy not ready: {}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn csi_symlink_swap_serves_the_new_svid_and_bundle_with_no_failed_connection() {
    let mut env = Env::prepare(Opts::default()).await;
    let cert_a = serving_leaf(&env.ca);
    let svid = env.dir.path().join("svid");
    let ca_pem = env.ca.pem();
    let mut dir = AtomicDir::create(
        svid.clone(),
        &[
            ("tls.crt", &cert_a.cert_pem),
            ("tls.key", &cert_a.key_pem),
            ("ca.crt", &ca_pem),
        ],
    );
    start_with_svid_dir(&mut env, &svid).await;
    let env = Arc::new(env);

    // Full handshakes only: a resumed TLS 1.3 session carries no server
    // certificate, and the client would report the one of the first session.
    let mut probe = (*client_config(&env.ca.pem(), Some(&env.a1.leaf), false)).clone();
    probe.resumption = rustls::client::Resumption::disabled();
    let probe = Arc::new(probe);

    let first = Conn::connect(env.agent_addr, probe.clone()).await.unwrap();
    assert_eq!(
        first.peer_leaf_der(),
        cert_a.der,
        "serves cert A from the layout"
    );

    // An agent whose certificate comes from a CA that only B's ca.crt adds.
    let new_ca = Ca::new("zen.local");
    let newcomer = new_ca.leaf(A1, LeafOpts::default());
    let newcomer_cfg = client_config(&env.ca.pem(), Some(&newcomer), false);
    let hb = || Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
    assert!(
        super::client::once(env.agent_addr, newcomer_cfg.clone(), &hb())
            .await
            .is_err(),
        "the new CA is not trusted before the swap"
    );

    // New connections (handshake + signed request) without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (env, stop, ok, failed) = (env.clone(), stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = Req::post(HB, b"{}".to_vec()).signed(&env.a1.key_id, &env.a1.secret);
                match Conn::connect(env.agent_addr, env.a1.cfg.clone()).await {
                    Err(e) => failed.lock().unwrap().push(format!("handshake: {e}")),
                    Ok(mut c) => match c.send(&req).await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!("status {}", r.status)),
                        Err(e) => failed.lock().unwrap().push(format!("io: {e}")),
                    },
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cert_b = serving_leaf(&env.ca);
    let bundle_b = format!("{}{}", env.ca.pem(), new_ca.pem());
    let ok_before_swap = ok.load(Ordering::Relaxed);
    let swapped = Instant::now();
    dir.update(&[
        ("tls.crt", &cert_b.cert_pem),
        ("tls.key", &cert_b.key_pem),
        ("ca.crt", &bundle_b),
    ]);
    // tls.crt is still the same symlink; only ..data moved.
    assert_eq!(
        std::fs::read_link(svid.join("tls.crt")).unwrap(),
        PathBuf::from("..data/tls.crt")
    );

    let deadline = swapped + Duration::from_secs(5);
    loop {
        let c = Conn::connect(env.agent_addr, probe.clone()).await.unwrap();
        if c.peer_leaf_der() == cert_b.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cert B not served 5 s after the ..data swap: {}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_after = swapped.elapsed();

    // The bundle from the same swap: the new CA's agent is now admitted.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match super::client::once(env.agent_addr, newcomer_cfg.clone(), &hb()).await {
            Ok(r) if r.status == 200 => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "ca.crt from the swap not loaded: {}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second swap works the same way (the watch survives the first).
    let cert_c = serving_leaf(&env.ca);
    dir.update(&[
        ("tls.crt", &cert_c.cert_pem),
        ("tls.key", &cert_c.key_pem),
        ("ca.crt", &bundle_b),
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = Conn::connect(env.agent_addr, probe.clone()).await.unwrap();
        if c.peer_leaf_der() == cert_c.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "second swap not seen: {}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed connections during the swaps, first: {:?}",
        failed.len(),
        failed.first()
    );
    // Connections were made before the swaps and kept succeeding after them.
    let ok_total = ok.load(Ordering::Relaxed);
    assert!(
        ok_before_swap > 0 && ok_total > ok_before_swap,
        "connections: {ok_before_swap} before the swap, {ok_total} in all"
    );
    assert!(
        env.metric("zen_proxy_reloads_total{result=\"ok\",what=\"serving_cert\"}")
            .await
            >= 2.0
    );
    assert!(
        env.metric("zen_proxy_reloads_total{result=\"ok\",what=\"trust_bundles\"}")
            .await
            >= 1.0
    );
    eprintln!("cert B served {seen_after:?} after the ..data swap");
}

/// proxy.yaml in a ConfigMap volume: the kubelet swaps `..data` the same
/// way, and the routes follow.
#[tokio::test(flavor = "multi_thread")]
async fn configmap_symlink_swap_reloads_routes() {
    let mut env = Env::prepare(Opts::default()).await;
    let original = std::fs::read_to_string(env.config_path()).unwrap();
    let cm = env.dir.path().join("configmap");
    let mut dir = AtomicDir::create(cm.clone(), &[("proxy.yaml", &original)]);
    spawn(&mut env, &cm.join("proxy.yaml")).await;

    let allow = || Req::get("/agent/v1/allowlist").signed(&env.a1.key_id, &env.a1.secret);
    assert_eq!(env.agent(&env.a1, &allow()).await.unwrap().status, 404);
    let added = format!(
        "{original}  - name: allowlist\n    listener: agent\n    methods: [GET]\n    path: /agent/v1/allowlist\n    upstream: control\n    auth: {{ spiffe: [\"spiffe://zen.local/cluster/*/agent/*\"], hmac: required }}\n"
    );
    dir.update(&[("proxy.yaml", &added)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.agent(&env.a1, &allow()).await.unwrap().status != 200 {
        assert!(
            Instant::now() < deadline,
            "route from the swapped ConfigMap not served: {}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        env.metric("zen_proxy_reloads_total{result=\"ok\",what=\"routes\"}")
            .await
            >= 1.0
    );
}

/// config/k8s/zen-proxy-config.yaml's proxy.yaml passes `zen-proxy check`
/// with its mount paths pointed at a CSI-layout SVID dir and a state dir.
#[test]
fn shipped_k8s_config_checks_ok_against_a_csi_layout() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/k8s/zen-proxy-config.yaml"),
    )
    .unwrap();
    let cm: serde_yaml::Value = serde_yaml::from_str(&manifest).unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "zen-proxy-config");
    let proxy_yaml = cm["data"]["proxy.yaml"].as_str().unwrap();
    assert!(proxy_yaml.contains("/var/run/secrets/zen-proxy/svid/tls.crt"));
    assert!(proxy_yaml.contains("/var/lib/zen-proxy/"));

    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("zen.local");
    let leaf = serving_leaf(&ca);
    let ca_pem = ca.pem();
    let svid = tmp.path().join("svid");
    AtomicDir::create(
        svid.clone(),
        &[
            ("tls.crt", &leaf.cert_pem),
            ("tls.key", &leaf.key_pem),
            ("ca.crt", &ca_pem),
        ],
    );
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let local = proxy_yaml
        .replace("/var/run/secrets/zen-proxy/svid", svid.to_str().unwrap())
        .replace("/var/lib/zen-proxy", state.to_str().unwrap());
    let cfg = tmp.path().join("proxy.yaml");
    std::fs::write(&cfg, local).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zen-proxy"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
