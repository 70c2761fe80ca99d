//! Prometheus metrics of the proxy. One registry per process, handles cloned
//! into the components that update them; `/metrics` renders the registry.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub refusals: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub upstream_seconds: HistogramVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshakes_started: IntCounterVec,
    pub serving_cert_expiry_seconds: IntGauge,
    pub key_set_version: IntGauge,
    pub key_set_keys: IntGauge,
    pub reloads: IntCounterVec,
    pub replay_cache_entries: IntGauge,
    pub loaded: IntGaugeVec,
    pub state_age_seconds: IntGauge,
    pub svid_renewals: IntCounterVec,
    pub svid_confirm_pending: IntGauge,
    pub own_key_refreshes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Latencies of a local sidecar: 50 µs .. ~26 s.
        let buckets = exponential_buckets(0.000_05, 2.0, 20).expect("static bucket layout");
        let requests = IntCounterVec::new(
            Opts::new(
                "zen_proxy_requests_total",
                "Requests by listener, route and status",
            ),
            &["listener", "route", "status"],
        )
        .expect("metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "zen_proxy_refusals_total",
                "Refused requests by reason code",
            ),
            &["reason"],
        )
        .expect("metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "zen_proxy_request_duration_seconds",
                "Time from request header to response end",
            )
            .buckets(buckets.clone()),
            &["listener"],
        )
        .expect("metric");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "zen_proxy_upstream_duration_seconds",
                "Time from upstream connect to upstream response end",
            )
            .buckets(buckets),
            &["upstream"],
        )
        .expect("metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "zen_proxy_tls_handshakes_total",
                "TLS handshakes by listener and result (ok or the refusal reason)",
            ),
            &["listener", "result"],
        )
        .expect("metric");
        let tls_handshakes_started = IntCounterVec::new(
            Opts::new(
                "zen_proxy_tls_handshakes_started_total",
                "TCP connections that began a TLS handshake, by listener; minus the sum of \
                 zen_proxy_tls_handshakes_total: handshakes that failed before any verdict \
                 (no client certificate, protocol error, client gone)",
            ),
            &["listener"],
        )
        .expect("metric");
        let serving_cert_expiry_seconds = IntGauge::new(
            "zen_proxy_serving_cert_expiry_seconds",
            "Seconds until the serving certificate expires",
        )
        .expect("metric");
        let key_set_version =
            IntGauge::new("zen_proxy_key_set_version", "Version of the loaded key set")
                .expect("metric");
        let key_set_keys = IntGauge::new(
            "zen_proxy_key_set_keys",
            "Number of keys in the loaded key set",
        )
        .expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "zen_proxy_reloads_total",
                "State reloads by what and result",
            ),
            &["what", "result"],
        )
        .expect("metric");
        let replay_cache_entries = IntGauge::new(
            "zen_proxy_replay_cache_entries",
            "Entries held by the replay cache",
        )
        .expect("metric");
        let loaded = IntGaugeVec::new(
            Opts::new(
                "zen_proxy_state_loaded",
                "1 when this piece of state is loaded",
            ),
            &["what"],
        )
        .expect("metric");
        let state_age_seconds = IntGauge::new(
            "zen_proxy_state_age_seconds",
            "Seconds since the last good state from zen-control (-1: none yet; only with a control source)",
        )
        .expect("metric");
        let svid_renewals = IntCounterVec::new(
            Opts::new(
                "zen_proxy_svid_renewals_total",
                "Renewals of the proxy's own SVID with zen-control (tls.from_control) by result",
            ),
            &["result"],
        )
        .expect("metric");
        let svid_confirm_pending = IntGauge::new(
            "zen_proxy_svid_confirm_pending",
            "1 while the proxy's own enrollment is not confirmed (control revokes it after its confirm timeout)",
        )
        .expect("metric");
        let own_key_refreshes = IntCounterVec::new(
            Opts::new(
                "zen_proxy_own_hmac_key_refreshes_total",
                "Switches to a rotated HMAC key of the proxy's own identity (tls.from_control) by result",
            ),
            &["result"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refusals.clone()),
            Box::new(request_seconds.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_handshakes_started.clone()),
            Box::new(serving_cert_expiry_seconds.clone()),
            Box::new(key_set_version.clone()),
            Box::new(key_set_keys.clone()),
            Box::new(reloads.clone()),
            Box::new(replay_cache_entries.clone()),
            Box::new(loaded.clone()),
            Box::new(state_age_seconds.clone()),
            Box::new(svid_renewals.clone()),
            Box::new(svid_confirm_pending.clone()),
            Box::new(own_key_refreshes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            refusals,
            request_seconds,
            upstream_seconds,
            tls_handshakes,
            tls_handshakes_started,
            serving_cert_expiry_seconds,
            key_set_version,
            key_set_keys,
            reloads,
            replay_cache_entries,
            loaded,
            state_age_seconds,
            svid_renewals,
            svid_confirm_pending,
            own_key_refreshes,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}
