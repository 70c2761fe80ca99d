//! The "zen-hmac-v1" request signature profile: RFC 9421 HTTP Message
//! Signatures with `hmac-sha256`, plus RFC 9530 `Content-Digest` (DESIGN §3).
//!
//! - [`sign`] produces `Signature-Input`, `Signature` and `Content-Digest`.
//! - [`verify`] checks a received request and returns the key that signed it,
//!   or exactly one [`SignatureError`] (a DESIGN §6 refusal code).

mod canonical;
mod components;
mod digest;
mod headers;
mod input;
mod sign;
mod verify;

use std::time::Duration;

pub use crate::keys::{KeyEntry, KeyLookup, SingleKey};
pub use digest::{content_digest, DigestAlg};
pub use headers::{trim_ows_bytes, HeaderLookup, Overlay};
pub use sign::{mac_base64, sign, CoverSet, SignOptions, SignedHeaders};
pub use verify::{signature_base, verify, Verified};

/// The label this profile's signer uses. The verifier checks the first
/// member of `Signature-Input`, whatever its label.
pub const LABEL: &str = "sig1";

/// The only algorithm of the profile.
pub const ALG: &str = "hmac-sha256";

/// Fields an intermediary removes before forwarding (RFC 9110 §7.6.1; and
/// `Trailer`, meaningless once the body is re-framed), besides any the
/// `Connection` field names.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The mesh's identity fields: the proxy removes whatever a client sent and
/// sets its own.
pub const MESH_FIELD_PREFIX: &str = "x-zen-";
pub const XFCC: &str = "x-forwarded-client-cert";

/// Whether the proxy drops or replaces this field, whatever its value, on the
/// way to the upstream: hop-by-hop fields, the mesh's own identity fields,
/// and `Expect` (the proxy holds the whole body before it forwards). Besides
/// these, it drops whatever `Connection` names. A signature may cover none of
/// them: the upstream would not get what was signed.
pub fn dropped_in_transit(lowercase_name: &str) -> bool {
    HOP_BY_HOP.contains(&lowercase_name)
        || lowercase_name.starts_with(MESH_FIELD_PREFIX)
        || lowercase_name == XFCC
        || lowercase_name == "expect"
}

/// Whether a `Connection` field value (one line, or lines joined with ", ")
/// names the field `name` among its comma-separated options, without regard
/// to case (RFC 9110 §7.6.1). The one reading of the field for both the
/// verifier and the proxy's forwarder.
pub fn connection_names(connection: &str, name: &str) -> bool {
    connection
        .split(',')
        .any(|token| token.trim().eq_ignore_ascii_case(name))
}

/// The request as the verifier (or signer) sees it. `scheme` is always
/// `https` in this profile.
#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The `Host` header or `:authority`, as received.
    pub authority: &'a str,
    pub path: &'a str,
    /// The query without the leading '?'; `None` when the target has no '?'.
    pub query: Option<&'a str>,
    pub headers: &'a dyn HeaderLookup,
}

impl std::fmt::Debug for RequestParts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestParts")
            .field("method", &self.method)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

/// Verifier settings (DESIGN §3 defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// How old `created` may be.
    pub max_age: Duration,
    /// How far in the future `created` may be (clock skew).
    pub max_skew: Duration,
    /// Whether a `nonce` parameter is required.
    pub require_nonce: bool,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy {
            max_age: Duration::from_secs(300),
            max_skew: Duration::from_secs(5),
            require_nonce: true,
        }
    }
}

/// One refusal reason per DESIGN §6 code. `Display` is the human detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("request carries no Signature-Input/Signature pair")]
    Missing,
    #[error("{detail}")]
    Malformed { detail: String },
    #[error("no key with the signature's keyid")]
    KeyUnknown,
    #[error("the signing key is outside its validity window")]
    KeyExpired,
    #[error("the signing key has been revoked")]
    KeyRevoked,
    #[error("{detail}")]
    Stale { detail: String },
    #[error("Content-Digest does not match the received body")]
    DigestMismatch,
    #[error("signature does not verify")]
    Invalid,
}

impl SignatureError {
    /// The DESIGN §6 error code.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed { .. } => "signature_malformed",
            SignatureError::KeyUnknown => "key_unknown",
            SignatureError::KeyExpired => "key_expired",
            SignatureError::KeyRevoked => "key_revoked",
            SignatureError::Stale { .. } => "signature_stale",
            SignatureError::DigestMismatch => "digest_mismatch",
            SignatureError::Invalid => "signature_invalid",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            SignatureError::Malformed { .. } => 400,
            _ => 401,
        }
    }

    /// The human-readable detail (same as `Display`).
    pub fn detail(&self) -> String {
        self.to_string()
    }

    pub(crate) fn malformed(detail: impl Into<String>) -> SignatureError {
        SignatureError::Malformed {
            detail: detail.into(),
        }
    }

    pub(crate) fn stale(detail: impl Into<String>) -> SignatureError {
        SignatureError::Stale {
            detail: detail.into(),
        }
    }
}

/// Why signing failed (a covered component that cannot be built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot sign: {0}")]
pub struct SignError(pub String);

impl From<SignatureError> for SignError {
    fn from(e: SignatureError) -> Self {
        SignError(e.to_string())
    }
}

#[cfg(test)]
mod tests;
