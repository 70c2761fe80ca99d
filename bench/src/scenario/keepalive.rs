//! `keepalive`: C connections, closed loop — each connection sends its next
//! request as soon as the previous response is in. Also the load engine of
//! `swap` (with connection recycling).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::{backoff, drive, Ctx, Run, Session};
use crate::report::Recorder;

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub connections: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    /// Close and reopen a connection after this many requests.
    pub recycle_after: Option<u64>,
    /// Record the server certificate serial of every connection; this also
    /// turns TLS resumption off, since a resumed session re-presents the
    /// certificate of the session it resumes, not the server's current one.
    pub want_serial: bool,
}

/// Returns, per worker, the serials of the server certificates it saw.
pub async fn run(ctx: Arc<Ctx>, opts: Opts, target_pid: Option<u32>) -> Result<Run<Vec<String>>> {
    drive(
        opts.connections,
        opts.duration,
        opts.requests,
        target_pid,
        move |i, gate| {
            let ctx = ctx.clone();
            async move {
                let mut rec = Recorder::default();
                let mut s = Session::new(ctx.clone(), i);
                s.want_serial = opts.want_serial;
                s.full_handshake = opts.want_serial;
                if let Err(e) = s.ensure_connected(&mut rec).await {
                    rec.record_error(&e);
                }
                let budget = gate.ready().await;
                let mut on_conn = 0u64;
                while budget.take() {
                    let req = ctx.signed(&s.identity)?;
                    if !s.send_recorded(&req, &mut rec).await {
                        backoff().await;
                    }
                    on_conn += 1;
                    if opts.recycle_after.is_some_and(|n| on_conn >= n) {
                        s.close();
                        on_conn = 0;
                    }
                }
                Ok((rec, std::mem::take(&mut s.serials)))
            }
        },
    )
    .await
}
