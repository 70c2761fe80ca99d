//! `idle`: opens N mTLS connections, sends one request on each (so the
//! target has a full HTTP session per connection), then holds them open and
//! reads the target's memory. The figure asked of the proxy: RSS with 1,000
//! idle mTLS connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{Ctx, Session};
use crate::report::procfs::{memory, Memory};
use crate::report::Recorder;

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub connections: usize,
    pub hold: Duration,
    /// Connections being opened at once.
    pub open_concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleDetails {
    pub requested: usize,
    pub opened: usize,
    /// Still open after the hold period (the target did not close them).
    pub open_after_hold: usize,
    pub hold_secs: f64,
    pub open_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_before: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_with_idle: Option<Memory>,
    /// (RSS with idle connections − RSS before) / connections still open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kb_per_connection: Option<f64>,
}

/// Raises this process's open-file limit to its hard limit: N connections
/// need N descriptors.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub async fn run(
    ctx: Arc<Ctx>,
    opts: Opts,
    target_pid: Option<u32>,
) -> Result<(Recorder, Duration, IdleDetails)> {
    raise_nofile();
    let before = target_pid.map(memory).transpose().context("--target-pid")?;
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(opts.open_concurrency.max(1)));
    let handles: Vec<_> = (0..opts.connections)
        .map(|i| {
            let ctx = ctx.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let mut rec = Recorder::default();
                let mut s = Session::new(ctx.clone(), i);
                let req = ctx.signed(&s.identity)?;
                s.send_recorded(&req, &mut rec).await;
                anyhow::Ok((rec, s))
            })
        })
        .collect();
    let mut rec = Recorder::default();
    let mut sessions = Vec::with_capacity(opts.connections);
    for h in handles {
        let (r, s) = h.await.context("a connection task panicked")??;
        rec.merge(&r);
        sessions.push(s);
    }
    let open_secs = started.elapsed();
    let opened = sessions.iter().filter(|s| s.is_connected()).count();
    tokio::time::sleep(opts.hold).await;
    let open_after_hold = sessions.iter().filter(|s| s.is_connected()).count();
    let with_idle = target_pid.map(memory).transpose().context("--target-pid")?;
    let per_conn = match (before, with_idle) {
        (Some(b), Some(w)) if open_after_hold > 0 => {
            Some((w.rss_kb as f64 - b.rss_kb as f64) / open_after_hold as f64)
        }
        _ => None,
    };
    drop(sessions);
    Ok((
        rec,
        open_secs,
        IdleDetails {
            requested: opts.connections,
            opened,
            open_after_hold,
            hold_secs: opts.hold.as_secs_f64(),
            open_secs: open_secs.as_secs_f64(),
            target_before: before,
            target_with_idle: with_idle,
            rss_kb_per_connection: per_conn,
        },
    ))
}
