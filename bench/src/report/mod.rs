//! What a run measured: a per-worker `Recorder` (merged at the end, so no
//! lock on the request path) and the `Report` printed as a table or JSON.

pub mod procfs;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{Outcome, TransportError};
pub use procfs::{TargetProbe, TargetUsage};

/// Highest latency the histograms hold: 60 s, in µs.
const MAX_LATENCY_US: u64 = 60_000_000;

pub fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; 3 significant digits.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone)]
pub struct Recorder {
    pub latency: Histogram<u64>,
    /// Responses received (any status).
    pub responses: u64,
    pub ok: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub codes: BTreeMap<String, u64>,
    pub transport_errors: BTreeMap<&'static str, u64>,
    pub connections_opened: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: histogram(),
            responses: 0,
            ok: 0,
            statuses: BTreeMap::new(),
            codes: BTreeMap::new(),
            transport_errors: BTreeMap::new(),
            connections_opened: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, latency: Duration, outcome: &Outcome) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.latency.saturating_record(us);
        self.responses += 1;
        if (200..300).contains(&outcome.status) {
            self.ok += 1;
        }
        *self.statuses.entry(outcome.status).or_default() += 1;
        if let Some(code) = &outcome.code {
            *self.codes.entry(code.clone()).or_default() += 1;
        }
    }

    pub fn record_error(&mut self, e: &TransportError) {
        *self.transport_errors.entry(e.kind()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.responses += other.responses;
        self.ok += other.ok;
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &other.codes {
            *self.codes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.transport_errors {
            *self.transport_errors.entry(k).or_default() += v;
        }
        self.connections_opened += other.connections_opened;
    }

    pub fn transport_error_count(&self) -> u64 {
        self.transport_errors.values().sum()
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub url: String,
    pub connections: usize,
    pub client_threads: usize,
    pub duration_secs: f64,
    /// Responses received, any status.
    pub requests: u64,
    pub ok: u64,
    pub requests_per_sec: f64,
    pub connections_opened: u64,
    pub statuses: BTreeMap<String, u64>,
    pub refusal_codes: BTreeMap<String, u64>,
    pub transport_errors: BTreeMap<String, u64>,
    /// Outcomes the scenario did not expect (wrong status or code, transport
    /// errors). Zero on a healthy run.
    pub unexpected: u64,
    pub latency_us: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetUsage>,
    /// Scenario-specific figures (rate, refusal checks, swaps, idle memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Report {
    pub fn new(
        scenario: &'static str,
        url: &str,
        connections: usize,
        client_threads: usize,
        elapsed: Duration,
        rec: &Recorder,
    ) -> Report {
        let secs = elapsed.as_secs_f64();
        Report {
            scenario,
            url: url.to_owned(),
            connections,
            client_threads,
            duration_secs: secs,
            requests: rec.responses,
            ok: rec.ok,
            requests_per_sec: if secs > 0.0 {
                rec.responses as f64 / secs
            } else {
                0.0
            },
            connections_opened: rec.connections_opened,
            statuses: rec
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            refusal_codes: rec.codes.clone(),
            transport_errors: rec
                .transport_errors
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            unexpected: (rec.responses - rec.ok) + rec.transport_error_count(),
            latency_us: Latency::of(&rec.latency),
            target: None,
            details: None,
        }
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario     {}", self.scenario);
        let _ = writeln!(s, "url          {}", self.url);
        let _ = writeln!(
            s,
            "connections  {} (opened {}), client threads {}",
            self.connections, self.connections_opened, self.client_threads
        );
        let _ = writeln!(s, "duration     {:.2} s", self.duration_secs);
        let _ = writeln!(
            s,
            "requests     {} ({} 2xx)   {:.1} req/s",
            self.requests, self.ok, self.requests_per_sec
        );
        let join = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "-".to_owned()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(s, "statuses     {}", join(&self.statuses));
        let _ = writeln!(s, "refusals     {}", join(&self.refusal_codes));
        let _ = writeln!(s, "errors       {}", join(&self.transport_errors));
        let _ = writeln!(s, "unexpected   {}", self.unexpected);
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            ms(l.mean as u64)
        );
        if let Some(t) = &self.target {
            let _ = writeln!(
                s,
                "target       pid {} ({} processes): {:.1} µs CPU/request, {:.0} % of a core",
                t.pid, t.processes, t.cpu_us_per_request, t.cpu_percent
            );
            let _ = writeln!(
                s,
                "target mem   RSS {:.1} MB, peak RSS {:.1} MB, PSS {:.1} MB",
                t.memory.rss_kb as f64 / 1024.0,
                t.memory.peak_rss_kb as f64 / 1024.0,
                t.memory.pss_kb as f64 / 1024.0
            );
        }
        if let Some(d) = &self.details {
            let pretty = serde_json::to_string_pretty(d).unwrap_or_default();
            let _ = writeln!(
                s,
                "details      {}",
                pretty.replace('\n', "\n             ")
            );
        }
        s
    }
}

/// Microseconds as a short human figure.
fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{us}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_report() {
        let mut a = Recorder::default();
        a.record(
            Duration::from_micros(100),
            &Outcome {
                status: 200,
                code: None,
            },
        );
        let mut b = Recorder::default();
        b.record(
            Duration::from_micros(300),
            &Outcome {
                status: 401,
                code: Some("replay".into()),
            },
        );
        b.record_error(&TransportError::Timeout);
        a.merge(&b);
        let r = Report::new("keepalive", "https://x/", 1, 1, Duration::from_secs(2), &a);
        assert_eq!(r.requests, 2);
        assert_eq!(r.ok, 1);
        assert_eq!(r.unexpected, 2);
        assert_eq!(r.refusal_codes.get("replay"), Some(&1));
        assert_eq!(r.transport_errors.get("timeout"), Some(&1));
        assert!((r.requests_per_sec - 1.0).abs() < 1e-9);
        assert!(r.latency_us.p50 <= r.latency_us.p99);
        assert!(r.latency_us.max >= 300);
        assert!(r.to_table().contains("replay: 1"));
    }
}
