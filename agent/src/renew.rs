//! SVID renewal (DESIGN.md §8: at ~50 % of the lifetime): a fresh P-256 key and CSR →
//! `POST /agent/v1/svid/renew` → `svid.key.next` (0600), `bundle.pem`, `svid.pem` written
//! atomically, the key renamed to `svid.key`, then the session's TLS config swapped.

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

/// When an SVID valid `not_before..not_after`, obtained at `obtained_at`, is due for renewal:
/// after `fraction` of its lifetime. The lifetime starts at the later of `notBefore` and when the
/// agent obtained it, because CAs backdate `notBefore` for clock skew (zen-control by 60 s): a
/// 60 s SVID backdated 60 s would otherwise be due the moment it arrives. The result is at least
/// a second after the start (control caps an SVID at its CA's notAfter, so near that time each
/// renewal returns an SVID with only seconds left: without the floor a small `fraction` would make
/// it due at once, again and again) and never after `not_after`.
pub fn renew_at(
    not_before: UnixTime,
    not_after: UnixTime,
    obtained_at: UnixTime,
    fraction: f64,
) -> UnixTime {
    let start = not_before.max(obtained_at).min(not_after);
    let lifetime = (not_after.as_secs() - start.as_secs()) as f64;
    let wait = ((lifetime * fraction).round() as i64).max(1);
    UnixTime(
        start
            .as_secs()
            .saturating_add(wait)
            .min(not_after.as_secs()),
    )
}

/// How long from `now` until `due` (zero when it has passed).
pub fn until(due: UnixTime, now: UnixTime) -> Duration {
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
        let new_bundle = match &answer.trust_bundle_pem {
            Some(pem) => Some(
                files::parse_certs(pem.as_bytes())
                    .map_err(|e| RenewError::BadResponse(format!("trust_bundle_pem {e}")))?,
            ),
            None => None,
        };
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(keys.key_pem.as_bytes())
            .map_err(|e| RenewError::BadResponse(format!("the new key does not parse: {e}")))?;

        let _writer = self
            .identity_writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bundle = new_bundle.unwrap_or_else(|| self.identity.load().bundle.clone());
        let identity = Identity::build(chain, key, bundle, leaf.clone(), UnixTime::now())?;

        // The new key beside the old one, then the chain, then the key into place: cut short
        // anywhere, svid.key matches svid.pem or svid.key.next does, and the next load settles it
        // (files::settle_renewed_key) — never a chain whose key is gone.
        let dir = self.dir();
        files::write_atomic(
            &dir.join(files::SVID_KEY_NEXT),
            keys.key_pem.as_bytes(),
            0o600,
        )?;
        if let Some(pem) = &answer.trust_bundle_pem {
            files::write_atomic(&dir.join(files::BUNDLE), pem.as_bytes(), 0o644)?;
        }
        files::write_atomic(
            &dir.join(files::SVID_CHAIN),
            answer.svid_chain_pem.as_bytes(),
            0o644,
        )?;
        files::promote_next_key(dir)?;

        let renewed = Renewed {
            spiffe_id: leaf.spiffe_id.clone(),
            serial_hex: leaf.serial_hex.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            bundle_written: answer.trust_bundle_pem.is_some(),
        };
        self.identity.store(std::sync::Arc::new(identity));
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
        assert_eq!(renew_at(nb, na, nb, 0.5), UnixTime(1_000 + 43_200));
        assert_eq!(renew_at(nb, na, nb, 0.25), UnixTime(1_000 + 21_600));
        let due = renew_at(nb, na, nb, 0.5);
        assert_eq!(
            until(due, UnixTime(1_000 + 40_000)),
            Duration::from_secs(3_200)
        );
        assert_eq!(
            until(due, UnixTime(1_000 + 50_000)),
            Duration::ZERO,
            "overdue renews now"
        );
    }

    #[test]
    fn a_backdated_not_before_does_not_make_a_fresh_svid_due() {
        // zen-control backdates notBefore by 60 s: a 60 s SVID issued at t=1000 reads 940..1060.
        let (nb, na, issued) = (UnixTime(940), UnixTime(1_060), UnixTime(1_000));
        assert_eq!(
            renew_at(nb, na, nb, 0.5),
            UnixTime(1_000),
            "by notBefore alone: due at once"
        );
        assert_eq!(renew_at(nb, na, issued, 0.5), UnixTime(1_030));
        assert_eq!(renew_at(nb, na, issued, 0.2), UnixTime(1_012));
        // Obtained before notBefore (clock skew): notBefore wins.
        assert_eq!(renew_at(nb, na, UnixTime(900), 0.5), UnixTime(1_000));
        // Obtained after it expired (e.g. a copied file): due at notAfter, never later.
        assert_eq!(renew_at(nb, na, UnixTime(2_000), 0.5), na);
        // Seconds left (an SVID capped at its CA's notAfter) and a small fraction: still a
        // second apart, never due the moment it was obtained.
        let (obtained, capped) = (UnixTime(5_000), UnixTime(5_009));
        assert_eq!(
            renew_at(UnixTime(4_940), capped, obtained, 0.05),
            UnixTime(5_001)
        );
        assert_eq!(renew_at(UnixTime(4_940), capped, capped, 0.05), capped);
        // A broken certificate whose notAfter precedes notBefore is due at once.
        assert_eq!(
            renew_at(UnixTime(100), UnixTime(50), UnixTime(100), 0.5),
            UnixTime(50)
        );
    }
}
