//! Agent routes. The caller's identity and cluster come from `x-zen-spiffe-id` only.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use zen_trust::time::UnixTime;

use super::error::ApiError;
use super::identity::Caller;
use super::{parse_json, read_body};
use crate::app::App;
use crate::audit::{AuditKind, NewEvent};
use crate::ca::{check_csr, granted_sans, CsrError};
use crate::store::SvidRecord;

/// Agents may only touch their own cluster's resources.
fn own_cluster(caller: &Caller, path_cluster: &str) -> Result<String, ApiError> {
    let cluster = caller.cluster()?;
    if cluster != path_cluster {
        return Err(ApiError::SpiffeForbidden(format!(
            "{} may not access cluster {path_cluster}",
            caller.spiffe_id
        )));
    }
    Ok(cluster)
}

async fn not_revoked(app: &App, caller: &Caller) -> Result<(), ApiError> {
    if app.store.is_revoked(caller.spiffe_id.as_str()).await? {
        return Err(ApiError::SpiffeRevoked(caller.spiffe_id.to_string()));
    }
    Ok(())
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag)
}

pub async fn desired_state(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cluster = own_cluster(&caller, &cid)?;
    not_revoked(&app, &caller).await?;
    let doc = app
        .store
        .get_desired_state(&cluster)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            code: "desired_state_unknown",
            detail: format!("no desired state set for cluster {cluster}"),
        })?;
    let etag = HeaderValue::from_str(&doc.tag).map_err(ApiError::internal)?;
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if etag_matches(inm, &doc.tag) {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        }
    }
    Ok((
        StatusCode::OK,
        [
            (header::ETAG, etag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        doc.body,
    )
        .into_response())
}

const STATUSES: &[&str] = &["ok", "healthy", "starting", "degraded", "unhealthy"];
const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct Heartbeat {
    #[serde(alias = "agent_version")]
    pub version: String,
    pub status: String,
    /// Optional; when present it must be the caller's own ID.
    #[serde(default)]
    pub spiffe_id: Option<String>,
}

fn validate(hb: &Heartbeat, caller: &Caller) -> Result<(), String> {
    if hb.version.is_empty() || hb.version.len() > 64 || hb.version.chars().any(char::is_control) {
        return Err("version must be 1..64 printable characters".into());
    }
    if !STATUSES.contains(&hb.status.as_str()) {
        return Err(format!("status must be one of {}", STATUSES.join(", ")));
    }
    if let Some(id) = &hb.spiffe_id {
        if id != caller.spiffe_id.as_str() {
            return Err(format!(
                "spiffe_id {id} is not the caller ({})",
                caller.spiffe_id
            ));
        }
    }
    Ok(())
}

/// What the agent should know about its keys: whether a newer key is waiting.
async fn key_hint(app: &App, caller: &Caller) -> Result<Value, ApiError> {
    let keys = app.store.keys_of(caller.spiffe_id.as_str()).await?;
    let now = app.now();
    let v = crate::keys::view_for(&keys, caller.key_id.as_deref(), now);
    Ok(json!({
        "new_key_available": v.next.is_some(),
        "next_key_id": v.next.map(|k| k.key_id.clone()),
        "current_key_not_after": v.current.map(|k| UnixTime(k.not_after)),
    }))
}

async fn record(app: &App, caller: &Caller, hb: &Heartbeat) -> Result<(), ApiError> {
    match app
        .store
        .record_heartbeat(
            caller.spiffe_id.as_str(),
            app.now(),
            &hb.version,
            &hb.status,
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(crate::store::StoreError::NotFound(_)) => Err(ApiError::NotFound {
            code: "agent_unknown",
            detail: format!("{} has not enrolled", caller.spiffe_id),
        }),
        Err(e) => Err(e.into()),
    }
}

pub async fn heartbeat(
    State(app): State<Arc<App>>,
    caller: Caller,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    caller.cluster()?;
    not_revoked(&app, &caller).await?;
    let (parts, body) = req.into_parts();
    let hb: Heartbeat = parse_json(&read_body(&parts.headers, body).await?)?;
    validate(&hb, &caller).map_err(ApiError::InvalidRequest)?;
    record(&app, &caller, &hb).await?;
    Ok(Json(json!({
        "status": "ok",
        "server_time": UnixTime(app.now()),
        "keys": key_hint(&app, &caller).await?,
        // A CA rotation's new root reaches agents here, long before the proxy serves a certificate
        // issued by it (ca.propagation_delay); the agent rewrites bundle.pem when this differs.
        "trust_bundle_pem": app.ca.view().bundle_pem.clone(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    heartbeats: Vec<Value>,
}

pub async fn heartbeats(
    State(app): State<Arc<App>>,
    caller: Caller,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    caller.cluster()?;
    not_revoked(&app, &caller).await?;
    let (parts, body) = req.into_parts();
    let batch: Batch = parse_json(&read_body(&parts.headers, body).await?)?;
    if batch.heartbeats.is_empty() || batch.heartbeats.len() > MAX_BATCH {
        return Err(ApiError::InvalidRequest(format!(
            "heartbeats must hold 1..{MAX_BATCH} items"
        )));
    }
    let mut results = Vec::with_capacity(batch.heartbeats.len());
    let mut last_ok: Option<Heartbeat> = None;
    let (mut accepted, mut rejected) = (0, 0);
    for (i, item) in batch.heartbeats.into_iter().enumerate() {
        let checked = serde_json::from_value::<Heartbeat>(item)
            .map_err(|e| e.to_string())
            .and_then(|hb| validate(&hb, &caller).map(|_| hb));
        match checked {
            Ok(hb) => {
                accepted += 1;
                results.push(json!({"index": i, "status": "ok"}));
                last_ok = Some(hb);
            }
            Err(detail) => {
                rejected += 1;
                results.push(json!({"index": i, "status": "rejected", "error": "invalid_heartbeat", "detail": detail}));
            }
        }
    }
    // Items of one batch are one agent's reports; the last valid one is its current state.
    if let Some(hb) = &last_ok {
        record(&app, &caller, hb).await?;
    }
    Ok(Json(json!({
        "accepted": accepted,
        "rejected": rejected,
        "results": results,
        "server_time": UnixTime(app.now()),
        "keys": key_hint(&app, &caller).await?,
        "trust_bundle_pem": app.ca.view().bundle_pem.clone(),
    })))
}

#[derive(Debug, Deserialize)]
struct AdapterReport {
    adapters: Vec<Value>,
}

pub async fn adapters_sync(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(cluster_id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let cluster = own_cluster(&caller, &cluster_id)?;
    not_revoked(&app, &caller).await?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body).await?;
    let report: AdapterReport = parse_json(&bytes)?;
    let mut names = std::collections::HashSet::new();
    for (i, a) in report.adapters.iter().enumerate() {
        let name = a
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!("adapters[{i}] needs a non-empty string `name`"))
            })?;
        if !names.insert(name.to_string()) {
            return Err(ApiError::InvalidRequest(format!(
                "adapter `{name}` is reported twice"
            )));
        }
    }
    let now = app.now();
    let canonical =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).map_err(ApiError::internal)?)
            .map_err(ApiError::internal)?;
    app.store
        .store_adapter_report(&cluster, caller.spiffe_id.as_str(), &canonical, now)
        .await?;
    Ok(Json(json!({
        "status": "stored",
        "cluster_id": cluster,
        "adapters": report.adapters.len(),
        "received_at": UnixTime(now),
    })))
}

pub async fn allowlist(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let cluster = caller.cluster()?;
    not_revoked(&app, &caller).await?;
    let doc = app.store.get_allowlist(&cluster).await?;
    let (entries, version) = match doc {
        Some(d) => (
            serde_json::from_slice::<Value>(&d.body).map_err(ApiError::internal)?,
            d.version,
        ),
        None => (json!([]), 0),
    };
    Ok(Json(
        json!({"cluster_id": cluster, "version": version, "entries": entries}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    csr_pem: String,
}

pub async fn renew(
    State(app): State<Arc<App>>,
    caller: Caller,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let result = renew_inner(&app, &caller, req).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    app.metrics.renewals.with_label_values(&[label]).inc();
    if let Err(e) = &result {
        if !matches!(e, ApiError::Internal(_)) {
            let ev = NewEvent::new(
                app.now(),
                AuditKind::RenewRefused,
                caller.spiffe_id.as_str(),
                caller.spiffe_id.as_str(),
                json!({"reason": e.code(), "detail": e.to_string()}),
            );
            if let Err(err) = app.audit(vec![ev]).await {
                tracing::error!(error = %err, "cannot record refused renewal");
            }
        }
    }
    result.map(Json)
}

async fn renew_inner(app: &App, caller: &Caller, req: Request) -> Result<Value, ApiError> {
    not_revoked(app, caller).await?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body).await?;
    let body: RenewBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::CsrInvalid(format!("request body is not the expected JSON: {e}")))?;
    let id = caller.spiffe_id.as_str();
    let csr = check_csr(&body.csr_pem, id).map_err(|e| match e {
        CsrError::Invalid(d) => ApiError::CsrInvalid(d),
        CsrError::KeyTooWeak(d) => ApiError::KeyTooWeak(d),
        e @ CsrError::SpiffeMismatch { .. } => {
            ApiError::SpiffeMismatch(format!("renewal is only for the caller's own ID: {e}"))
        }
    })?;
    let sans =
        granted_sans(&csr, &caller.spiffe_id).map_err(|e| ApiError::CsrInvalid(e.to_string()))?;
    let now = app.now();
    let ca = app.ca.view();
    let svid = ca
        .signing
        .issue_with_sans(&csr, id, sans, now, app.cfg.svid_ttl)
        .map_err(ApiError::internal)?;
    let ev = NewEvent::new(
        now,
        AuditKind::SvidRenew,
        id,
        id,
        json!({"serial": svid.serial_hex, "ca_id": ca.signing.id, "not_after": svid.not_after, "key_type": csr.key_type}),
    );
    app.store
        .record_svid(
            SvidRecord {
                serial: svid.serial_hex.clone(),
                spiffe_id: id.to_string(),
                ca_id: ca.signing.id.clone(),
                not_before: svid.not_before,
                not_after: svid.not_after,
                issued_at: now,
                kind: "renew".into(),
                leaf_sha256: svid.leaf_sha256.clone(),
            },
            ev,
        )
        .await?;
    app.audited(1);
    app.metrics.svids_issued.with_label_values(&["renew"]).inc();
    Ok(json!({
        "spiffe_id": id,
        "svid_chain_pem": svid.chain_pem,
        "trust_bundle_pem": ca.bundle_pem,
        "serial": svid.serial_hex,
        "renew_after": UnixTime(svid.renew_after()),
        "expires_at": UnixTime(svid.not_after),
    }))
}

pub async fn hmac_key(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    not_revoked(&app, &caller).await?;
    let keys = app.store.keys_of(caller.spiffe_id.as_str()).await?;
    let now = app.now();
    let v = crate::keys::view_for(&keys, caller.key_id.as_deref(), now);
    let current = v.current.ok_or_else(|| ApiError::NotFound {
        code: "key_unknown",
        detail: format!("{} has no valid HMAC key", caller.spiffe_id),
    })?;
    let current_file = crate::keys::to_file(&app.custody, current).map_err(ApiError::internal)?;
    let next_file = match v.next {
        Some(n) => Some(crate::keys::to_file(&app.custody, n).map_err(ApiError::internal)?),
        None => None,
    };
    let ev = NewEvent::new(
        now,
        AuditKind::SecretRead,
        caller.spiffe_id.as_str(),
        caller.spiffe_id.as_str(),
        json!({"key_ids": [Some(current.key_id.clone()), v.next.map(|k| k.key_id.clone())]}),
    );
    app.audit(vec![ev]).await?;
    Ok(Json(json!({
        "current": current_file,
        "next": next_file,
        "rotation_pending": next_file.is_some(),
    })))
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_forms() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("W/\"abc\", \"x\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
    }
}
