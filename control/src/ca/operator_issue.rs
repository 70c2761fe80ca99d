//! `zen-control ca issue`: an operator signs an SVID from a CSR without going through enrollment —
//! for the proxy's own serving identity, which must exist before its bootstrap listener can serve.
//! Recorded and audited like every other issuance, so `agent revoke` reaches its serial too.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::SanType;
use serde_json::{json, Value};

use super::{check_csr, CsrError};
use crate::app::App;
use crate::audit::{AuditKind, NewEvent};
use crate::store::SvidRecord;

pub async fn issue_for_operator(
    app: &App,
    spiffe_id: &str,
    csr_pem: &str,
    dns: &[String],
    ips: &[IpAddr],
    ttl: Option<Duration>,
    actor: &str,
) -> anyhow::Result<Value> {
    let id = crate::enroll::own_id(app, spiffe_id).map_err(anyhow::Error::msg)?;
    let csr = check_csr(csr_pem, id.as_str()).map_err(|e| match e {
        CsrError::Invalid(d) | CsrError::KeyTooWeak(d) => anyhow::anyhow!("CSR refused: {d}"),
        e @ CsrError::SpiffeMismatch { .. } => anyhow::anyhow!("CSR refused: {e}"),
    })?;
    let mut sans = Vec::with_capacity(dns.len() + ips.len());
    for name in dns {
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|_| anyhow::anyhow!("--dns {name:?} is not a valid DNS name"))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    // A CA rotation retires the old root `svid.ttl` after it stops issuing; a longer-lived SVID
    // would outlive its root and be refused by every relying party before it expires.
    if let Some(t) = ttl.filter(|t| *t > app.cfg.svid_ttl) {
        anyhow::bail!(
            "--ttl {}s is longer than svid.ttl ({}s): a CA rotation removes the old root svid.ttl \
             after it stops issuing, so the SVID would stop verifying before it expires",
            t.as_secs(),
            app.cfg.svid_ttl.as_secs()
        );
    }
    let now = app.now();
    let ca = app.ca.view();
    let svid = ca.signing.issue_with_sans(
        &csr,
        id.as_str(),
        sans,
        now,
        ttl.unwrap_or(app.cfg.svid_ttl),
    )?;
    let ev = NewEvent::new(
        now,
        AuditKind::SvidIssue,
        actor,
        id.as_str(),
        json!({"serial": svid.serial_hex, "ca_id": ca.signing.id, "not_after": svid.not_after,
               "key_type": csr.key_type, "dns": dns, "ips": ips, "via": "operator"}),
    );
    app.store
        .record_svid(
            SvidRecord {
                serial: svid.serial_hex.clone(),
                spiffe_id: id.as_str().to_string(),
                ca_id: ca.signing.id.clone(),
                not_before: svid.not_before,
                not_after: svid.not_after,
                issued_at: now,
                kind: "operator".into(),
                leaf_sha256: svid.leaf_sha256.clone(),
            },
            ev,
        )
        .await?;
    app.audited(1);
    app.metrics
        .svids_issued
        .with_label_values(&["operator"])
        .inc();
    Ok(json!({
        "spiffe_id": id.as_str(),
        "svid_chain_pem": svid.chain_pem,
        "trust_bundle_pem": ca.bundle_pem,
        "serial": svid.serial_hex,
        "not_after": zen_trust::UnixTime(svid.not_after),
    }))
}
