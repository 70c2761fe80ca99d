//! zen-control binary: `serve` runs the service; every other command talks to a running
//! service over its operator socket (except `audit verify --offline`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use zen_control::config::{parse_duration, Config};
use zen_control::operator::client::{call, resolve_socket};
use zen_control::operator::OpRequest;

#[derive(Parser)]
#[command(
    name = "zen-control",
    version,
    about = "Zen Mesh control service and operator CLI"
)]
struct Cli {
    /// Operator socket (default: <data-dir>/control.sock, else $ZEN_CONTROL_SOCKET, else
    /// .zen/dev/control/control.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Data directory (serve: overrides the config's data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Args)]
struct OutputArg {
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service.
    #[command(alias = "run")]
    Serve {
        /// YAML config (defaults: the dev stack's).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Enrolled agents.
    Agent {
        #[command(subcommand)]
        cmd: AgentCmd,
    },
    /// HMAC keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Certificate authority.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Per-cluster desired state and allowlist.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a one-use enrollment token bound to one SPIFFE ID.
    Create {
        #[arg(long)]
        spiffe_id: String,
        /// Lifetime, e.g. 30m, 1h (default: enrollment.token_ttl).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Revoke an identity: its keys, its SVID serials and the ID itself.
    Revoke {
        #[arg(long)]
        spiffe_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Issue successors now (all identities, or one); old keys stay valid for the grace window.
    Rotate {
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Start a CA rotation.
    Rotate,
    /// Issue an SVID for a workload that cannot enroll (the proxy's own serving identity). The key
    /// is made here and never leaves this process; writes DIR/tls.crt (chain), DIR/tls.key (0600)
    /// and DIR/ca.crt (trust bundle) — the cert-manager layout zen-proxy reads.
    Issue {
        #[arg(long)]
        spiffe_id: String,
        /// DNS SAN beside the SPIFFE URI (repeatable), e.g. localhost.
        #[arg(long)]
        dns: Vec<String>,
        /// IP SAN beside the SPIFFE URI (repeatable), e.g. 127.0.0.1.
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Lifetime, e.g. 24h, 30d (default: svid.ttl of the running service).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    SetDesiredState {
        #[arg(long)]
        cluster: String,
        /// YAML or JSON document.
        #[arg(long)]
        file: PathBuf,
    },
    SetAllowlist {
        #[arg(long)]
        cluster: String,
        /// YAML or JSON: a list, or a map with an `entries` list.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    List {
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Check the hash chain; prints OK or the first broken sequence number (exit 1).
    Verify {
        /// Read the database in --data-dir directly instead of asking the running service.
        #[arg(long)]
        offline: bool,
    },
}

/// Writes an issued identity in the cert-manager layout, each file atomically (temp + rename), the
/// key first so a watcher that sees the new tls.crt also finds its key.
fn write_identity(dir: &Path, chain: &str, key: &str, bundle: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text, mode) in [
        ("tls.key", key, 0o600),
        ("ca.crt", bundle, 0o644),
        ("tls.crt", chain, 0o644),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn read_doc(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_yaml::from_str::<Value>(&text)
        .with_context(|| format!("{} is not valid YAML/JSON", path.display()))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn ts(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_i64)
        .map(zen_control::clock::rfc3339)
        .unwrap_or_else(|| "-".into())
}

async fn op(socket: &Path, req: OpRequest) -> anyhow::Result<Value> {
    let resp = call(socket, &req).await?;
    if resp.ok {
        Ok(resp.result)
    } else {
        anyhow::bail!(resp.error.unwrap_or_else(|| "request failed".into()))
    }
}

fn print_verdict(v: &Value) -> ExitCode {
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        println!("OK ({} events)", s(v, "checked"));
        ExitCode::SUCCESS
    } else {
        println!(
            "BROKEN at sequence {}: {}",
            s(v, "broken_seq"),
            s(v, "reason")
        );
        ExitCode::FAILURE
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = resolve_socket(cli.socket.as_deref(), cli.data_dir.as_deref());
    match cli.cmd {
        Cmd::Serve { config } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::dev_defaults(),
            };
            cfg.apply_env()?;
            if let Some(d) = cli.data_dir {
                cfg.socket = d.join(zen_control::operator::SOCKET_FILE);
                cfg.data_dir = d;
            }
            if let Some(sk) = cli.socket {
                cfg.socket = sk;
            }
            zen_control::serve::run(cfg).await?;
        }
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    spiffe_id,
                    ttl,
                    out,
                },
        } => {
            let ttl_secs = ttl
                .map(|t| parse_duration(&t).map(|d| d.as_secs()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let v = op(
                &socket,
                OpRequest::TokenCreate {
                    spiffe_id,
                    ttl_secs,
                },
            )
            .await?;
            if out.output == Output::Json {
                print_json(&v);
            } else {
                println!("token_id:   {}", s(&v, "token_id"));
                println!("secret:     {}", s(&v, "secret"));
                println!("spiffe_id:  {}", s(&v, "spiffe_id"));
                println!("expires_at: {}", s(&v, "expires_at"));
            }
        }
        Cmd::Agent {
            cmd: AgentCmd::List { out },
        } => {
            let v = op(&socket, OpRequest::AgentList).await?;
            if out.output == Output::Json {
                print_json(&v);
            } else {
                println!(
                    "{:<60} {:<10} {:<22} {:<12} AGENT STATUS",
                    "SPIFFE ID", "STATUS", "LAST SEEN", "VERSION"
                );
                for a in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<60} {:<10} {:<22} {:<12} {}",
                        s(a, "spiffe_id"),
                        s(a, "status"),
                        ts(a, "last_seen"),
                        s(a, "agent_version"),
                        s(a, "agent_status")
                    );
                }
            }
        }
        Cmd::Agent {
            cmd: AgentCmd::Revoke { spiffe_id },
        } => {
            let v = op(&socket, OpRequest::AgentRevoke { spiffe_id }).await?;
            println!(
                "revoked {}: {} key(s), serials {}",
                s(&v, "spiffe_id"),
                s(&v, "keys_revoked"),
                v.get("serials_revoked").cloned().unwrap_or(Value::Null)
            );
        }
        Cmd::Keys {
            cmd: KeysCmd::Rotate { spiffe_id },
        } => {
            let v = op(&socket, OpRequest::KeysRotate { spiffe_id }).await?;
            let n = v["rotated"].as_array().map_or(0, Vec::len);
            println!(
                "issued successor keys for {n} identit{}",
                if n == 1 { "y" } else { "ies" }
            );
        }
        Cmd::Ca {
            cmd:
                CaCmd::Issue {
                    spiffe_id,
                    dns,
                    ip,
                    ttl,
                    out,
                },
        } => {
            let ttl_secs = ttl
                .map(|t| parse_duration(&t).map(|d| d.as_secs()))
                .transpose()
                .map_err(anyhow::Error::msg)
                .context("--ttl")?;
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names =
                vec![rcgen::SanType::URI(spiffe_id.clone().try_into().map_err(
                    |_| anyhow::anyhow!("--spiffe-id {spiffe_id:?} is not ASCII"),
                )?)];
            let csr_pem = params.serialize_request(&key)?.pem()?;
            let v = op(
                &socket,
                OpRequest::CaIssue {
                    spiffe_id,
                    csr_pem,
                    dns,
                    ips: ip,
                    ttl_secs,
                },
            )
            .await?;
            let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
            write_identity(
                &out,
                &s(&v, "svid_chain_pem"),
                &key_pem,
                &s(&v, "trust_bundle_pem"),
            )?;
            println!(
                "issued {} (serial {}, valid until {}) into {}",
                s(&v, "spiffe_id"),
                s(&v, "serial"),
                s(&v, "not_after"),
                out.display()
            );
        }
        Cmd::Ca { cmd: CaCmd::Rotate } => {
            let v = op(&socket, OpRequest::CaRotate).await?;
            println!(
                "new CA {} is in the trust bundle; issuing from {}",
                s(&v, "new_ca_id"),
                s(&v, "activate_at")
            );
        }
        Cmd::Cluster {
            cmd: ClusterCmd::SetDesiredState { cluster, file },
        } => {
            let document = read_doc(&file)?;
            let v = op(
                &socket,
                OpRequest::ClusterSetDesiredState { cluster, document },
            )
            .await?;
            println!(
                "desired state of {} set, ETag {}",
                s(&v, "cluster"),
                s(&v, "etag")
            );
        }
        Cmd::Cluster {
            cmd: ClusterCmd::SetAllowlist { cluster, file },
        } => {
            let entries = read_doc(&file)?;
            let v = op(&socket, OpRequest::ClusterSetAllowlist { cluster, entries }).await?;
            println!(
                "allowlist of {} set: {} entries, version {}",
                s(&v, "cluster"),
                s(&v, "entries"),
                s(&v, "version")
            );
        }
        Cmd::Audit {
            cmd: AuditCmd::List { after, limit, out },
        } => {
            let v = op(&socket, OpRequest::AuditList { after, limit }).await?;
            if out.output == Output::Json {
                print_json(&v);
            } else {
                for e in v.as_array().into_iter().flatten() {
                    println!(
                        "{:>6} {} {:<20} actor={} subject={} {}",
                        s(e, "seq"),
                        ts(e, "at"),
                        s(e, "kind"),
                        s(e, "actor"),
                        s(e, "subject"),
                        s(e, "detail")
                    );
                }
            }
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { offline },
        } => {
            let v = if offline {
                let dir = cli
                    .data_dir
                    .unwrap_or_else(|| PathBuf::from(".zen/dev/control"));
                let store =
                    zen_control::store::SqliteStore::open(&dir.join(zen_control::app::DB_FILE))
                        .await?;
                zen_control::operator::verify_audit(&store).await?
            } else {
                op(&socket, OpRequest::AuditVerify).await?
            };
            return Ok(print_verdict(&v));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: container and journald logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zen-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
