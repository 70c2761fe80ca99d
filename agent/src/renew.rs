//! SVID renewal (DESIGN.md §8: at ~50 % of the lifetime): a fresh P-256 key and CSR →
//! `POST /agent/v1/svid/renew` → `svid.key` (0600), `bundle.pem` and `svid.pem` written atomically,
//! key first, then the session's TLS config swapped.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;
use zen_trust::spiffe::SpiffeId;
use zen_trust::time::UnixTime;

use crate::client::Response;
use crate::files::{self, FilesError};
use crate::session::{self, CallError, Identity, Session, SessionError, SessionOptions};
use crate::{csr, tls};

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Csr(#[from] csr::CsrError),
    #[error("SVID renewal: {0}")]
    Call(#[from] CallError),
    #[error("SVID renewal refused: {status} {code}: {detail}")]
    Refused {
        status: StatusCode,
        code: String,
        detail: String,
    },
    #[error("SVID renewal: control's answer is not usable: {0}")]
    BadResponse(String),
    #[error("SVID renewal: the new credentials do not make a TLS config: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Files(#[from] FilesError),
}

impl RenewError {
    /// The refusal (status + code) when control or the proxy refused, for the caller's decisions.
    pub fn refusal(&self) -> Option<(StatusCode, &str)> {
        match self {
            RenewError::Refused { status, code, .. } => Some((*status, code)),
            _ => None,
        }
    }
}

/// What a renewal produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    pub spiffe_id: SpiffeId,
    /// Lowercase hex serial of the new leaf.
    pub serial_hex: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    /// Whether control returned a trust bundle (then `bundle.pem` was rewritten with it).
    pub bundle_written: bool,
}

#[derive(Deserialize)]
struct RenewResponse {
    svid_chain_pem: String,
    #[serde(default)]
    trust_bundle_pem: Option<String>,
}

/// Renews the SVID of the agent whose credentials are in `dir`, through the proxy's agent
/// listener `server` (`https://HOST:PORT`): mTLS with the current SVID, signed with the key in
/// `hmac.json`. On success the new `svid.key`, `bundle.pem` (if control sent one) and `svid.pem`
/// are in `dir`. For tools and tests; `zen-agent run` renews through its long-lived [`Session`].
pub async fn renew_svid(dir: &Path, server: &str) -> Result<Renewed, RenewError> {
    let session = Session::load(dir, server, SessionOptions::default())?;
    session.renew_svid().await
}

/// When an SVID valid `not_before..not_after` is due for renewal: after `fraction` of its lifetime.
pub fn renew_at(not_before: UnixTime, not_after: UnixTime, fraction: f64) -> UnixTime {
    let lifetime = (not_after.as_secs() - not_before.as_secs()).max(0) as f64;
    UnixTime(not_before.as_secs() + (lifetime * fraction).round() as i64)
}

/// How long from `now` until renewal is due (zero when it is already due).
pub fn until_renewal(
    not_before: UnixTime,
    not_after: UnixTime,
    fraction: f64,
    now: UnixTime,
) -> Duration {
    let due = renew_at(not_before, not_after, fraction);
    Duration::from_secs(u64::try_from(due.as_secs() - now.as_secs()).unwrap_or(0))
}

impl Session {
    /// Renews this session's SVID: writes the files, then swaps the TLS config so new requests
    /// present the new SVID (requests already in flight finish with the old one).
    pub async fn renew_svid(&self) -> Result<Renewed, RenewError> {
        let keys = csr::generate(self.spiffe_id())?;
        let body = serde_json::json!({ "csr_pem": keys.csr_pem }).to_string();
        let response = self
            .call(
                Method::POST,
                "/agent/v1/svid/renew",
                &[],
                Some(Bytes::from(body)),
            )
            .await?;
        if response.status != StatusCode::OK {
            return Err(refused(&response));
        }
        let answer: RenewResponse = serde_json::from_slice(&response.body)
            .map_err(|e| RenewError::BadResponse(format!("not the expected JSON: {e}")))?;

        // Everything is checked before anything is written: a bad answer leaves the files alone.
        let chain = files::parse_certs(answer.svid_chain_pem.as_bytes())
            .map_err(|e| RenewError::BadResponse(format!("svid_chain_pem {e}")))?;
        let leaf = session::leaf_of(&chain, Path::new("svid_chain_pem"))
            .map_err(|e| RenewError::BadResponse(e.to_string()))?;
        if &leaf.spiffe_id != self.spiffe_id() {
            return Err(RenewError::BadResponse(format!(
                "the new SVID names {}, not {}",
                leaf.spiffe_id,
                self.spiffe_id()
            )));
        }
        let bundle = match &answer.trust_bundle_pem {
            Some(pem) => files::parse_certs(pem.as_bytes())
                .map_err(|e| RenewError::BadResponse(format!("trust_bundle_pem {e}")))?,
            None => self.identity.load().bundle.clone(),
        };
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(keys.key_pem.as_bytes())
            .map_err(|e| RenewError::BadResponse(format!("the new key does not parse: {e}")))?;
        let tls = tls::mtls_config(&bundle, chain, key)?;

        // The key first and the chain last: a reader that sees a new svid.pem also sees its key.
        let dir = self.dir();
        files::write_atomic(&dir.join(files::SVID_KEY), keys.key_pem.as_bytes(), 0o600)?;
        if let Some(pem) = &answer.trust_bundle_pem {
            files::write_atomic(&dir.join(files::BUNDLE), pem.as_bytes(), 0o644)?;
        }
        files::write_atomic(
            &dir.join(files::SVID_CHAIN),
            answer.svid_chain_pem.as_bytes(),
            0o644,
        )?;

        let renewed = Renewed {
            spiffe_id: leaf.spiffe_id.clone(),
            serial_hex: leaf.serial_hex.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            bundle_written: answer.trust_bundle_pem.is_some(),
        };
        self.identity
            .store(std::sync::Arc::new(Identity { tls, leaf, bundle }));
        Ok(renewed)
    }
}

fn refused(response: &Response) -> RenewError {
    RenewError::Refused {
        status: response.status,
        code: response.error_code().unwrap_or_else(|| "unknown".into()),
        detail: session::detail_of(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_the_fraction_of_the_lifetime() {
        let (nb, na) = (UnixTime(1_000), UnixTime(1_000 + 86_400));
        assert_eq!(renew_at(nb, na, 0.5), UnixTime(1_000 + 43_200));
        assert_eq!(renew_at(nb, na, 0.25), UnixTime(1_000 + 21_600));
        assert_eq!(
            until_renewal(nb, na, 0.5, UnixTime(1_000 + 40_000)),
            Duration::from_secs(3_200)
        );
        assert_eq!(
            until_renewal(nb, na, 0.5, UnixTime(1_000 + 50_000)),
            Duration::ZERO,
            "overdue renews now"
        );
        // A 60 s SVID at the default fraction renews 30 s after notBefore.
        assert_eq!(renew_at(UnixTime(0), UnixTime(60), 0.5), UnixTime(30));
        // A broken certificate whose notAfter precedes notBefore is due at once.
        assert_eq!(renew_at(UnixTime(100), UnixTime(50), 0.5), UnixTime(100));
    }
}
