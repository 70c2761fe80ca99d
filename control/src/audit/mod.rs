//! Tamper-evident audit log: an append-only hash chain. Every event stores the sha-256 of the
//! previous event's canonical bytes (`prev_hash`) and of its own (`hash`); `verify` recomputes
//! both and reports the first sequence number where the chain breaks.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened. The string form is what the log stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    TokenCreate,
    TokenUse,
    EnrollmentAccepted,
    EnrollmentRefused,
    SvidIssue,
    EnrollmentConfirm,
    EnrollmentExpired,
    SvidRenew,
    RenewRefused,
    KeyIssue,
    KeyRotate,
    AgentRevoke,
    CaCreate,
    CaRotate,
    CaActivate,
    CaRetire,
    SecretDistribution,
    SecretRead,
    DesiredStateSet,
    AllowlistSet,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::TokenCreate => "token_create",
            AuditKind::TokenUse => "token_use",
            AuditKind::EnrollmentAccepted => "enrollment_accepted",
            AuditKind::EnrollmentRefused => "enrollment_refused",
            AuditKind::SvidIssue => "svid_issue",
            AuditKind::EnrollmentConfirm => "enrollment_confirm",
            AuditKind::EnrollmentExpired => "enrollment_expired",
            AuditKind::SvidRenew => "svid_renew",
            AuditKind::RenewRefused => "renew_refused",
            AuditKind::KeyIssue => "key_issue",
            AuditKind::KeyRotate => "key_rotate",
            AuditKind::AgentRevoke => "agent_revoke",
            AuditKind::CaCreate => "ca_create",
            AuditKind::CaRotate => "ca_rotate",
            AuditKind::CaActivate => "ca_activate",
            AuditKind::CaRetire => "ca_retire",
            AuditKind::SecretDistribution => "secret_distribution",
            AuditKind::SecretRead => "secret_read",
            AuditKind::DesiredStateSet => "desired_state_set",
            AuditKind::AllowlistSet => "allowlist_set",
        }
    }
}

/// An event before the store gives it a place in the chain.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub at: i64,
    pub kind: AuditKind,
    /// Who caused it: a SPIFFE ID, `operator`, `controller`, or `anonymous`.
    pub actor: String,
    /// Whom it concerns (a SPIFFE ID, a CA id), or empty.
    pub subject: String,
    /// JSON object with the specifics; never secrets.
    pub detail: serde_json::Value,
}

impl NewEvent {
    pub fn new(
        at: i64,
        kind: AuditKind,
        actor: impl Into<String>,
        subject: impl Into<String>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            at,
            kind,
            actor: actor.into(),
            subject: subject.into(),
            detail,
        }
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    /// The detail JSON exactly as stored (hashed byte for byte).
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Length-prefixed fields, so no two different events share canonical bytes.
pub fn canonical_bytes(
    seq: i64,
    at: i64,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: &str,
    prev_hash: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + kind.len() + actor.len() + subject.len() + detail.len());
    out.extend_from_slice(b"zen-audit-v1");
    for field in [
        seq.to_string().as_bytes(),
        at.to_string().as_bytes(),
        kind.as_bytes(),
        actor.as_bytes(),
        subject.as_bytes(),
        detail.as_bytes(),
        prev_hash.as_bytes(),
    ] {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

pub fn event_hash(
    seq: i64,
    at: i64,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    hex::encode(Sha256::digest(canonical_bytes(
        seq, at, kind, actor, subject, detail, prev_hash,
    )))
}

/// Places `ev` after `(prev_seq, prev_hash)` in the chain.
pub fn seal(prev: Option<(i64, String)>, ev: &NewEvent) -> AuditRecord {
    let (seq, prev_hash) = match prev {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS_HASH.to_string()),
    };
    let detail = ev.detail.to_string();
    let hash = event_hash(
        seq,
        ev.at,
        ev.kind.as_str(),
        &ev.actor,
        &ev.subject,
        &detail,
        &prev_hash,
    );
    AuditRecord {
        seq,
        at: ev.at,
        kind: ev.kind.as_str().to_string(),
        actor: ev.actor.clone(),
        subject: ev.subject.clone(),
        detail,
        prev_hash,
        hash,
    }
}

/// Where the chain broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Incremental verifier, fed events in sequence order (the log can be paged through).
#[derive(Debug)]
pub struct Verifier {
    expected_seq: i64,
    prev_hash: String,
    pub checked: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            checked: 0,
        }
    }
}

impl Verifier {
    pub fn feed(&mut self, r: &AuditRecord) -> Result<(), Broken> {
        let broken = |reason: String| Broken { seq: r.seq, reason };
        if r.seq != self.expected_seq {
            return Err(Broken {
                seq: self.expected_seq,
                reason: format!("expected event {}, found {}", self.expected_seq, r.seq),
            });
        }
        if r.prev_hash != self.prev_hash {
            return Err(broken(
                "prev_hash does not match the previous event's hash".into(),
            ));
        }
        let h = event_hash(
            r.seq,
            r.at,
            &r.kind,
            &r.actor,
            &r.subject,
            &r.detail,
            &r.prev_hash,
        );
        if h != r.hash {
            return Err(broken("content does not match its hash".into()));
        }
        self.expected_seq += 1;
        self.prev_hash = h;
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|r| (r.seq, r.hash.clone()));
            out.push(seal(
                prev,
                &NewEvent::new(
                    100 + i as i64,
                    AuditKind::TokenCreate,
                    "operator",
                    "spiffe://zen.local/x",
                    serde_json::json!({"i": i}),
                ),
            ));
        }
        out
    }

    fn verify(rs: &[AuditRecord]) -> Result<u64, Broken> {
        let mut v = Verifier::default();
        for r in rs {
            v.feed(r)?;
        }
        Ok(v.checked)
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)).unwrap(), 5);
    }

    #[test]
    fn tampered_detail_is_found_at_its_seq() {
        let mut c = chain(5);
        c[2].detail = r#"{"i":99}"#.into();
        assert_eq!(verify(&c).unwrap_err().seq, 3);
    }

    #[test]
    fn rehashed_tamper_is_found_at_the_next_event() {
        let mut c = chain(5);
        c[2].actor = "mallory".into();
        c[2].hash = event_hash(
            c[2].seq,
            c[2].at,
            &c[2].kind,
            &c[2].actor,
            &c[2].subject,
            &c[2].detail,
            &c[2].prev_hash,
        );
        assert_eq!(verify(&c).unwrap_err().seq, 4);
    }

    #[test]
    fn deleted_event_is_found() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(&c).unwrap_err().seq, 2);
    }
}
