//! The running half of the SVID source: confirm a fresh enrollment, renew at `renew_fraction` of
//! the lifetime, and follow rotations of the proxy's own HMAC key — every call through the proxy's
//! own agent listener with its current SVID and a zen-hmac-v1 signature, as an agent would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora_core::server::ShutdownWatch;
use rustls::crypto::CryptoProvider;
use serde::Deserialize;
use tokio::time::Instant;
use zen_agent::client::{self, SigningKey};
use zen_agent::files;
use zen_trust::keys::HmacKeyFile;
use zen_trust::UnixTime;

use super::enroll::{check_issued, refused};
use super::timing::renew_at;
use super::{promote_next_key, write, SvidError, SvidSettings, KEY_NEXT_FILE};
use crate::reload::control::Backoff;
use crate::reload::StateSource;
use crate::state::State;

pub struct SvidSource {
    settings: SvidSettings,
    provider: Arc<CryptoProvider>,
}

#[derive(Deserialize)]
struct Pending {
    enrollment_id: String,
}

/// `POST /agent/v1/svid/renew` answer (fields the proxy uses).
#[derive(Deserialize)]
struct Renewed {
    svid_chain_pem: String,
    trust_bundle_pem: String,
}

/// `GET /agent/v1/hmac-key` answer.
#[derive(Deserialize)]
struct OwnKeys {
    current: HmacKeyFile,
    #[serde(default)]
    next: Option<HmacKeyFile>,
}

impl SvidSource {
    pub fn new(settings: SvidSettings, provider: Arc<CryptoProvider>) -> Self {
        SvidSource { settings, provider }
    }

    /// One signed call to the proxy's own agent listener with the credentials now in `dir`.
    async fn call(
        &self,
        step: &'static str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, SvidError> {
        let s = &self.settings;
        let chain = files::read_certs(&s.cert_file())?;
        let key = files::read_key(&s.key_file())?;
        let ca = files::read_certs(&s.ca_file())?;
        let hmac = files::read_hmac(&s.hmac_file())?;
        let config = zen_agent::tls::mtls_config(&ca, chain, key)?;
        let signing = SigningKey {
            key_id: hmac.key_id,
            secret: Arc::new(hmac.secret),
        };
        let response = client::send(
            config,
            method,
            &format!("{}{path}", s.agent_url),
            &[],
            body.map(|b| Bytes::from(b.to_string())),
            Some(&signing),
        )
        .await?;
        if response.status != http::StatusCode::OK {
            return Err(refused(step, response.status.as_u16(), &response.body));
        }
        Ok(response.body)
    }

    /// Confirms the enrollment named by the pending marker; removes the marker when done.
    async fn confirm(&self) -> Result<(), SvidError> {
        let path = self.settings.pending_file();
        let pending: Pending = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|detail| SvidError::File {
                path: path.clone(),
                detail,
            })?;
        self.call(
            "enrollment confirm",
            Method::POST,
            "/enroll/v1/confirm",
            Some(serde_json::json!({ "enrollment_id": pending.enrollment_id })),
        )
        .await?;
        std::fs::remove_file(&path).map_err(|e| SvidError::File {
            path,
            detail: format!("cannot remove after the confirm: {e}"),
        })?;
        tracing::info!(enrollment_id = %pending.enrollment_id, "enrollment confirmed");
        Ok(())
    }

    /// New key + CSR → fresh SVID → files (key, certificate, key renamed into place) → published. Returns the new `not_after`.
    async fn renew(&self, state: &State) -> Result<i64, SvidError> {
        let s = &self.settings;
        let keys = zen_agent::csr::generate_with_sans(&s.spiffe_id, &s.dns, &s.ips)?;
        let answer = self
            .call(
                "renewal",
                Method::POST,
                "/agent/v1/svid/renew",
                Some(serde_json::json!({ "csr_pem": keys.csr_pem })),
            )
            .await?;
        let renewed: Renewed = serde_json::from_slice(&answer)
            .map_err(|e| SvidError::BadSvid(format!("the renewal answer does not parse: {e}")))?;
        let cert = check_issued(s, &renewed.svid_chain_pem, &keys.key_pem, &self.provider)?;
        files::parse_certs(renewed.trust_bundle_pem.as_bytes())
            .map_err(|e| SvidError::BadSvid(format!("trust_bundle_pem {e}")))?;
        // Key to tls.key.next, certificate, then the key renamed into place: a crash anywhere
        // leaves a key that matches tls.crt (settle_next_key finishes or undoes it at start).
        write(&s.dir.join(KEY_NEXT_FILE), keys.key_pem.as_bytes(), 0o600)?;
        write(&s.ca_file(), renewed.trust_bundle_pem.as_bytes(), 0o644)?;
        write(&s.cert_file(), renewed.svid_chain_pem.as_bytes(), 0o644)?;
        promote_next_key(s)?;
        let not_after = cert.not_after;
        state.serving.store(Arc::new(cert));
        state.published_serving();
        Ok(not_after)
    }

    /// When the key set (from control) holds a newer key of ours than `hmac.json`, fetch its
    /// secret (signed with the current key) and switch to it. The key set is what this proxy
    /// verifies against, so a key found there is never `key_unknown` to it. Ok(true) = switched.
    async fn follow_key_rotation(&self, state: &State) -> Result<bool, SvidError> {
        let s = &self.settings;
        let current = files::read_hmac(&s.hmac_file())?;
        let now = UnixTime::now();
        let newest_id = {
            let keys = state.keys.load();
            // A key set that does not (yet, or any more) hold our current key says nothing about
            // which of our keys is newer; signing with the current key would be key_unknown anyway.
            if keys.get(&current.key_id).is_none() {
                return Ok(false);
            }
            // The successor ends last (control issues it before the old key ends, and a forced
            // rotation cuts the old key short); ties are broken as control breaks them.
            let newest = keys
                .iter()
                .filter(|k| k.owner() == &s.spiffe_id && k.usable_at(now).is_ok())
                .max_by_key(|k| (k.not_after(), k.not_before(), k.key_id().to_string()));
            match newest {
                Some(k) if k.key_id() != current.key_id => k.key_id().to_string(),
                _ => return Ok(false),
            }
        };
        let answer = self
            .call("HMAC key refresh", Method::GET, "/agent/v1/hmac-key", None)
            .await?;
        let own: OwnKeys = serde_json::from_slice(&answer)
            .map_err(|e| SvidError::BadSvid(format!("the hmac-key answer does not parse: {e}")))?;
        let Some(key) = [Some(own.current), own.next]
            .into_iter()
            .flatten()
            .find(|k| k.key_id == newest_id)
        else {
            return Err(SvidError::BadSvid(format!(
                "zen-control did not hand out key {newest_id}, which the key set names as this proxy's newest"
            )));
        };
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&key).expect("HmacKeyFile serialises"),
        );
        write(&s.hmac_file(), &json, 0o600)?;
        tracing::info!(key_id = %key.key_id, "switched to the proxy's rotated HMAC key");
        Ok(true)
    }
}

