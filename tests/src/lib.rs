//! Harness for end-to-end tests: finds the workspace's built binaries, hands out free loopback ports,
//! and runs child processes that are killed (and their logs shown) when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

mod ports;
pub use ports::free_port;

/// Path of a workspace binary built next to this test (`target/<profile>/NAME`).
/// `make test` builds the binaries before running the tests.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test>-<hash> → target/<profile>/
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not under target/<profile>/deps")?;
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first (make test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process that is killed when dropped; its stdout+stderr go to a log file that is printed
/// when the test fails (on drop while panicking).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the process has exited (with its log in the error).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}):\n{}", self.name, self.log());
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// Polls `probe` until it returns Ok(true) or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plain-HTTP GET on loopback (admin endpoints); returns (status, body).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The real stack on free loopback ports in a temp dir: zen-control, and zen-proxy in front of it
/// with its key set from control, plus a recording "SaaS" upstream route `/saas/v1/echo`.
pub struct Stack {
    pub control: Option<Proc>,
    pub proxy: Option<Proc>,
    pub agent_port: u16,
    pub bootstrap_port: u16,
    pub proxy_admin: String,
    pub control_admin: String,
    pub control_api_port: u16,
    pub saas_port: u16,
    pub proxy_env: Vec<(String, String)>,
    /// Last: fields drop in order, so the processes are killed (and their logs printed on a
    /// failure) before the directory holding the logs is removed.
    pub dir: tempfile::TempDir,
}

/// What a scenario changes in the stack [`Stack::start_with`] brings up.
#[derive(Debug, Default, Clone)]
pub struct StackOptions {
    /// Appended to control.yaml: whole top-level sections that the harness does not write itself
    /// (it writes listen, admin_listen, data_dir, trust_domain, trust_bundle_file, proxy_sync), e.g.
    /// `"svid:\n  ttl: 20s\n"`.
    pub control_yaml: String,
    /// Environment for zen-proxy, e.g. `BOOTSTRAP_REQUIRE_SPIFFE=true`.
    pub proxy_env: Vec<(String, String)>,
    /// The proxy enrolls its own SVID with control (`tls.from_control`, token in
    /// `proxy-token.json`) instead of the harness issuing it with `zen-control ca issue`.
    pub proxy_svid_from_control: bool,
}

impl Stack {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("control/control.sock")
    }

    pub fn agent_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.agent_port)
    }

    /// Starts control, issues the proxy's SVID, starts the proxy and waits until both are ready.
    pub async fn start(saas_port: u16) -> anyhow::Result<Stack> {
        Stack::start_with(saas_port, StackOptions::default()).await
    }

    /// [`Stack::start`] with extra control config sections and proxy environment.
    pub async fn start_with(saas_port: u16, options: StackOptions) -> anyhow::Result<Stack> {
        let dir = tempfile::tempdir()?;
        let (agent_port, bootstrap_port, control_api_port) =
            (free_port(), free_port(), free_port());
        let proxy_admin = format!("127.0.0.1:{}", free_port());
        let control_admin = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            dir.path().join("control.yaml"),
            format!(
                "listen: 127.0.0.1:{control_api_port}\nadmin_listen: {control_admin}\n\
                 data_dir: {d}/control\ntrust_domain: zen.local\ntrust_bundle_file: {d}/bundle.pem\n\
                 proxy_sync:\n  long_poll_timeout: 2s\n{extra}",
                d = dir.path().display(),
                extra = options.control_yaml,
            ),
        )?;
        std::fs::write(
            dir.path().join("proxy.yaml"),
            proxy_yaml(
                dir.path(),
                agent_port,
                bootstrap_port,
                &proxy_admin,
                control_api_port,
                saas_port,
                options.proxy_svid_from_control,
            ),
        )?;
        let mut stack = Stack {
            dir,
            control: None,
            proxy: None,
            agent_port,
            bootstrap_port,
            proxy_admin,
            control_admin,
            control_api_port,
            saas_port,
            proxy_env: options.proxy_env,
        };
        stack.start_control().await?;
        if options.proxy_svid_from_control {
            let (id, secret) = stack.token(PROXY_ID)?;
            std::fs::write(
                stack.path("proxy-token.json"),
                serde_json::json!({"token_id": id, "secret": secret}).to_string(),
            )?;
            stack.start_proxy().await?;
            return Ok(stack);
        }
        let out = stack.control_cli(&[
            "ca",
            "issue",
            "--spiffe-id",
            PROXY_ID,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            &stack.path("proxy").display().to_string(),
        ])?;
        anyhow::ensure!(out.contains("issued"), "ca issue: {out}");
        stack.start_proxy().await?;
        Ok(stack)
    }

    pub async fn start_control(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary("zen-control")?);
        cmd.args(["serve", "--config"])
            .arg(self.path("control.yaml"));
        self.control = Some(Proc::spawn("zen-control", &mut cmd, self.dir.path())?);
        let admin = self.control_admin.clone();
        wait_until("zen-control /readyz", Duration::from_secs(20), || {
            let admin = admin.clone();
            async move { matches!(http_get(&admin, "/readyz").await, Ok((200, _))) }
        })
        .await
    }

    pub async fn start_proxy(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary("zen-proxy")?);
        cmd.args(["run", "--config"]).arg(self.path("proxy.yaml"));
        cmd.envs(self.proxy_env.iter().map(|(k, v)| (k, v)));
        self.proxy = Some(Proc::spawn("zen-proxy", &mut cmd, self.dir.path())?);
        let admin = self.proxy_admin.clone();
        wait_until("zen-proxy /readyz", Duration::from_secs(20), || {
            let admin = admin.clone();
            async move { matches!(http_get(&admin, "/readyz").await, Ok((200, _))) }
        })
        .await
    }

    /// Runs the operator CLI against this stack's socket; returns stdout, fails on non-zero exit.
    pub fn control_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(binary("zen-control")?)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "zen-control {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `token create` → (token id, secret).
    pub fn token(&self, spiffe_id: &str) -> anyhow::Result<(String, String)> {
        let out = self.control_cli(&[
            "token",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--output",
            "json",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let field = |k: &str| v[k].as_str().map(str::to_owned).context("token JSON");
        Ok((field("token_id")?, field("secret")?))
    }

    /// `zen-agent enroll` with the real binary; returns its output (Err with it on failure).
    pub fn enroll(
        &self,
        token: &(String, String),
        spiffe_id: &str,
        out: &Path,
    ) -> anyhow::Result<String> {
        let result = Command::new(binary("zen-agent")?)
            .args(["enroll", "--server"])
            .arg(format!("https://localhost:{}", self.bootstrap_port))
            .arg("--agent-server")
            .arg(format!("https://localhost:{}", self.agent_port))
            .args([
                "--token-id",
                &token.0,
                "--spiffe-id",
                spiffe_id,
                "--ca-file",
            ])
            .arg(self.path("bundle.pem"))
            .arg("--out")
            .arg(out)
            .env("ZEN_TOKEN_SECRET", &token.1)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        if result.status.success() {
            Ok(text)
        } else {
            bail!("zen-agent enroll failed: {text}")
        }
    }

    /// A counter or gauge from the proxy's /metrics (sum over series whose labels contain `labels`).
    pub async fn proxy_metric(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        let (_, text) = http_get(&self.proxy_admin, "/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

/// The proxy's own identity in the e2e stack.
pub const PROXY_ID: &str = "spiffe://zen.local/proxy/e2e";

fn proxy_yaml(
    dir: &Path,
    agent: u16,
    bootstrap: u16,
    admin: &str,
    control_api: u16,
    saas: u16,
    svid_from_control: bool,
) -> String {
    let d = dir.display();
    let tls = if svid_from_control {
        format!(
            "{{from_control: {{dir: {d}/proxy, spiffe_id: \"{PROXY_ID}\", token_file: {d}/proxy-token.json, \
             enroll_url: \"http://127.0.0.1:{control_api}\"}}}}"
        )
    } else {
        format!("{{cert_file: {d}/proxy/tls.crt, key_file: {d}/proxy/tls.key}}")
    };
    format!(
        r#"listeners:
  agent: {{address: "127.0.0.1:{agent}", client_auth: required}}
  bootstrap: {{address: "127.0.0.1:{bootstrap}"}}
  admin: {{address: "{admin}"}}
tls: {tls}
trust_bundles: [{{trust_domain: zen.local, file: {d}/bundle.pem}}]
control:
  url: https://127.0.0.1:{agent}/proxy/v1/state
  cache_file: {d}/proxy/state-cache.json
  request_timeout_secs: 10
upstreams:
  control: {{address: "127.0.0.1:{control_api}", connect_timeout_ms: 500}}
  saas: {{address: "127.0.0.1:{saas}", connect_timeout_ms: 500}}
routes:
  - {{name: desired-state, listener: agent, methods: [GET], path: "/agent/v1/clusters/{{cid}}/desired-state", upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/{{cid}}/agent/*"], hmac: required}}}}
  - {{name: adapters-sync, listener: agent, methods: [POST], path: "/agent/v1/clusters/{{cluster_id}}/adapters/sync", upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/{{cluster_id}}/agent/*"], hmac: required}}}}
  - {{name: heartbeat, listener: agent, methods: [POST], path: /agent/v1/heartbeat, upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/*/agent/*"], hmac: required}}}}
  - {{name: heartbeats, listener: agent, methods: [POST], path: /agent/v1/heartbeats, upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/*/agent/*"], hmac: required}}}}
  - {{name: allowlist, listener: agent, methods: [GET], path: /agent/v1/allowlist, upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/*/agent/*"], hmac: required}}}}
  - {{name: svid-renew, listener: agent, methods: [POST], path: /agent/v1/svid/renew, upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/*/agent/*", "spiffe://zen.local/proxy/*"], hmac: required}}}}
  - {{name: hmac-key, listener: agent, methods: [GET], path: /agent/v1/hmac-key, upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/*/agent/*", "spiffe://zen.local/proxy/*"], hmac: required}}}}
  - {{name: enroll-confirm, listener: agent, methods: [POST], path: /enroll/v1/confirm, upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/cluster/*/agent/*", "spiffe://zen.local/proxy/*"], hmac: required}}}}
  - {{name: proxy-state, listener: agent, methods: [GET], path: /proxy/v1/state, upstream: control,
      auth: {{spiffe: ["spiffe://zen.local/proxy/*"], hmac: off}}}}
  - {{name: enroll-request, listener: bootstrap, methods: [POST], path: /enroll/v1/request, upstream: control,
      auth: {{hmac: off, max_body_bytes: 65536}}}}
  - {{name: saas-echo, listener: agent, methods: [GET, POST], path: /saas/v1/echo, upstream: saas,
      auth: {{spiffe: ["spiffe://zen.local/cluster/*/agent/*"], hmac: required}}}}
"#
    )
}

/// A minimal HTTP/1.1 upstream that answers 200 `{"ok":true}` and records each request head + body.
pub struct RecordingUpstream {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    pub async fn start() -> anyhow::Result<RecordingUpstream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // One request per read burst is enough for these tests' small bodies.
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        log.lock()
                            .expect("log")
                            .push(String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned());
                        buf.drain(..end + 4 + len);
                        let body = br#"{"ok":true}"#;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err()
                            || sock.write_all(body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Ok(RecordingUpstream {
            port,
            requests,
            task,
        })
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("log").len()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
