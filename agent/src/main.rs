//! `zen-agent` — enroll with the mesh and talk through it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Method;
use std::time::Duration;

use zen_agent::client::{self, SigningKey};
use zen_agent::config::AgentConfig;
use zen_agent::enroll::{enroll, EnrollRequest};
use zen_agent::files::AgentFiles;
use zen_agent::tls;
use zen_trust::secret::Secret;
use zen_trust::spiffe::SpiffeId;

#[derive(Parser)]
#[command(name = "zen-agent", version, about = "Zen Mesh agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll with a one-use token: writes svid.pem, svid.key, bundle.pem and hmac.json into --out.
    Enroll {
        /// Bootstrap listener of the proxy, e.g. https://localhost:8443.
        #[arg(long)]
        server: String,
        /// Agent listener for the confirm step [default: --server's host, port 9443].
        #[arg(long)]
        agent_server: Option<String>,
        #[arg(long)]
        token_id: String,
        /// The token secret (base64); prefer the environment variable to keep it out of `ps`.
        #[arg(long, env = "ZEN_TOKEN_SECRET", hide_env_values = true)]
        token_secret: String,
        #[arg(long)]
        spiffe_id: String,
        /// Trust bundle that verifies the proxy's serving certificate.
        #[arg(long)]
        ca_file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Present this pre-provisioned SVID on the bootstrap listener (needed when the proxy runs
        /// with BOOTSTRAP_REQUIRE_SPIFFE=true): DIR/tls.crt + tls.key, else DIR/svid.pem + svid.key.
        #[arg(long, value_name = "DIR")]
        client_dir: Option<PathBuf>,
    },
    /// Run the agent: heartbeat, desired-state polling, SVID renewal and HMAC key pickup, until
    /// SIGTERM or Ctrl-C. Logs go to stderr (RUST_LOG, default info).
    Run {
        /// agent.yaml (see config/dev/agent.yaml and agent/README.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// A curl for the mesh: mTLS with the enrolled SVID and a zen-hmac-v1 signature.
    Request {
        /// The agent's credential directory (svid.pem, svid.key, bundle.pem, hmac.json).
        #[arg(long, default_value = ".zen/dev/agent")]
        dir: PathBuf,
        /// Send the request without a signature (to see the proxy refuse it).
        #[arg(long)]
        unsigned: bool,
        /// Extra header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// HTTP method, e.g. GET or POST.
        method: String,
        /// https:// URL of the proxy's agent listener.
        url: String,
        /// Request body: `@FILE`, `-` for standard input, or the literal text.
        #[arg(long)]
        data: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` is a service: its state changes are worth seeing by default. The one-shot commands
    // print their result and only warn.
    let default_filter = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs redirected to a file or a collector stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zen-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zen-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Enroll {
            server,
            agent_server,
            token_id,
            token_secret,
            spiffe_id,
            ca_file,
            out,
            client_dir,
        } => {
            let spiffe_id: SpiffeId = spiffe_id
                .parse()
                .with_context(|| format!("--spiffe-id {spiffe_id:?}"))?;
            let token_secret =
                Secret::from_base64(token_secret.trim()).context("--token-secret is not base64")?;
            let agent_server = match agent_server {
                Some(url) => url,
                None => default_agent_server(&server)?,
            };
            let request = EnrollRequest {
                server,
                agent_server,
                token_id,
                token_secret,
                spiffe_id,
                ca_file,
                out,
                client_dir,
                confirm_patience: Duration::from_secs(15),
            };
            let bundle = enroll(&request).await?;
            println!(
                "enrolled {} (enrollment {}); SVID valid until {}, renew after {}; files in {}",
                bundle.spiffe_id,
                bundle.enrollment_id,
                bundle.expires_at,
                bundle.renew_after,
                request.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            zen_agent::run::run(config, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Request {
            dir,
            unsigned,
            headers,
            method,
            url,
            data,
        } => {
            let files = AgentFiles::load(&dir)?;
            let config = tls::mtls_config(&files.bundle, files.svid_chain, files.svid_key)
                .with_context(|| format!("credentials in {}", dir.display()))?;
            let key = SigningKey {
                key_id: files.hmac.key_id.clone(),
                secret: Arc::new(files.hmac.secret),
            };
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .with_context(|| format!("{method:?} is not an HTTP method"))?;
            let body = data.map(read_body).transpose()?;
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(n, v)| (n.trim(), v.trim()))
                        .with_context(|| format!("header {h:?} is not `Name: value`"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let response = client::send(
                config,
                method,
                &url,
                &headers,
                body,
                (!unsigned).then_some(&key),
            )
            .await?;
            println!("{}", response.status);
            println!("{}", String::from_utf8_lossy(&response.body));
            Ok(if response.status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(22) // like `curl --fail`
            })
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received, stopping"),
    }
}

/// `https://HOST:8443` → `https://HOST:9443`: the agent listener beside the bootstrap one.
fn default_agent_server(server: &str) -> anyhow::Result<String> {
    let uri: http::Uri = server
        .parse()
        .with_context(|| format!("--server {server:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("--server {server:?} has no host"))?;
    Ok(format!("https://{host}:9443"))
}

fn read_body(data: String) -> anyhow::Result<Bytes> {
    if data == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        return Ok(buf.into());
    }
    if let Some(path) = data.strip_prefix('@') {
        let bytes = std::fs::read(path).with_context(|| format!("reading body file {path}"))?;
        return Ok(bytes.into());
    }
    if data.is_empty() {
        bail!("--data is empty; omit it to send no body");
    }
    Ok(data.into_bytes().into())
}
