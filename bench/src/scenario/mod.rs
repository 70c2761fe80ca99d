//! Load scenarios. Each worker owns its connection and its `Recorder`; the
//! recorders are merged when the run ends.

pub mod handshake;
pub mod idle;
pub mod keepalive;
pub mod rate;
pub mod refusals;
pub mod swap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use std::future::Future;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Method;
use tokio::sync::Barrier;

use crate::client::{connect, Conn, Outcome, SignedRequest, Target, TransportError};
use crate::identity::Identity;
use crate::report::{Recorder, TargetProbe, TargetUsage};

/// What every request of a run shares.
pub struct Ctx {
    pub target: Target,
    pub identities: Vec<Arc<Identity>>,
    pub method: Method,
    pub body: Bytes,
    pub timeout: Duration,
}

impl Ctx {
    /// Identities are spread over workers round-robin.
    pub fn identity(&self, worker: usize) -> Arc<Identity> {
        self.identities[worker % self.identities.len()].clone()
    }

    /// A freshly signed request for the URL's own path.
    pub fn signed(&self, identity: &Identity) -> Result<SignedRequest> {
        SignedRequest::new(
            &self.target,
            &self.target.path,
            &self.method,
            &self.body,
            identity,
        )
    }
}

/// Stop condition shared by a run's workers: a deadline, and optionally a
/// total number of requests.
pub struct Budget {
    start: Instant,
    end: Instant,
    remaining: Option<AtomicU64>,
}

impl Budget {
    pub fn new(duration: Duration, requests: Option<u64>) -> Budget {
        let start = Instant::now();
        Budget {
            start,
            end: start + duration,
            remaining: requests.map(AtomicU64::new),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn end(&self) -> Instant {
        self.end
    }

    /// Claims one request; false once the run is over.
    pub fn take(&self) -> bool {
        if Instant::now() >= self.end {
            return false;
        }
        match &self.remaining {
            None => true,
            Some(r) => r
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// One worker's connection, reopened when it breaks or the server closes it.
pub struct Session {
    pub ctx: Arc<Ctx>,
    pub identity: Arc<Identity>,
    conn: Option<Conn>,
    /// Disable TLS resumption: every connect is a full handshake.
    pub full_handshake: bool,
    /// Record the server certificate's serial on each connect (`swap`).
    pub want_serial: bool,
    pub serials: Vec<String>,
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, worker: usize) -> Session {
        let identity = ctx.identity(worker);
        Session {
            ctx,
            identity,
            conn: None,
            full_handshake: false,
            want_serial: false,
            serials: Vec::new(),
        }
    }

    /// Opens the connection if there is none (or the server closed it).
    pub async fn ensure_connected(&mut self, rec: &mut Recorder) -> Result<(), TransportError> {
        if self.conn.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let tls = if self.full_handshake {
            self.identity.tls_full_handshake.clone()
        } else {
            self.identity.tls.clone()
        };
        let fut = connect(&self.ctx.target, tls, self.want_serial);
        let conn = match tokio::time::timeout(self.ctx.timeout, fut).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(TransportError::Timeout),
        };
        rec.connections_opened += 1;
        if let Some(s) = &conn.server_serial {
            if self.serials.last() != Some(s) {
                self.serials.push(s.clone());
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Sends one request and records its latency, measured from now (so it includes a connect
    /// and handshake when one is needed), or its transport error. Returns false on an error.
    pub async fn send_recorded(&mut self, req: &SignedRequest, rec: &mut Recorder) -> bool {
        let t = Instant::now();
        match self.exchange(req, rec).await {
            Ok(o) => {
                rec.record(t.elapsed(), &o);
                true
            }
            Err(e) => {
                rec.record_error(&e);
                false
            }
        }
    }

    /// Sends one request (connecting first if needed). On a transport error
    /// the connection is dropped so the next call starts a fresh one.
    pub async fn exchange(
        &mut self,
        req: &SignedRequest,
        rec: &mut Recorder,
    ) -> Result<Outcome, TransportError> {
        self.ensure_connected(rec).await?;
        let http = req
            .to_http(&self.ctx.target)
            .map_err(|e| TransportError::Request(format!("{e:#}")))?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(TransportError::Request("no connection".into()));
        };
        let result = match tokio::time::timeout(self.ctx.timeout, conn.send(http)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    pub fn close(&mut self) {
        self.conn = None;
    }

    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }
}

/// Lines workers up so the clock (and the target probe) start only once
/// every worker has connected: steady-state figures then exclude the first
/// handshakes. Workers call `ready`; the driver calls `all_ready` then `go`.
pub struct Gate {
    connected: Barrier,
    start: Barrier,
    budget: OnceLock<Budget>,
}

impl Gate {
    pub fn new(workers: usize) -> Arc<Gate> {
        Arc::new(Gate {
            connected: Barrier::new(workers + 1),
            start: Barrier::new(workers + 1),
            budget: OnceLock::new(),
        })
    }

    /// Worker side: waits until the run starts, returns its budget.
    pub async fn ready(&self) -> &Budget {
        self.connected.wait().await;
        self.start.wait().await;
        self.budget
            .get()
            .expect("the driver sets the budget before opening the gate")
    }

    /// Driver side: waits for every worker to be connected.
    pub async fn all_ready(&self) {
        self.connected.wait().await;
    }

    /// Driver side: starts the run.
    pub async fn go(&self, budget: Budget) {
        let _ = self.budget.set(budget);
        self.start.wait().await;
    }
}

/// A finished run: merged recorder, wall time, target usage and each
/// worker's scenario-specific output.
pub struct Run<T> {
    pub rec: Recorder,
    pub elapsed: Duration,
    pub target: Option<TargetUsage>,
    pub outputs: Vec<T>,
}

/// Spawns `workers` workers, starts the clock (and the target probe) once
/// all are connected, and collects them. Every worker must call
/// `gate.ready()` exactly once, whatever happens before it.
pub async fn drive<T, W, Fut>(
    workers: usize,
    duration: Duration,
    requests: Option<u64>,
    target_pid: Option<u32>,
    worker: W,
) -> Result<Run<T>>
where
    T: Send + 'static,
    W: Fn(usize, Arc<Gate>) -> Fut,
    Fut: Future<Output = Result<(Recorder, T)>> + Send + 'static,
{
    let gate = Gate::new(workers);
    let handles: Vec<_> = (0..workers)
        .map(|i| tokio::spawn(worker(i, gate.clone())))
        .collect();
    gate.all_ready().await;
    let probe = target_pid.map(TargetProbe::start).transpose()?;
    let t0 = Instant::now();
    gate.go(Budget::new(duration, requests)).await;
    let mut rec = Recorder::default();
    let mut outputs = Vec::with_capacity(workers);
    for h in handles {
        let (r, out) = h.await.context("a worker panicked")??;
        rec.merge(&r);
        outputs.push(out);
    }
    let elapsed = t0.elapsed();
    let target = probe.map(|p| p.finish(rec.responses)).transpose()?;
    Ok(Run {
        rec,
        elapsed,
        target,
        outputs,
    })
}

/// After a transport error, wait a little before retrying so a dead target
/// does not turn the generator into a busy loop.
pub async fn backoff() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}