/// When the certificate now being served is due for renewal, as an `Instant`.
fn due(state: &State, cert_file: &Path, fraction: f64) -> Instant {
    let cert = state.serving.load();
    // The file's mtime is when the SVID arrived (see timing.rs); never before not_before.
    let arrived = std::fs::metadata(cert_file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(cert.not_before, |d| d.as_secs() as i64);
    let start = arrived.clamp(cert.not_before, cert.not_after);
    at_unix(renew_at(start, cert.not_after, fraction))
}

fn at_unix(t: i64) -> Instant {
    let wait = (t - UnixTime::now().0).max(0) as u64;
    Instant::now() + Duration::from_secs(wait)
}

#[async_trait]
impl StateSource for SvidSource {
    fn name(&self) -> &'static str {
        "svid-control"
    }

    async fn run(&self, state: Arc<State>, mut shutdown: ShutdownWatch) {
        let s = &self.settings;
        let metrics = state.metrics.clone();
        let mut confirm_pending = s.pending_file().exists();
        metrics.svid_confirm_pending.set(i64::from(confirm_pending));
        let mut next_confirm = Instant::now();
        let mut confirm_backoff = Backoff::new();

        let mut next_renew = due(&state, &s.cert_file(), s.renew_fraction);
        let mut renew_backoff = Backoff::new();

        let mut key_set_seen: Option<u64> = None;
        let mut next_key_check = Instant::now();
        let mut key_backoff = Backoff::new();
        loop {
            let mut wake = next_renew.min(Instant::now() + Duration::from_secs(1));
            if confirm_pending {
                wake = wake.min(next_confirm);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.changed() => return,
            }

            if confirm_pending && Instant::now() >= next_confirm {
                match self.confirm().await {
                    Ok(()) => {
                        confirm_pending = false;
                        metrics.svid_confirm_pending.set(0);
                    }
                    // key_unknown until the control source has published the new key.
                    Err(e) if e.retryable() => {
                        tracing::debug!(error = %e, "enrollment confirm not through yet; retrying");
                        next_confirm = Instant::now() + confirm_backoff.next();
                    }
                    Err(e) => {
                        // The gauge stays 1: control revokes an enrollment nobody confirms.
                        tracing::error!(error = %e, "enrollment confirm refused; control will revoke this enrollment when its confirm window closes");
                        confirm_pending = false;
                    }
                }
            }

            if Instant::now() >= next_renew {
                match self.renew(&state).await {
                    Ok(not_after) => {
                        metrics.svid_renewals.with_label_values(&["ok"]).inc();
                        renew_backoff.reset();
                        next_renew =
                            at_unix(renew_at(UnixTime::now().0, not_after, s.renew_fraction));
                        tracing::info!(not_after = %UnixTime(not_after).to_rfc3339(), "serving SVID renewed");
                    }
                    Err(e) => {
                        metrics.svid_renewals.with_label_values(&["error"]).inc();
                        let pause = renew_backoff.next();
                        tracing::warn!(error = %e, retry_in = ?pause, "SVID renewal failed; serving the current certificate while it is valid");
                        next_renew = Instant::now() + pause;
                    }
                }
            }

            let version = state.keys.load().version();
            if key_set_seen != Some(version) && Instant::now() >= next_key_check {
                match self.follow_key_rotation(&state).await {
                    Ok(switched) => {
                        key_set_seen = Some(version);
                        key_backoff.reset();
                        if switched {
                            metrics.own_key_refreshes.with_label_values(&["ok"]).inc();
                        }
                    }
                    Err(e) => {
                        metrics
                            .own_key_refreshes
                            .with_label_values(&["error"])
                            .inc();
                        tracing::warn!(error = %e, "cannot switch to the proxy's rotated HMAC key; retrying");
                        next_key_check = Instant::now() + key_backoff.next();
                    }
                }
            }
        }
    }
}
