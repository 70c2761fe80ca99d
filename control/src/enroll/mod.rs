//! Enrollment (DESIGN §7): one-use tokens bound to one SPIFFE ID; the token-signed request
//! that turns a CSR into an SVID plus a fresh HMAC key; confirmation over the agent listener;
//! and revocation of enrollments nobody confirmed in time.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use zen_trust::keys::EnrollmentBundle;
use zen_trust::secret::Secret;
use zen_trust::signature::{verify, RequestParts, SingleKey, VerifyPolicy};
use zen_trust::spiffe::SpiffeId;
use zen_trust::time::UnixTime;

use crate::api::error::ApiError;
use crate::api::identity::{agent_cluster, Caller};
use crate::app::App;
use crate::audit::{AuditKind, NewEvent};
use crate::ca::{check_csr, granted_sans, random_id, CsrError};
use crate::store::{
    EnrollmentCommit, EnrollmentRecord, EnrollmentState, StoreError, SvidRecord, TokenRecord,
};

pub fn token_aad(id: &str) -> String {
    format!("token:{id}")
}

/// What `token create` hands the operator (the secret is shown once, never stored in clear).
#[derive(Debug)]
pub struct CreatedToken {
    pub token_id: String,
    pub secret: Secret,
    pub spiffe_id: String,
    pub expires_at: i64,
}

/// Parses a SPIFFE ID and requires it to be in this service's trust domain.
pub fn own_id(app: &App, s: &str) -> Result<SpiffeId, String> {
    let id = SpiffeId::parse(s).map_err(|e| format!("`{s}` is not a valid SPIFFE ID: {e}"))?;
    if id.trust_domain() != app.trust_domain() {
        return Err(format!(
            "`{s}` is not in trust domain `{}`",
            app.trust_domain()
        ));
    }
    Ok(id)
}

pub async fn create_token(
    app: &App,
    spiffe_id: &str,
    ttl: Option<Duration>,
    actor: &str,
) -> anyhow::Result<CreatedToken> {
    let id = own_id(app, spiffe_id).map_err(anyhow::Error::msg)?;
    if id.path().is_empty() {
        anyhow::bail!("a token must name a workload, not the bare trust domain");
    }
    let ttl = ttl.unwrap_or(app.cfg.token_ttl);
    if ttl.is_zero() || ttl > app.cfg.token_max_ttl {
        anyhow::bail!(
            "--ttl must be between 1s and enrollment.token_max_ttl ({}s)",
            app.cfg.token_max_ttl.as_secs()
        );
    }
    if app.store.is_revoked(id.as_str()).await? {
        anyhow::bail!("{id} is revoked; it cannot enroll again");
    }
    let now = app.now();
    let token_id = random_id("tok-");
    let secret = Secret::generate();
    let expires_at = now + ttl.as_secs() as i64;
    let rec = TokenRecord {
        secret_enc: app.custody.seal(&token_aad(&token_id), secret.expose()),
        id: token_id.clone(),
        spiffe_id: id.to_string(),
        created_at: now,
        expires_at,
        used_at: None,
    };
    let ev = NewEvent::new(
        now,
        AuditKind::TokenCreate,
        actor,
        id.as_str(),
        json!({"token_id": token_id, "expires_at": expires_at}),
    );
    app.store.create_token(rec, ev).await?;
    app.audited(1);
    Ok(CreatedToken {
        token_id,
        secret,
        spiffe_id: id.to_string(),
        expires_at,
    })
}

/// The enrollment request as received, for signature verification.
pub struct ReceivedRequest<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    /// Client SPIFFE ID verified by the bootstrap proxy, if it required a client certificate.
    pub peer_spiffe_id: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    token_id: String,
    csr_pem: String,
}

/// Context for refusal audit events.
#[derive(Default)]
struct Known {
    token_id: Option<String>,
    spiffe_id: Option<String>,
}

