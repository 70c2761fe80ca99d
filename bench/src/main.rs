//! zen-bench: load generator for the Zen Mesh enforcement path (DESIGN §1):
//! real mTLS, a fresh zen-hmac-v1 signature on every request, HdrHistogram
//! latencies and the target's CPU and memory from /proc.

mod client;
mod identity;
mod report;
mod scenario;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::Method;

use client::Target;
use identity::generate::{self, IdentitySpec};
use identity::proxy_config::{self, ProxyConfigSpec};
use identity::IdentityArgs;
use report::Report;
use scenario::{handshake, idle, keepalive, rate, refusals, swap, Ctx};

#[derive(Parser)]
#[command(
    name = "zen-bench",
    version,
    about = "Load generator for the Zen Mesh enforcement path (mTLS + SPIFFE + zen-hmac-v1)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a CA, the proxy's serving SVID, N agent SVIDs + HMAC keys,
    /// and the proxy's trust bundle and key set.
    Identities {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        agents: usize,
        #[arg(long, default_value = "zen.local")]
        trust_domain: String,
        #[arg(long, default_value = "c1")]
        cluster: String,
        /// Validity of certificates and keys.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Sign agent SVIDs with an intermediate CA under the root and send
        /// leaf + intermediate, as zen-control issues them (the bundle stays
        /// the root): every handshake then carries a two-certificate chain.
        #[arg(long)]
        intermediate: bool,
    },
    /// Write a zen-proxy config serving the bench route with the files of
    /// `identities`.
    ProxyConfig {
        #[arg(long, value_name = "DIR")]
        identities: PathBuf,
        #[arg(long, default_value = "zen.local")]
        trust_domain: String,
        /// Agent (mTLS) listener address.
        #[arg(long, default_value = "127.0.0.1:9443")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Upstream `host:port` (plain HTTP).
        #[arg(long)]
        upstream: String,
        #[arg(long, default_value_t = 1_000_000)]
        replay_capacity: usize,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve plain HTTP/1.1 `200 ok` (the upstream for benchmarks and tests).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// C keep-alive connections, closed loop.
    Keepalive {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(short = 'c', long, default_value_t = 32)]
        connections: usize,
        #[command(flatten)]
        stop: StopArgs,
    },
    /// Open loop at a fixed rate; latency from the intended send time.
    Rate {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(short = 'c', long, default_value_t = 32)]
        connections: usize,
        /// Requests per second.
        #[arg(short = 'r', long)]
        rate: f64,
        #[arg(short = 'd', long, default_value_t = 10.0)]
        duration: f64,
    },
    /// A new mTLS connection for every request.
    Handshake {
        #[command(flatten)]
        load: LoadArgs,
        /// Connections being set up at once.
        #[arg(short = 'c', long, default_value_t = 8)]
        concurrency: usize,
        #[command(flatten)]
        stop: StopArgs,
        /// Allow TLS session resumption (default: every handshake is full).
        #[arg(long)]
        resume: bool,
    },
    /// Keep-alive load with a share of bad requests (bad signature, replay,
    /// wrong cluster), each checked for the right refusal.
    Refusals {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(short = 'c', long, default_value_t = 32)]
        connections: usize,
        #[command(flatten)]
        stop: StopArgs,
        #[arg(long, default_value_t = 0.5)]
        bad_share: f64,
        /// Path of another cluster (default: the URL's path with the cluster
        /// segment after `/clusters/` changed).
        #[arg(long)]
        forbidden_path: Option<String>,
    },
    /// Keep-alive load while the proxy's cert, bundle and key set files are
    /// rewritten at an interval.
    Swap {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(short = 'c', long, default_value_t = 32)]
        connections: usize,
        #[command(flatten)]
        stop: StopArgs,
        /// Seconds between rewrites.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// The proxy's files (`identities`' proxy/ dir).
        #[arg(long)]
        proxy_dir: PathBuf,
        /// The CA that signs new serving certs (`identities`' ca/ dir).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Reconnect after this many requests, so handshakes meet new certs.
        #[arg(long, default_value_t = 20)]
        requests_per_conn: u64,
    },
    /// Open N mTLS connections, hold them idle, report the target's memory.
    Idle {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(short = 'c', long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold the connections before reading memory.
        #[arg(long, default_value_t = 3.0)]
        hold: f64,
        #[arg(long, default_value_t = 64)]
        open_concurrency: usize,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// https URL of the target (zen-proxy's agent listener or a peer).
    #[arg(long)]
    url: String,
    #[command(flatten)]
    identity: IdentityArgs,
    /// Name checked against the server certificate (default: URL host).
    #[arg(long)]
    server_name: Option<String>,
    #[arg(long, default_value = "GET")]
    method: Method,
    /// Request body size in bytes (signed with Content-Digest when > 0).
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Per-connect and per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// PID of the target: report its (and its children's) CPU per request
    /// and memory.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Client runtime threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Exit 1 when the run saw any unexpected outcome.
    #[arg(long)]
    strict: bool,
}

#[derive(Args, Clone, Copy)]
struct StopArgs {
    /// Seconds to run.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests (whichever comes first).
    #[arg(short = 'n', long)]
    requests: Option<u64>,
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what}: {s} is not a duration in seconds"))
}

