//! Every way the proxy refuses a request. The one place that knows a
//! refusal's HTTP status, JSON code and metric label; nothing else builds
//! refusal responses.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No verified client certificate on a listener that needs one.
    ClientCertRequired,
    /// The connection negotiated a TLS version the listener does not allow.
    TlsVersion,
    NoRoute,
    SpiffeForbidden {
        detail: String,
    },
    SignatureMissing,
    SignatureMalformed {
        detail: String,
    },
    KeyUnknown,
    KeyExpired,
    KeyRevoked,
    SignatureStale {
        detail: String,
    },
    Replay,
    DigestMismatch,
    SignatureInvalid,
    IdentityMismatch {
        detail: String,
    },
    /// The peer's SPIFFE ID or certificate serial is on the revocation list.
    IdentityRevoked,
    BodyTooLarge {
        limit: usize,
    },
    /// The request head is ambiguous (e.g. two `Host` fields).
    RequestMalformed {
        detail: String,
    },
    /// The request body could not be read (client went away, bad framing).
    BodyUnreadable {
        detail: String,
    },
    ReplayCacheFull,
    UpstreamUnavailable {
        detail: String,
    },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        use Refusal::*;
        match self {
            ClientCertRequired | TlsVersion => 401,
            NoRoute => 404,
            SpiffeForbidden { .. } | IdentityMismatch { .. } | IdentityRevoked => 403,
            SignatureMissing
            | KeyUnknown
            | KeyExpired
            | KeyRevoked
            | SignatureStale { .. }
            | Replay
            | DigestMismatch
            | SignatureInvalid => 401,
            SignatureMalformed { .. } | RequestMalformed { .. } | BodyUnreadable { .. } => 400,
            BodyTooLarge { .. } => 413,
            ReplayCacheFull => 503,
            UpstreamUnavailable { .. } => 502,
        }
    }

    /// The JSON `error` code, also the `reason` label of the refusal metric.
    pub fn code(&self) -> &'static str {
        use Refusal::*;
        match self {
            ClientCertRequired => "client_cert_required",
            TlsVersion => "tls_version",
            NoRoute => "no_route",
            SpiffeForbidden { .. } => "spiffe_forbidden",
            SignatureMissing => "signature_missing",
            SignatureMalformed { .. } => "signature_malformed",
            KeyUnknown => "key_unknown",
            KeyExpired => "key_expired",
            KeyRevoked => "key_revoked",
            SignatureStale { .. } => "signature_stale",
            Replay => "replay",
            DigestMismatch => "digest_mismatch",
            SignatureInvalid => "signature_invalid",
            IdentityMismatch { .. } => "identity_mismatch",
            IdentityRevoked => "identity_revoked",
            BodyTooLarge { .. } => "body_too_large",
            RequestMalformed { .. } => "request_malformed",
            BodyUnreadable { .. } => "body_unreadable",
            ReplayCacheFull => "replay_cache_full",
            UpstreamUnavailable { .. } => "upstream_unavailable",
        }
    }

    pub fn detail(&self) -> String {
        use Refusal::*;
        match self {
            ClientCertRequired => "a verified client certificate is required".into(),
            TlsVersion => "TLS 1.3 is required on this listener".into(),
            NoRoute => "no route for this method and path".into(),
            SpiffeForbidden { detail }
            | SignatureMalformed { detail }
            | SignatureStale { detail }
            | IdentityMismatch { detail }
            | RequestMalformed { detail }
            | BodyUnreadable { detail }
            | UpstreamUnavailable { detail } => detail.clone(),
            SignatureMissing => "Signature-Input and Signature headers are required".into(),
            KeyUnknown => "the signing key is not known".into(),
            KeyExpired => "the signing key is outside its validity window".into(),
            KeyRevoked => "the signing key is revoked".into(),
            Replay => "this (keyid, nonce) was already used".into(),
            DigestMismatch => "Content-Digest does not match the body received".into(),
            SignatureInvalid => "the signature does not verify".into(),
            IdentityRevoked => "the client identity is revoked".into(),
            BodyTooLarge { limit } => format!("request body exceeds {limit} bytes"),
            ReplayCacheFull => "replay cache is full; retry later".into(),
        }
    }

    /// `{"error":"<code>","detail":"…"}`
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({ "error": self.code(), "detail": self.detail() });
        Bytes::from(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_contract_json() {
        let r = Refusal::BodyTooLarge { limit: 10 };
        let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(v["error"], "body_too_large");
        assert_eq!(v["detail"], "request body exceeds 10 bytes");
        assert_eq!(r.status(), 413);
    }

    #[test]
    fn design_codes_have_design_statuses() {
        let cases = [
            (
                Refusal::SpiffeForbidden {
                    detail: String::new(),
                },
                403,
            ),
            (Refusal::SignatureMissing, 401),
            (
                Refusal::SignatureMalformed {
                    detail: String::new(),
                },
                400,
            ),
            (Refusal::KeyUnknown, 401),
            (Refusal::KeyExpired, 401),
            (Refusal::KeyRevoked, 401),
            (
                Refusal::SignatureStale {
                    detail: String::new(),
                },
                401,
            ),
            (Refusal::Replay, 401),
            (Refusal::DigestMismatch, 401),
            (Refusal::SignatureInvalid, 401),
            (
                Refusal::IdentityMismatch {
                    detail: String::new(),
                },
                403,
            ),
            (Refusal::BodyTooLarge { limit: 1 }, 413),
            (Refusal::ReplayCacheFull, 503),
            (
                Refusal::UpstreamUnavailable {
                    detail: String::new(),
                },
                502,
            ),
        ];
        for (r, status) in cases {
            assert_eq!(r.status(), status, "{}", r.code());
        }
    }
}
