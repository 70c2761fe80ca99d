//! Prometheus metrics (issue item 12), one registry per service instance.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub enrollments: IntCounterVec,
    pub svids_issued: IntCounterVec,
    pub renewals: IntCounterVec,
    pub key_rotations: IntCounter,
    pub active_agents: IntGauge,
    pub audit_events: IntCounter,
    pub longpoll_waiters: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let enrollments = IntCounterVec::new(
            Opts::new(
                "zen_control_enrollments_total",
                "Enrollment requests by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let svids_issued = IntCounterVec::new(
            Opts::new("zen_control_svids_issued_total", "X.509-SVIDs issued"),
            &["kind"],
        )
        .expect("valid metric");
        let renewals = IntCounterVec::new(
            Opts::new(
                "zen_control_renewals_total",
                "SVID renewal requests by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let key_rotations = IntCounter::new(
            "zen_control_key_rotations_total",
            "HMAC keys issued as successors by rotation",
        )
        .expect("valid metric");
        let active_agents = IntGauge::new(
            "zen_control_active_agents",
            "Agents enrolled, confirmed and not revoked",
        )
        .expect("valid metric");
        let audit_events = IntCounter::new(
            "zen_control_audit_events_total",
            "Audit events appended by this process",
        )
        .expect("valid metric");
        let longpoll_waiters = IntGauge::new(
            "zen_control_longpoll_waiters",
            "Proxy state long-polls currently waiting",
        )
        .expect("valid metric");
        for c in [
            Box::new(enrollments.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(svids_issued.clone()),
            Box::new(renewals.clone()),
            Box::new(key_rotations.clone()),
            Box::new(active_agents.clone()),
            Box::new(audit_events.clone()),
            Box::new(longpoll_waiters.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            enrollments,
            svids_issued,
            renewals,
            key_rotations,
            active_agents,
            audit_events,
            longpoll_waiters,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
