//! The HTTP API behind zen-proxy (DESIGN §5).

pub mod agent;
pub mod error;
pub mod identity;
pub mod proxy_sync;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::config::MAX_BODY_BYTES;
use error::ApiError;
use identity::{optional_spiffe, Caller, XFCC_HEADER};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/enroll/v1/request", post(enroll_request))
        .route("/enroll/v1/confirm", post(enroll_confirm))
        .route(
            "/agent/v1/clusters/{cid}/desired-state",
            get(agent::desired_state),
        )
        .route("/agent/v1/heartbeat", post(agent::heartbeat))
        .route("/agent/v1/heartbeats", post(agent::heartbeats))
        .route(
            "/agent/v1/clusters/{cluster_id}/adapters/sync",
            post(agent::adapters_sync),
        )
        .route("/agent/v1/allowlist", get(agent::allowlist))
        .route("/agent/v1/svid/renew", post(agent::renew))
        .route("/agent/v1/hmac-key", get(agent::hmac_key))
        .route("/proxy/v1/state", get(proxy_sync::state))
        .fallback(not_found)
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        detail: "no such route".into(),
    }
}

/// Reads the body, refusing more than 64 KiB (before reading, when Content-Length says so).
pub async fn read_body(headers: &http::HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::BodyTooLarge(MAX_BODY_BYTES));
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::BodyTooLarge(MAX_BODY_BYTES))
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::InvalidRequest(format!("request body is not the expected JSON: {e}"))
    })
}

async fn enroll_request(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let peer = match optional_spiffe(&parts.headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let bytes = match read_body(&parts.headers, body).await {
        Ok(b) => b,
        Err(e) => {
            crate::enroll::refused_early(&app, &e, peer.as_deref()).await;
            return e.into_response();
        }
    };
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let received = crate::enroll::ReceivedRequest {
        method: parts.method.as_str(),
        authority: &authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &bytes,
        peer_spiffe_id: peer.as_deref(),
    };
    match crate::enroll::request(&app, received).await {
        Ok(bundle) => Json(bundle).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn enroll_confirm(
    State(app): State<Arc<App>>,
    caller: Caller,
    req: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (parts, body) = req.into_parts();
    let xfcc = parts
        .headers
        .get(XFCC_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = read_body(&parts.headers, body).await?;
    let body: crate::enroll::ConfirmBody = parse_json(&bytes)?;
    crate::enroll::confirm(&app, &caller, xfcc.as_deref(), body)
        .await
        .map(Json)
}
