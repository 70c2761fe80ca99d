//! `GET /proxy/v1/state?version=N`: long-poll for proxies. Answers at once when the state is
//! newer than N, otherwise waits up to the configured timeout. Only proxy identities may call
//! it; each answer hands out secrets and is audited as a secret distribution.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::identity::{is_proxy, Caller};
use crate::app::App;
use crate::audit::{AuditKind, NewEvent};
use crate::keys::sync::{current_state, wait_newer};

#[derive(Debug, Deserialize)]
pub struct StateQuery {
    version: Option<String>,
}

pub async fn state(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<StateQuery>,
) -> Result<Response, ApiError> {
    if !is_proxy(&caller.spiffe_id) {
        return Err(ApiError::SpiffeForbidden(format!(
            "{} is not a proxy identity (spiffe://{}/proxy/<name>)",
            caller.spiffe_id,
            app.trust_domain()
        )));
    }
    if app.store.is_revoked(caller.spiffe_id.as_str()).await? {
        return Err(ApiError::SpiffeRevoked(caller.spiffe_id.to_string()));
    }
    let known = match q.version.as_deref() {
        None | Some("") => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::InvalidRequest(format!("version `{v}` is not an unsigned integer"))
        })?,
    };
    wait_newer(&app, known, app.cfg.long_poll_timeout).await;
    let built = current_state(&app).await?;
    let ev = NewEvent::new(
        app.now(),
        AuditKind::SecretDistribution,
        caller.spiffe_id.as_str(),
        caller.spiffe_id.as_str(),
        json!({"version": built.version, "keys": built.keys, "known_version": known}),
    );
    app.audit(vec![ev]).await?;
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        built.body,
    )
        .into_response())
}
