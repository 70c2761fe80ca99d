//! `rate`: open loop at a fixed request rate. Request k is due at
//! `start + k / rate`; its latency is measured from that intended send time,
//! not from when a connection became free, so a stalled target shows up as
//! latency (coordinated omission corrected, as wrk2 does) rather than as a
//! silently lower rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{backoff, drive, Ctx, Run, Session};
use crate::report::Recorder;

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub connections: usize,
    pub duration: Duration,
    pub rate: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RateDetails {
    pub target_rate: f64,
    pub scheduled: u64,
    /// Requests sent later than 1 ms after their intended time: the
    /// generator (or its connections) could not keep up.
    pub sent_late: u64,
}

pub async fn run(
    ctx: Arc<Ctx>,
    opts: Opts,
    target_pid: Option<u32>,
) -> Result<(Run<u64>, RateDetails)> {
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a positive number of requests per second");
    }
    let interval = Duration::from_secs_f64(1.0 / opts.rate);
    let next = Arc::new(AtomicU64::new(0));
    let run = drive(
        opts.connections,
        opts.duration,
        None,
        target_pid,
        move |i, gate| {
            let ctx = ctx.clone();
            let next = next.clone();
            async move {
                let mut rec = Recorder::default();
                let mut late = 0u64;
                let mut s = Session::new(ctx.clone(), i);
                if let Err(e) = s.ensure_connected(&mut rec).await {
                    rec.record_error(&e);
                }
                let budget = gate.ready().await;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let due = budget.start() + interval.mul_f64(k as f64);
                    if due >= budget.end() {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    if due.elapsed() > Duration::from_millis(1) {
                        late += 1;
                    }
                    let req = ctx.signed(&s.identity)?;
                    match s.exchange(&req, &mut rec).await {
                        Ok(o) => rec.record(due.elapsed(), &o),
                        Err(e) => {
                            rec.record_error(&e);
                            backoff().await;
                        }
                    }
                }
                Ok((rec, late))
            }
        },
    )
    .await?;
    let scheduled = (opts.duration.as_secs_f64() * opts.rate).ceil() as u64;
    let details = RateDetails {
        target_rate: opts.rate,
        scheduled,
        sent_late: run.outputs.iter().sum(),
    };
    Ok((run, details))
}
