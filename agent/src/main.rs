//! `zen-agent` — enroll with the mesh and talk through it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Method;
use zen_agent::client::{self, SigningKey};
use zen_agent::files::AgentFiles;
use zen_agent::tls;

#[derive(Parser)]
#[command(name = "zen-agent", version, about = "Zen Mesh agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