pub async fn request(app: &App, req: ReceivedRequest<'_>) -> Result<EnrollmentBundle, ApiError> {
    let mut known = Known::default();
    match request_inner(app, &req, &mut known).await {
        Ok(b) => {
            app.metrics
                .enrollments
                .with_label_values(&["accepted"])
                .inc();
            app.metrics
                .svids_issued
                .with_label_values(&["enroll"])
                .inc();
            Ok(b)
        }
        Err(e) => {
            refused(app, &e, &known, req.peer_spiffe_id).await;
            Err(e)
        }
    }
}

/// Records a refused enrollment (metric + audit event), without changing anything else.
pub async fn refused_early(app: &App, e: &ApiError, peer: Option<&str>) {
    refused(app, e, &Known::default(), peer).await;
}

async fn refused(app: &App, e: &ApiError, known: &Known, peer: Option<&str>) {
    app.metrics.enrollments.with_label_values(&[e.code()]).inc();
    if matches!(e, ApiError::Internal(_)) {
        return;
    }
    let ev = NewEvent::new(
        app.now(),
        AuditKind::EnrollmentRefused,
        peer.unwrap_or("anonymous"),
        known.spiffe_id.clone().unwrap_or_default(),
        json!({"reason": e.code(), "detail": e.to_string(), "token_id": known.token_id}),
    );
    if let Err(err) = app.audit(vec![ev]).await {
        tracing::error!(error = %err, "cannot record refused enrollment");
    }
}

