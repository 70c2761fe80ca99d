//! The caller's identity, as established by zen-proxy (mTLS + HMAC) and passed in
//! `x-zen-spiffe-id` / `x-zen-key-id`. Nothing in a request body can change it.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use zen_trust::spiffe::SpiffeId;

use super::error::ApiError;
use crate::app::App;

pub const SPIFFE_HEADER: &str = "x-zen-spiffe-id";
pub const KEY_ID_HEADER: &str = "x-zen-key-id";
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

#[derive(Debug, Clone)]
pub struct Caller {
    pub spiffe_id: SpiffeId,
    pub key_id: Option<String>,
}

/// `(cluster_id, agent_id)` of `spiffe://<td>/cluster/<cid>/agent/<aid>`.
pub fn agent_cluster(id: &SpiffeId) -> Option<(String, String)> {
    let segs: Vec<&str> = id.segments().collect();
    match segs.as_slice() {
        ["cluster", cid, "agent", aid] => Some((cid.to_string(), aid.to_string())),
        _ => None,
    }
}

pub fn is_proxy(id: &SpiffeId) -> bool {
    let segs: Vec<&str> = id.segments().collect();
    matches!(segs.as_slice(), ["proxy", name, ..] if !name.is_empty())
}

/// The caller's SPIFFE ID from the proxy header, if any (bootstrap listener: optional).
pub fn optional_spiffe(parts: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    match parts.get(SPIFFE_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::IdentityMissing)?
                .to_string();
            SpiffeId::parse(&s).map_err(|_| ApiError::IdentityMissing)?;
            Ok(Some(s))
        }
    }
}

impl Caller {
    /// The caller's cluster; only agent identities have one.
    pub fn cluster(&self) -> Result<String, ApiError> {
        agent_cluster(&self.spiffe_id)
            .map(|(c, _)| c)
            .ok_or_else(|| {
                ApiError::SpiffeForbidden(format!(
                    "{} is not an agent identity (spiffe://<td>/cluster/<cid>/agent/<aid>)",
                    self.spiffe_id
                ))
            })
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let raw = parts
            .headers
            .get(SPIFFE_HEADER)
            .ok_or(ApiError::IdentityMissing)?
            .to_str()
            .map_err(|_| ApiError::IdentityMissing)?;
        let spiffe_id = SpiffeId::parse(raw).map_err(|_| ApiError::IdentityMissing)?;
        if spiffe_id.trust_domain() != app.trust_domain() {
            return Err(ApiError::SpiffeForbidden(format!(
                "{spiffe_id} is not in trust domain {}",
                app.trust_domain()
            )));
        }
        let key_id = parts
            .headers
            .get(KEY_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Caller { spiffe_id, key_id })
    }
}
