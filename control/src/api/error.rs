//! The one error type of the HTTP API: each variant knows its status and JSON code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use zen_trust::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    CsrInvalid(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    KeyTooWeak(String),
    #[error("no enrollment token with this id")]
    TokenUnknown,
    #[error("the enrollment token has already been used")]
    TokenUsed,
    #[error("the enrollment token has expired")]
    TokenExpired,
    #[error("{0}")]
    Signature(SignatureError),
    #[error("{0}")]
    SpiffeMismatch(String),
    #[error("no caller identity (x-zen-spiffe-id) from the proxy")]
    IdentityMissing,
    #[error("{0}")]
    SpiffeForbidden(String),
    #[error("{0} is revoked")]
    SpiffeRevoked(String),
    #[error("{0}")]
    EnrollmentNotPending(String),
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::CsrInvalid(_) | ApiError::InvalidRequest(_) | ApiError::KeyTooWeak(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TokenUnknown
            | ApiError::TokenUsed
            | ApiError::TokenExpired
            | ApiError::IdentityMissing => StatusCode::UNAUTHORIZED,
            ApiError::Signature(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            ApiError::SpiffeMismatch(_)
            | ApiError::SpiffeForbidden(_)
            | ApiError::SpiffeRevoked(_) => StatusCode::FORBIDDEN,
            ApiError::EnrollmentNotPending(_) => StatusCode::CONFLICT,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::CsrInvalid(_) => "csr_invalid",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::KeyTooWeak(_) => "key_too_weak",
            ApiError::TokenUnknown => "token_unknown",
            ApiError::TokenUsed => "token_used",
            ApiError::TokenExpired => "token_expired",
            ApiError::Signature(e) => e.code(),
            ApiError::SpiffeMismatch(_) => "spiffe_mismatch",
            ApiError::IdentityMissing => "identity_missing",
            ApiError::SpiffeForbidden(_) => "spiffe_forbidden",
            ApiError::SpiffeRevoked(_) => "spiffe_revoked",
            ApiError::EnrollmentNotPending(_) => "enrollment_not_pending",
            ApiError::NotFound { code, .. } => code,
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            // The detail stays in the log; callers learn only that it failed.
            tracing::error!(%detail, "request failed");
        }
        let body = serde_json::json!({"error": self.code(), "detail": self.to_string()});
        (self.status(), Json(body)).into_response()
    }
}