async fn request_inner(
    app: &App,
    req: &ReceivedRequest<'_>,
    known: &mut Known,
) -> Result<EnrollmentBundle, ApiError> {
    let body: EnrollBody = serde_json::from_slice(req.body)
        .map_err(|e| ApiError::CsrInvalid(format!("request body is not the expected JSON: {e}")))?;
    known.token_id = Some(body.token_id.clone());
    let token = app
        .store
        .get_token(&body.token_id)
        .await?
        .ok_or(ApiError::TokenUnknown)?;
    known.spiffe_id = Some(token.spiffe_id.clone());
    let owner = SpiffeId::parse(&token.spiffe_id).map_err(ApiError::internal)?;
    let secret = app
        .custody
        .open(&token_aad(&token.id), &token.secret_enc)
        .map_err(ApiError::internal)?;
    let secret = Secret::from_bytes(secret.to_vec());
    let now = app.now();

    // The signature proves possession of the token secret; token state is reported only to
    // callers who proved it. Expiry is checked below with its own code, so the lookup key
    // itself does not expire.
    let lookup = SingleKey::new(
        token.id.clone(),
        &secret,
        owner.clone(),
        UnixTime(token.created_at - 300),
        UnixTime(i64::MAX / 4),
    );
    // Scoped: RequestParts holds a non-Send `&dyn HeaderLookup` that must not live across awaits.
    {
        let parts = RequestParts {
            method: req.method,
            authority: req.authority,
            path: req.path,
            query: req.query,
            headers: req.headers,
        };
        let body_opt = (!req.body.is_empty()).then_some(req.body);
        verify(
            &VerifyPolicy::default(),
            &parts,
            body_opt,
            &lookup,
            UnixTime(now),
        )
        .map_err(ApiError::Signature)?;
    }

    if token.used_at.is_some() {
        return Err(ApiError::TokenUsed);
    }
    if now >= token.expires_at {
        return Err(ApiError::TokenExpired);
    }
    if app.store.is_revoked(owner.as_str()).await? {
        return Err(ApiError::SpiffeRevoked(owner.to_string()));
    }
    if app.cfg.require_spiffe {
        match req.peer_spiffe_id {
            Some(p) if p == owner.as_str() => {}
            Some(p) => {
                return Err(ApiError::SpiffeMismatch(format!(
                    "client certificate names {p}, the token is for {owner}"
                )))
            }
            None => {
                return Err(ApiError::SpiffeMismatch(
                    "BOOTSTRAP_REQUIRE_SPIFFE is on and no verified client SPIFFE ID came with the request".into(),
                ))
            }
        }
    }

    let csr = check_csr(&body.csr_pem, owner.as_str()).map_err(|e| match e {
        CsrError::Invalid(d) => ApiError::CsrInvalid(d),
        CsrError::KeyTooWeak(d) => ApiError::KeyTooWeak(d),
        e @ CsrError::SpiffeMismatch { .. } => ApiError::SpiffeMismatch(e.to_string()),
    })?;

    let sans = granted_sans(&csr, &owner).map_err(|e| ApiError::CsrInvalid(e.to_string()))?;
    let ca = app.ca.view();
    let svid = ca
        .signing
        .issue_with_sans(&csr, owner.as_str(), sans, now, app.cfg.svid_ttl)
        .map_err(ApiError::internal)?;
    let (key, key_secret) = crate::keys::issue(
        &app.custody,
        owner.as_str(),
        now,
        app.cfg.key_lifetime.as_secs() as i64,
    );
    let enrollment_id = random_id("enr-");
    let confirm_by = now + app.cfg.confirm_timeout.as_secs() as i64;
    let subject = owner.to_string();
    let events = vec![
        NewEvent::new(
            now,
            AuditKind::TokenUse,
            "anonymous",
            &subject,
            json!({"token_id": token.id, "enrollment_id": enrollment_id}),
        ),
        NewEvent::new(
            now,
            AuditKind::SvidIssue,
            "controller",
            &subject,
            json!({"serial": svid.serial_hex, "ca_id": ca.signing.id, "not_after": svid.not_after, "kind": "enroll"}),
        ),
        NewEvent::new(
            now,
            AuditKind::KeyIssue,
            "controller",
            &subject,
            json!({"key_id": key.key_id, "not_after": key.not_after}),
        ),
        NewEvent::new(
            now,
            AuditKind::EnrollmentAccepted,
            "anonymous",
            &subject,
            json!({"enrollment_id": enrollment_id, "token_id": token.id, "key_type": csr.key_type, "confirm_by": confirm_by}),
        ),
    ];
    let n_events = events.len();
    let commit = EnrollmentCommit {
        token_id: token.id.clone(),
        now,
        cluster_id: agent_cluster(&owner).map(|(c, _)| c),
        enrollment: EnrollmentRecord {
            id: enrollment_id.clone(),
            spiffe_id: subject.clone(),
            token_id: token.id.clone(),
            created_at: now,
            confirm_by,
            confirmed_at: None,
            status: EnrollmentState::Pending,
            svid_serial: svid.serial_hex.clone(),
            key_id: key.key_id.clone(),
            leaf_sha256: svid.leaf_sha256.clone(),
        },
        svid: SvidRecord {
            serial: svid.serial_hex.clone(),
            spiffe_id: subject.clone(),
            ca_id: ca.signing.id.clone(),
            not_before: svid.not_before,
            not_after: svid.not_after,
            issued_at: now,
            kind: "enroll".into(),
            leaf_sha256: svid.leaf_sha256.clone(),
        },
        key: key.clone(),
        events,
    };
    match app.store.commit_enrollment(commit).await {
        Ok(v) => {
            app.audited(n_events);
            app.published(v);
        }
        Err(StoreError::TokenUsed) => return Err(ApiError::TokenUsed),
        Err(e) => return Err(e.into()),
    }
    let renew_after = UnixTime(svid.renew_after());
    Ok(EnrollmentBundle {
        spiffe_id: owner,
        svid_chain_pem: svid.chain_pem,
        trust_bundle_pem: ca.bundle_pem.clone(),
        hmac: zen_trust::keys::HmacKeyFile {
            key_id: key.key_id,
            secret: key_secret,
            not_after: UnixTime(key.not_after),
        },
        renew_after,
        expires_at: UnixTime(svid.not_after),
        enrollment_id,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    pub enrollment_id: String,
}

/// `Hash=` of an Envoy-format x-forwarded-client-cert value.
fn xfcc_hash(v: &str) -> Option<String> {
    v.split([';', ','])
        .find_map(|kv| kv.trim().strip_prefix("Hash="))
        .map(|h| h.trim_matches('"').to_ascii_lowercase())
}

pub async fn confirm(
    app: &App,
    caller: &Caller,
    xfcc: Option<&str>,
    body: ConfirmBody,
) -> Result<serde_json::Value, ApiError> {
    let e = app
        .store
        .get_enrollment(&body.enrollment_id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "enrollment_unknown",
            detail: format!("no enrollment {}", body.enrollment_id),
        })?;
    if e.spiffe_id != caller.spiffe_id.as_str() {
        return Err(ApiError::SpiffeMismatch(format!(
            "enrollment {} belongs to another identity",
            e.id
        )));
    }
    match e.status {
        EnrollmentState::Confirmed => {
            return Ok(json!({"enrollment_id": e.id, "status": "confirmed"}));
        }
        EnrollmentState::Revoked => {
            return Err(ApiError::EnrollmentNotPending(format!(
                "enrollment {} was revoked (not confirmed in time)",
                e.id
            )))
        }
        EnrollmentState::Pending => {}
    }
    let now = app.now();
    if now >= e.confirm_by {
        return Err(ApiError::EnrollmentNotPending(format!(
            "confirmation window of enrollment {} has closed",
            e.id
        )));
    }
    // Confirmation must prove the new credentials: the request was signed with the issued key,
    // and (when the proxy says which certificate it saw) made with the issued SVID.
    if caller.key_id.as_deref() != Some(e.key_id.as_str()) {
        return Err(ApiError::SpiffeForbidden(
            "confirm must be signed with the HMAC key issued by this enrollment".into(),
        ));
    }
    if let Some(x) = xfcc {
        if xfcc_hash(x).as_deref() != Some(e.leaf_sha256.as_str()) {
            return Err(ApiError::SpiffeForbidden(
                "confirm must be made with the SVID issued by this enrollment".into(),
            ));
        }
    }
    let ev = NewEvent::new(
        now,
        AuditKind::EnrollmentConfirm,
        caller.spiffe_id.as_str(),
        caller.spiffe_id.as_str(),
        json!({"enrollment_id": e.id}),
    );
    match app.store.confirm_enrollment(&e.id, now, ev).await {
        Ok(()) => app.audited(1),
        Err(StoreError::Conflict(d)) => return Err(ApiError::EnrollmentNotPending(d)),
        Err(err) => return Err(err.into()),
    }
    app.refresh_gauges().await?;
    Ok(json!({"enrollment_id": e.id, "status": "confirmed"}))
}

/// Revokes the credentials of enrollments whose confirmation window has closed.
pub async fn expire_unconfirmed(app: &App) -> anyhow::Result<usize> {
    let now = app.now();
    let due = app.store.due_unconfirmed(now).await?;
    let mut n = 0;
    for e in due {
        let ev = NewEvent::new(
            now,
            AuditKind::EnrollmentExpired,
            "controller",
            e.spiffe_id.clone(),
            json!({"enrollment_id": e.id, "key_id": e.key_id, "serial": e.svid_serial}),
        );
        match app.store.expire_enrollment(&e.id, now, ev).await {
            Ok(v) => {
                app.audited(1);
                app.published(v);
                n += 1;
            }
            // Confirmed between the scan and now: nothing to revoke.
            Err(StoreError::Conflict(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::xfcc_hash;

    #[test]
    fn xfcc_hash_is_found() {
        assert_eq!(
            xfcc_hash("Hash=ABCD;URI=spiffe://zen.local/x").as_deref(),
            Some("abcd")
        );
        assert_eq!(xfcc_hash("URI=spiffe://zen.local/x"), None);
    }
}
