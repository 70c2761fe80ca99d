//! `handshake`: a new mTLS connection for every request (C at a time), so
//! the target's CPU per request is its cost per new connection. Full
//! handshakes unless `resume` lets rustls resume sessions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::{backoff, drive, Ctx, Run, Session};
use crate::report::Recorder;

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub concurrency: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub resume: bool,
}

pub async fn run(ctx: Arc<Ctx>, opts: Opts, target_pid: Option<u32>) -> Result<Run<()>> {
    drive(
        opts.concurrency,
        opts.duration,
        opts.requests,
        target_pid,
        move |i, gate| {
            let ctx = ctx.clone();
            async move {
                let mut rec = Recorder::default();
                let mut s = Session::new(ctx.clone(), i);
                s.full_handshake = !opts.resume;
                let budget = gate.ready().await;
                while budget.take() {
                    let req = ctx.signed(&s.identity)?;
                    // Latency covers TCP connect + TLS handshake + the exchange.
                    if !s.send_recorded(&req, &mut rec).await {
                        backoff().await;
                    }
                    s.close();
                }
                Ok((rec, ()))
            }
        },
    )
    .await
}