impl LoadArgs {
    fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
    }

    fn ctx(&self) -> Result<Arc<Ctx>> {
        let target = Target::parse(&self.url, self.server_name.as_deref())?;
        let identities = self.identity.load()?;
        Ok(Arc::new(Ctx {
            target,
            identities,
            method: self.method.clone(),
            body: Bytes::from(vec![b'x'; self.body_bytes]),
            timeout: Duration::from_millis(self.timeout_ms),
        }))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zen-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Identities {
            out,
            agents,
            trust_domain,
            cluster,
            days,
            intermediate,
        } => {
            let made = generate::generate(&IdentitySpec {
                out: out.clone(),
                agents,
                trust_domain,
                cluster,
                valid_days: days,
                intermediate,
            })?;
            println!(
                "wrote CA, proxy {} and {} agent(s) ({} … ) under {}",
                made.proxy_id,
                made.agent_ids.len(),
                made.agent_ids.first().map(|i| i.as_str()).unwrap_or("-"),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ProxyConfig {
            identities,
            trust_domain,
            listen,
            admin,
            upstream,
            replay_capacity,
            out,
        } => {
            let text = proxy_config::render(&ProxyConfigSpec {
                identities: &identities,
                trust_domain: &trust_domain,
                agent_listen: &listen,
                admin_listen: &admin,
                upstream: &upstream,
                replay_capacity,
            })?;
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Upstream { listen } => {
            runtime(1)?.block_on(upstream::serve(listen))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keepalive {
            load,
            connections,
            stop,
        } => {
            let opts = keepalive::Opts {
                connections,
                duration: secs(stop.duration, "--duration")?,
                requests: stop.requests,
                recycle_after: None,
                want_serial: false,
            };
            load_scenario("keepalive", &load, connections, |ctx| async move {
                let run = keepalive::run(ctx, opts, load.target_pid).await?;
                Ok((run.rec, run.elapsed, run.target, None, None))
            })
        }
        Cmd::Rate {
            load,
            connections,
            rate,
            duration,
        } => {
            let opts = rate::Opts {
                connections,
                duration: secs(duration, "--duration")?,
                rate,
            };
            load_scenario("rate", &load, connections, |ctx| async move {
                let (run, details) = rate::run(ctx, opts, load.target_pid).await?;
                Ok((
                    run.rec,
                    run.elapsed,
                    run.target,
                    Some(serde_json::to_value(details)?),
                    None,
                ))
            })
        }
        Cmd::Handshake {
            load,
            concurrency,
            stop,
            resume,
        } => {
            let opts = handshake::Opts {
                concurrency,
                duration: secs(stop.duration, "--duration")?,
                requests: stop.requests,
                resume,
            };
            load_scenario("handshake", &load, concurrency, |ctx| async move {
                let run = handshake::run(ctx, opts, load.target_pid).await?;
                Ok((run.rec, run.elapsed, run.target, None, None))
            })
        }
        Cmd::Refusals {
            load,
            connections,
            stop,
            bad_share,
            forbidden_path,
        } => {
            let target = Target::parse(&load.url, load.server_name.as_deref())?;
            let forbidden_path = match forbidden_path {
                Some(p) => p,
                None => refusals::forbidden_path_for(&target.path)?,
            };
            let opts = refusals::Opts {
                connections,
                duration: secs(stop.duration, "--duration")?,
                requests: stop.requests,
                bad_share,
                forbidden_path,
            };
            load_scenario("refusals", &load, connections, |ctx| async move {
                let (run, details) = refusals::run(ctx, opts, load.target_pid).await?;
                let unexpected = details.unexpected();
                Ok((
                    run.rec,
                    run.elapsed,
                    run.target,
                    Some(serde_json::to_value(details)?),
                    Some(unexpected),
                ))
            })
        }
        Cmd::Swap {
            load,
            connections,
            stop,
            interval,
            proxy_dir,
            ca_dir,
            requests_per_conn,
        } => {
            let opts = swap::Opts {
                load: keepalive::Opts {
                    connections,
                    duration: secs(stop.duration, "--duration")?,
                    requests: stop.requests,
                    recycle_after: Some(requests_per_conn.max(1)),
                    want_serial: true,
                },
                interval: secs(interval, "--interval")?,
                proxy_dir,
                ca_dir,
            };
            load_scenario("swap", &load, connections, |ctx| async move {
                let (run, details) = swap::run(ctx, opts, load.target_pid).await?;
                let swap_failed = !details.swap_errors.is_empty();
                let extra = u64::from(swap_failed);
                let unexpected =
                    (run.rec.responses - run.rec.ok) + run.rec.transport_error_count() + extra;
                Ok((
                    run.rec,
                    run.elapsed,
                    run.target,
                    Some(serde_json::to_value(details)?),
                    Some(unexpected),
                ))
            })
        }
        Cmd::Idle {
            load,
            connections,
            hold,
            open_concurrency,
        } => {
            let opts = idle::Opts {
                connections,
                hold: secs(hold, "--hold")?,
                open_concurrency,
            };
            load_scenario("idle", &load, connections, |ctx| async move {
                let (rec, elapsed, details) = idle::run(ctx, opts, load.target_pid).await?;
                let unexpected = (rec.responses - rec.ok)
                    + rec.transport_error_count()
                    + (details.requested - details.open_after_hold) as u64;
                Ok((
                    rec,
                    elapsed,
                    None,
                    Some(serde_json::to_value(details)?),
                    Some(unexpected),
                ))
            })
        }
    }
}

/// What a scenario hands back: recorder, wall time, target usage, details,
/// and its own count of unexpected outcomes when the default (non-2xx +
/// transport errors) does not apply.
type Outcome = (
    report::Recorder,
    Duration,
    Option<report::TargetUsage>,
    Option<serde_json::Value>,
    Option<u64>,
);

fn load_scenario<F, Fut>(
    scenario: &'static str,
    load: &LoadArgs,
    connections: usize,
    f: F,
) -> Result<ExitCode>
where
    F: FnOnce(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome>>,
{
    let threads = load.threads();
    let ctx = load.ctx()?;
    let rt = runtime(threads)?;
    let (rec, elapsed, target, details, unexpected) = rt.block_on(f(ctx))?;
    let mut report = Report::new(scenario, &load.url, connections, threads, elapsed, &rec);
    report.target = target;
    report.details = details;
    if let Some(u) = unexpected {
        report.unexpected = u;
    }
    if load.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(if load.strict && report.unexpected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
