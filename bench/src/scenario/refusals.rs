//! `refusals`: closed-loop load where a set share of requests is bad, in
//! turn: a bad signature (401 `signature_invalid`), a replay of a request the
//! target already accepted (401 `replay`), and a correctly signed request for
//! another cluster's path (403 `spiffe_forbidden`). Every answer is checked
//! against the expected status and DESIGN §6 code; accepted and refused
//! requests get separate latency histograms, to show refusals are cheap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{backoff, drive, Ctx, Run, Session};
use crate::client::{Outcome, SignedRequest};
use crate::report::{histogram, Latency, Recorder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Good,
    BadSignature,
    Replay,
    WrongCluster,
}

const BAD_KINDS: [Kind; 3] = [Kind::BadSignature, Kind::Replay, Kind::WrongCluster];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::BadSignature => "bad_signature",
            Kind::Replay => "replay",
            Kind::WrongCluster => "wrong_cluster",
        }
    }

    /// Expected status and refusal code; `None` code = any 2xx.
    pub fn expected(self) -> (u16, Option<&'static str>) {
        match self {
            Kind::Good => (200, None),
            Kind::BadSignature => (401, Some("signature_invalid")),
            Kind::Replay => (401, Some("replay")),
            Kind::WrongCluster => (403, Some("spiffe_forbidden")),
        }
    }

    fn matches(self, o: &Outcome) -> bool {
        match self.expected() {
            (_, None) => (200..300).contains(&o.status),
            (status, Some(code)) => o.status == status && o.code.as_deref() == Some(code),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub expected: String,
    pub sent: u64,
    pub as_expected: u64,
    /// Other answers, as "status code" → count.
    pub other: BTreeMap<String, u64>,
    pub transport_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusalDetails {
    pub bad_share: f64,
    pub forbidden_path: String,
    pub kinds: BTreeMap<&'static str, Tally>,
    pub latency_accepted_us: Latency,
    pub latency_refused_us: Latency,
}

impl RefusalDetails {
    /// Answers that were not the expected one, plus transport errors.
    pub fn unexpected(&self) -> u64 {
        self.kinds
            .values()
            .map(|t| t.other.values().sum::<u64>() + t.transport_errors)
            .sum()
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: usize,
    pub duration: Duration,
    pub requests: Option<u64>,
    /// Share of requests that are bad, 0..=1.
    pub bad_share: f64,
    pub forbidden_path: String,
}

/// The URL's path with the cluster segment (the one after `clusters`)
/// replaced by another cluster's id.
pub fn forbidden_path_for(path: &str) -> Result<String> {
    let segs: Vec<&str> = path.split('/').collect();
    let Some(i) = segs.iter().position(|s| *s == "clusters") else {
        bail!("cannot derive a wrong-cluster path from {path:?} (no /clusters/<id>/ segment); pass --forbidden-path");
    };
    let Some(cid) = segs.get(i + 1).filter(|s| !s.is_empty()) else {
        bail!("{path:?} has no cluster id after /clusters/; pass --forbidden-path");
    };
    let mut out: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
    out[i + 1] = format!("{cid}-other");
    Ok(out.join("/"))
}

struct Worker {
    rec: Recorder,
    out: WorkerTallies,
}

impl Worker {
    fn new() -> Worker {
        let mut tallies = BTreeMap::new();
        for k in [Kind::Good].into_iter().chain(BAD_KINDS) {
            let (status, code) = k.expected();
            tallies.insert(
                k,
                Tally {
                    expected: match code {
                        Some(c) => format!("{status} {c}"),
                        None => "2xx".into(),
                    },
                    ..Tally::default()
                },
            );
        }
        Worker {
            rec: Recorder::default(),
            out: WorkerTallies {
                tallies,
                accepted: histogram(),
                refused: histogram(),
            },
        }
    }

    /// Sends one request of `kind`; true when the target accepted it.
    async fn send(&mut self, s: &mut Session, kind: Kind, req: &SignedRequest) -> bool {
        let t = Instant::now();
        let result = s.exchange(req, &mut self.rec).await;
        let tally = self.out.tallies.entry(kind).or_default();
        tally.sent += 1;
        match result {
            Ok(o) => {
                let took = t.elapsed();
                self.rec.record(took, &o);
                let us = (took.as_micros() as u64).max(1);
                if (200..300).contains(&o.status) {
                    self.out.accepted.saturating_record(us);
                } else {
                    self.out.refused.saturating_record(us);
                }
                if kind.matches(&o) {
                    tally.as_expected += 1;
                } else {
                    let label = format!("{} {}", o.status, o.code.as_deref().unwrap_or("-"));
                    *tally.other.entry(label).or_default() += 1;
                }
                (200..300).contains(&o.status)
            }
            Err(e) => {
                tally.transport_errors += 1;
                self.rec.record_error(&e);
                backoff().await;
                false
            }
        }
    }
}

pub async fn run(
    ctx: Arc<Ctx>,
    opts: Opts,
    target_pid: Option<u32>,
) -> Result<(Run<WorkerTallies>, RefusalDetails)> {
    if !(0.0..=1.0).contains(&opts.bad_share) {
        bail!("--bad-share must be between 0 and 1");
    }
    let share = opts.bad_share;
    let forbidden = Arc::new(opts.forbidden_path.clone());
    let run = drive(
        opts.connections,
        opts.duration,
        opts.requests,
        target_pid,
        move |i, gate| {
            let ctx = ctx.clone();
            let forbidden = forbidden.clone();
            async move {
                let mut w = Worker::new();
                let mut s = Session::new(ctx.clone(), i);
                if let Err(e) = s.ensure_connected(&mut w.rec).await {
                    w.rec.record_error(&e);
                }
                let budget = gate.ready().await;
                let mut k = 0u64;
                let mut next_bad = i; // workers start at different kinds
                let mut last_accepted: Option<SignedRequest> = None;
                while budget.take() {
                    // Bad exactly when floor(k·share) steps up: an even spread.
                    let bad = ((k + 1) as f64 * share).floor() > (k as f64 * share).floor();
                    k += 1;
                    let kind = if bad {
                        next_bad += 1;
                        BAD_KINDS[next_bad % BAD_KINDS.len()]
                    } else {
                        Kind::Good
                    };
                    match kind {
                        Kind::Good => {
                            let req = ctx.signed(&s.identity)?;
                            if w.send(&mut s, kind, &req).await {
                                last_accepted = Some(req);
                            }
                        }
                        Kind::BadSignature => {
                            let mut req = ctx.signed(&s.identity)?;
                            req.corrupt_signature();
                            w.send(&mut s, kind, &req).await;
                        }
                        Kind::Replay => {
                            // A replay needs a request the target accepted:
                            // send a good one first when none is at hand.
                            let original = match last_accepted.take() {
                                Some(r) => Some(r),
                                None => {
                                    let req = ctx.signed(&s.identity)?;
                                    w.send(&mut s, Kind::Good, &req).await.then_some(req)
                                }
                            };
                            if let Some(req) = original {
                                w.send(&mut s, kind, &req).await;
                            }
                        }
                        Kind::WrongCluster => {
                            let req = SignedRequest::new(
                                &ctx.target,
                                &forbidden,
                                &ctx.method,
                                &ctx.body,
                                &s.identity,
                            )?;
                            w.send(&mut s, kind, &req).await;
                        }
                    }
                }
                Ok((w.rec, w.out))
            }
        },
    )
    .await?;
    let mut kinds: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut accepted = histogram();
    let mut refused = histogram();
    for out in &run.outputs {
        for (k, t) in &out.tallies {
            let sum = kinds.entry(k.name()).or_insert_with(|| Tally {
                expected: t.expected.clone(),
                ..Tally::default()
            });
            sum.sent += t.sent;
            sum.as_expected += t.as_expected;
            sum.transport_errors += t.transport_errors;
            for (label, n) in &t.other {
                *sum.other.entry(label.clone()).or_default() += n;
            }
        }
        let _ = accepted.add(&out.accepted);
        let _ = refused.add(&out.refused);
    }
    let details = RefusalDetails {
        bad_share: share,
        forbidden_path: opts.forbidden_path,
        kinds,
        latency_accepted_us: Latency::of(&accepted),
        latency_refused_us: Latency::of(&refused),
    };
    Ok((run, details))
}

/// One worker's refusal bookkeeping, merged by `run`.
pub struct WorkerTallies {
    tallies: BTreeMap<Kind, Tally>,
    accepted: Histogram<u64>,
    refused: Histogram<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_path_swaps_the_cluster() {
        assert_eq!(
            forbidden_path_for("/agent/v1/clusters/c1/desired-state").unwrap(),
            "/agent/v1/clusters/c1-other/desired-state"
        );
        assert!(forbidden_path_for("/healthz").is_err());
    }

    #[test]
    fn outcomes_are_matched_on_status_and_code() {
        let replay = Outcome {
            status: 401,
            code: Some("replay".into()),
        };
        assert!(Kind::Replay.matches(&replay));
        assert!(!Kind::BadSignature.matches(&replay));
        assert!(!Kind::Good.matches(&replay));
        let ok = Outcome {
            status: 200,
            code: None,
        };
        assert!(Kind::Good.matches(&ok));
        let wrong_status = Outcome {
            status: 400,
            code: Some("spiffe_forbidden".into()),
        };
        assert!(!Kind::WrongCluster.matches(&wrong_status));
    }
}
