//! Starts the real `zen-proxy` binary against a temp dir of rcgen-made
//! certificates, a key set, a revocation list and a recording upstream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zen_trust::{KeySetEntry, KeySetFile, KeyStatus, Secret, SpiffeId, UnixTime};

use super::client::{client_config, once, Conn, Req, Resp};
use super::pki::{Ca, Leaf, LeafOpts};
use super::upstream::Upstream;

pub const TD: &str = "zen.local";
pub const A1: &str = "spiffe://zen.local/cluster/c1/agent/a1";
pub const B2: &str = "spiffe://zen.local/cluster/c2/agent/b2";
pub const R1: &str = "spiffe://zen.local/cluster/c1/agent/r1";
/// Route used for body-size tests.
pub const BULK_PATH: &str = "/agent/v1/heartbeats";
pub const BULK_MAX: usize = 200_000;

pub struct Agent {
    pub leaf: Leaf,
    pub key_id: String,
    pub secret: Secret,
    pub cfg: Arc<ClientConfig>,
}

pub struct Opts {
    pub upstream_dead: bool,
    pub replay_capacity: usize,
    pub require_spiffe: bool,
    pub allow_tls12: bool,
    pub watch: bool,
    pub upstream_read_timeout_ms: u64,
    /// `signature: { max_age_secs, max_skew_secs }` instead of the defaults (300, 5).
    pub signature_window: Option<(u64, u64)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            upstream_dead: false,
            replay_capacity: 100_000,
            require_spiffe: false,
            allow_tls12: false,
            watch: true,
            upstream_read_timeout_ms: 5000,
            signature_window: None,
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub other_ca: Ca,
    pub upstream: Upstream,
    pub agent_addr: SocketAddr,
    pub bootstrap_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub child: Option<Child>,
    pub a1: Agent,
    pub b2: Agent,
    pub r1: Agent,
    /// Key `k-a1-expired` of a1, outside its validity window.
    pub a1_expired_secret: Secret,
    /// Key `k-a1-revoked` of a1, status revoked.
    pub a1_revoked_secret: Secret,
    pub anon_cfg: Arc<ClientConfig>,
}

/// A port for the proxy to bind, from outside the kernel's ephemeral range and never handed out
/// twice in this test process (zen-e2e's allocator says why).
pub use zen_e2e::free_port;

pub fn key_entry(
    key_id: &str,
    secret: &Secret,
    owner: &str,
    status: KeyStatus,
    expired: bool,
) -> KeySetEntry {
    let now = UnixTime::now().0;
    let (nb, na) = if expired {
        (now - 7200, now - 3600)
    } else {
        (now - 3600, now + 86_400)
    };
    KeySetEntry {
        key_id: key_id.into(),
        secret: Secret::from_bytes(secret.expose().to_vec()),
        owner: SpiffeId::parse(owner).unwrap(),
        not_before: UnixTime(nb),
        not_after: UnixTime(na),
        status,
    }
}

