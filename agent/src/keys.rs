//! HMAC key pickup: `GET /agent/v1/hmac-key` returns the caller's current key and, during a
//! rotation, the next one. The agent moves to the newest valid key as soon as control offers it,
//! writes it to `hmac.json` (0600, atomically) and keeps the old key as a fallback while it is
//! valid, for proxies that have not learned the new key yet.

use std::path::Path;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use zen_trust::keys::HmacKeyFile;
use zen_trust::time::UnixTime;

use crate::client::SigningKey;
use crate::files::{self, FilesError};
use crate::session::{self, CallError, KeyRing, Session, SessionError, SessionOptions};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("HMAC key pickup: {0}")]
    Call(#[from] CallError),
    #[error("HMAC key pickup refused: {status} {code}: {detail}")]
    Refused {
        status: StatusCode,
        code: String,
        detail: String,
    },
    #[error("HMAC key pickup: control's answer is not usable: {0}")]
    BadResponse(String),
    #[error(transparent)]
    Files(#[from] FilesError),
}

impl KeyError {
    pub fn refusal(&self) -> Option<(StatusCode, &str)> {
        match self {
            KeyError::Refused { status, code, .. } => Some((*status, code)),
            _ => None,
        }
    }
}

/// What a key pickup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRefresh {
    /// The key the agent signs with from now on.
    pub key_id: String,
    pub not_after: UnixTime,
    /// The key it signed with before, when this pickup moved it to a new one.
    pub switched_from: Option<String>,
}

#[derive(Deserialize)]
struct KeyAnswer {
    current: HmacKeyFile,
    #[serde(default)]
    next: Option<HmacKeyFile>,
}

/// Asks control for the HMAC key of the agent whose credentials are in `dir` (through the proxy's
/// agent listener `server`) and, when a newer key is offered, writes it to `dir/hmac.json`. For
/// tools and tests; `zen-agent run` does this through its long-lived [`Session`].
pub async fn refresh_hmac_key(dir: &Path, server: &str) -> Result<KeyRefresh, KeyError> {
    let session = Session::load(dir, server, SessionOptions::default())?;
    session.refresh_hmac_key().await
}

impl Session {
    /// Picks up the newest valid key: `hmac.json` is rewritten and the signing key swapped when it
    /// differs from the one in use.
    pub async fn refresh_hmac_key(&self) -> Result<KeyRefresh, KeyError> {
        let response = self
            .call(Method::GET, "/agent/v1/hmac-key", &[], None)
            .await?;
        if response.status != StatusCode::OK {
            return Err(KeyError::Refused {
                status: response.status,
                code: response.error_code().unwrap_or_else(|| "unknown".into()),
                detail: session::detail_of(&response),
            });
        }
        let answer: KeyAnswer = serde_json::from_slice(&response.body)
            .map_err(|e| KeyError::BadResponse(format!("not the expected JSON: {e}")))?;
        // During a rotation `next` is the newest valid key; control lists only valid keys.
        let newest = answer.next.unwrap_or(answer.current);
        let ring = self.keys.load_full();
        Ok(self.adopt(&ring, newest)?)
    }

    fn adopt(&self, ring: &KeyRing, newest: HmacKeyFile) -> Result<KeyRefresh, FilesError> {
        if newest.key_id == ring.current.key_id {
            return Ok(KeyRefresh {
                key_id: newest.key_id,
                not_after: newest.not_after,
                switched_from: None,
            });
        }
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&newest).expect("HmacKeyFile serialises"),
        );
        files::write_atomic(&self.dir().join(files::HMAC_KEY), &json, 0o600)?;
        let now = UnixTime::now();
        let previous =
            (now < ring.current_not_after).then(|| (ring.current.clone(), ring.current_not_after));
        let refresh = KeyRefresh {
            key_id: newest.key_id.clone(),
            not_after: newest.not_after,
            switched_from: Some(ring.current.key_id.clone()),
        };
        self.keys.store(Arc::new(KeyRing {
            current: SigningKey {
                key_id: newest.key_id,
                secret: Arc::new(newest.secret),
            },
            current_not_after: newest.not_after,
            previous,
        }));
        Ok(refresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixture;
    use zen_trust::secret::Secret;

    #[test]
    fn adopting_a_new_key_writes_hmac_json_and_keeps_the_old_as_fallback() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fixture::write_dir(dir.path(), "spiffe://zen.local/cluster/c1/agent/a1");
        let session = Session::load(
            dir.path(),
            "https://localhost:9443",
            SessionOptions::default(),
        )
        .unwrap();

        let same = session
            .adopt(
                &session.key_ring(),
                file("k-first", UnixTime(4_070_908_800)),
            )
            .unwrap();
        assert_eq!(same.switched_from, None);
        assert_eq!(session.key_id(), "k-first");

        let next = file(
            "k-second",
            UnixTime::now().saturating_add(std::time::Duration::from_secs(3600)),
        );
        let refresh = session.adopt(&session.key_ring(), next.clone()).unwrap();
        assert_eq!(refresh.switched_from.as_deref(), Some("k-first"));
        assert_eq!(session.key_id(), "k-second");
        let ring = session.key_ring();
        assert_eq!(
            ring.previous.as_ref().map(|(k, _)| k.key_id.as_str()),
            Some("k-first")
        );

        let path = dir.path().join(files::HMAC_KEY);
        let written: HmacKeyFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written, next);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    fn file(key_id: &str, not_after: UnixTime) -> HmacKeyFile {
        HmacKeyFile {
            key_id: key_id.into(),
            secret: Secret::from_bytes(vec![7; 32]),
            not_after,
        }
    }
}