pub fn write_atomic(p: &std::path::Path, bytes: &[u8]) {
    let tmp = p.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(Opts::default()).await
    }

    pub async fn start_with(o: Opts) -> Env {
        let mut env = Env::prepare(o).await;
        env.spawn().await;
        env
    }

    /// Writes every file but does not start the proxy.
    pub async fn prepare(o: Opts) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(TD);
        let other_ca = Ca::new("other.local");
        let upstream = Upstream::start().await;
        let upstream_addr = if o.upstream_dead {
            Upstream::dead_addr().await
        } else {
            upstream.addr
        };

        let serving = ca.leaf(
            "spiffe://zen.local/proxy/test",
            LeafOpts {
                dns: vec!["localhost".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                ..LeafOpts::default()
            },
        );
        std::fs::write(dir.path().join("tls.crt"), &serving.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &serving.key_pem).unwrap();
        std::fs::write(dir.path().join("bundle.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("other-bundle.pem"), other_ca.pem()).unwrap();

        let mk = |id: &str, key_id: &str| {
            let leaf = ca.leaf(id, LeafOpts::default());
            let cfg = client_config(&ca.pem(), Some(&leaf), false);
            Agent {
                leaf,
                key_id: key_id.into(),
                secret: Secret::generate(),
                cfg,
            }
        };
        let a1 = mk(A1, "k-a1");
        let b2 = mk(B2, "k-b2");
        let r1 = mk(R1, "k-r1");
        let a1_expired_secret = Secret::generate();
        let a1_revoked_secret = Secret::generate();
        let keys = KeySetFile {
            version: 1,
            keys: vec![
                key_entry("k-a1", &a1.secret, A1, KeyStatus::Active, false),
                key_entry("k-b2", &b2.secret, B2, KeyStatus::Active, false),
                key_entry("k-r1", &r1.secret, R1, KeyStatus::Active, false),
                key_entry(
                    "k-a1-expired",
                    &a1_expired_secret,
                    A1,
                    KeyStatus::Active,
                    true,
                ),
                key_entry(
                    "k-a1-revoked",
                    &a1_revoked_secret,
                    A1,
                    KeyStatus::Revoked,
                    false,
                ),
            ],
        };
        std::fs::write(
            dir.path().join("keys.json"),
            serde_json::to_vec_pretty(&keys).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("revocations.json"),
            serde_json::json!({"version": 1, "revoked_spiffe_ids": [R1], "revoked_serials": []})
                .to_string(),
        )
        .unwrap();

        let agent_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let bootstrap_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = dir.path().display();
        let config = format!(
            r#"
listeners:
  agent: {{ address: "{agent_addr}", client_auth: required, allow_tls12: {tls12} }}
  bootstrap: {{ address: "{bootstrap_addr}", require_spiffe: {rs} }}
  admin: {{ address: "{admin_addr}" }}
tls: {{ cert_file: "{d}/tls.crt", key_file: "{d}/tls.key" }}
trust_bundles:
  - {{ trust_domain: zen.local, file: "{d}/bundle.pem" }}
  - {{ trust_domain: other.local, file: "{d}/other-bundle.pem" }}
key_set_file: "{d}/keys.json"
revocations_file: "{d}/revocations.json"
replay_cache: {{ capacity: {cap} }}
{signature}reload: {{ watch: {watch}, debounce_ms: 20 }}
shutdown: {{ grace_seconds: 3, timeout_seconds: 2 }}
upstreams:
  control: {{ address: "{upstream_addr}", connect_timeout_ms: 500, read_timeout_ms: {read_ms} }}
routes:
  - name: desired-state
    listener: agent
    methods: [GET]
    path: /agent/v1/clusters/{{cid}}/desired-state
    upstream: control
    auth: {{ spiffe: ["spiffe://zen.local/cluster/{{cid}}/agent/*"], hmac: required }}
  - name: heartbeat
    listener: agent
    methods: [POST]
    path: /agent/v1/heartbeat
    upstream: control
    auth: {{ spiffe: ["spiffe://zen.local/cluster/*/agent/*"], hmac: required }}
  - name: heartbeats
    listener: agent
    methods: [POST]
    path: {BULK_PATH}
    upstream: control
    auth: {{ spiffe: ["spiffe://zen.local/cluster/*/agent/*"], hmac: required, max_body_bytes: {BULK_MAX} }}
  - name: proxy-state
    listener: agent
    methods: [GET]
    path: /proxy/v1/state
    upstream: control
    auth: {{ spiffe: ["spiffe://zen.local/proxy/*"], hmac: off }}
  - name: enroll-request
    listener: bootstrap
    methods: [POST]
    path: /enroll/v1/request
    upstream: control
    auth: {{ hmac: off, max_body_bytes: 65536 }}
"#,
            tls12 = o.allow_tls12,
            rs = o.require_spiffe,
            cap = o.replay_capacity,
            watch = o.watch,
            read_ms = o.upstream_read_timeout_ms,
            signature = o
                .signature_window
                .map(|(age, skew)| {
                    format!("signature: {{ max_age_secs: {age}, max_skew_secs: {skew} }}\n")
                })
                .unwrap_or_default(),
        );
        std::fs::write(dir.path().join("proxy.yaml"), config).unwrap();
        let anon_cfg = client_config(&ca.pem(), None, false);
        Env {
            dir,
            ca,
            other_ca,
            upstream,
            agent_addr,
            bootstrap_addr,
            admin_addr,
            child: None,
            a1,
            b2,
            r1,
            a1_expired_secret,
            a1_revoked_secret,
            anon_cfg,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.yaml")
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("proxy.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_zen-proxy"))
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .env_remove(zen_env())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.admin_get_once("/readyz").await {
                // The TLS listeners start with the admin one; make sure they accept.
                if tokio::net::TcpStream::connect(self.agent_addr)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("zen-proxy exited early ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "zen-proxy not ready: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// One GET on the admin listener. A transport failure is retried once,
    /// and printed: one `/metrics` read failed once (no status line) while a
    /// release build loaded the machine, and never again in solo reruns; a
    /// second failure fails the test.
    pub async fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        match self.admin_get_once(path).await {
            Ok(got) => Ok(got),
            Err(e) => {
                eprintln!("admin GET {path} failed ({e}); retrying once");
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.admin_get_once(path).await
            }
        }
    }

    /// One GET, no retry: for polling loops that expect failures.
    pub async fn admin_get_once(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = tokio::net::TcpStream::connect(self.admin_addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad admin response"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Value of one sample line of `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await.unwrap();
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    }

    pub async fn refusals(&self, code: &str) -> f64 {
        self.metric(&format!("zen_proxy_refusals_total{{reason=\"{code}\"}}"))
            .await
    }

    pub async fn agent(&self, who: &Agent, req: &Req) -> std::io::Result<Resp> {
        once(self.agent_addr, who.cfg.clone(), req).await
    }

    pub async fn conn(&self, who: &Agent) -> Conn {
        Conn::connect(self.agent_addr, who.cfg.clone())
            .await
            .unwrap()
    }

    /// Sends `req` and asserts the refusal contract: status, JSON code,
    /// metric +1, and not one byte at the upstream.
    pub async fn assert_refused(
        &self,
        who_cfg: Arc<ClientConfig>,
        addr: SocketAddr,
        req: &Req,
        status: u16,
        code: &str,
    ) -> Resp {
        let before = self.refusals(code).await;
        let bytes_before = self.upstream.bytes();
        let resp = once(addr, who_cfg, req).await.expect("request answered");
        self.assert_refusal(&resp, status, code, before, bytes_before)
            .await;
        resp
    }

    /// The refusal contract for `resp`, however it was sent: status, JSON code
    /// and detail, the refusal metric +1 since `before`, and the upstream's
    /// bytes still `bytes_before`.
    pub async fn assert_refusal(
        &self,
        resp: &Resp,
        status: u16,
        code: &str,
        before: f64,
        bytes_before: usize,
    ) {
        assert_eq!(
            resp.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.error_code(), code);
        assert!(resp
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "application/json"));
        assert!(resp.json()["detail"].is_string());
        assert_eq!(
            self.refusals(code).await,
            before + 1.0,
            "refusal metric for {code}"
        );
        assert_eq!(
            self.upstream.bytes(),
            bytes_before,
            "upstream received bytes for a refused request"
        );
        assert!(self.upstream.requests().is_empty() || bytes_before > 0);
    }

    pub fn sigterm(&mut self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }
    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }
}

fn zen_env() -> &'static str {
    "BOOTSTRAP_REQUIRE_SPIFFE"
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
