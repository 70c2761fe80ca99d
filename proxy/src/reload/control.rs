//! Control-plane state source (DESIGN.md §5, §8): long-polls zen-control's `GET /proxy/v1/state`
//! over mTLS with the proxy's own SVID, and is the single writer of the key set, the trust bundle
//! and the revocation list while it is configured (the file source then keeps only the serving
//! certificate and the routes).
//!
//! Static stability: every state that passes validation is persisted to a cache file (0600 — it
//! holds HMAC secrets) before it is published, so a proxy restarted while control is down still
//! enforces the last-known state. `zen_proxy_state_age_seconds` and `/readyz` report its age.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use zen_trust::{KeySet, ProxyState, UnixTime};

use super::{StateSource, What};
use crate::state::{Revocations, RevocationsFile, State};
use crate::tls::TrustBundles;

/// Where and how to reach control (config `control:`).
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// `https://HOST:PORT/proxy/v1/state`.
    pub url: http::Uri,
    /// Persisted last-known state.
    pub cache_file: PathBuf,
    /// `/readyz` stays ready while the last good state is younger than this.
    pub max_state_age: Duration,
    /// Longest wait for one answer; control answers a long-poll within its own timeout (30 s).
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("client identity: {0}")]
    Identity(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("control answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("state is invalid: {0}")]
    Invalid(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The cache file: the state as control sent it, and when it was fetched.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedState {
    pub fetched_at: UnixTime,
    pub state: ProxyState,
}

/// A state checked whole and turned into what the request path reads; nothing is published from a
/// state that fails any part.
pub struct Prepared {
    pub version: u64,
    pub keys: KeySet,
    pub bundles: TrustBundles,
    pub revocations: Revocations,
}

pub fn prepare(state: &ProxyState) -> Result<Prepared, SyncError> {
    let keys = KeySet::from_entries(state.version, &state.keys)
        .map_err(|e| SyncError::Invalid(format!("keys: {e}")))?;
    let bundles = TrustBundles::from_pems(&[(
        state.trust_domain.clone(),
        state.trust_bundle_pem.as_bytes().to_vec(),
        "control state trust_bundle_pem".to_string(),
    )])
    .map_err(|e| SyncError::Invalid(format!("trust bundle: {e}")))?;
    let revocations = Revocations::from_file(RevocationsFile {
        version: state.version,
        revoked_spiffe_ids: state.revoked_spiffe_ids.clone(),
        revoked_serials: state.revoked_serials.clone(),
    });
    Ok(Prepared {
        version: state.version,
        keys,
        bundles,
        revocations,
    })
}

/// Reads the cache file; `Ok(None)` when there is none yet.
pub fn load_cache(path: &Path) -> Result<Option<CachedState>, SyncError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SyncError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SyncError::Invalid(format!("{}: {e}", path.display()))),
    }
}

fn store_cache(path: &Path, cached: &CachedState) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = serde_json::to_vec(cached).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Publishes a prepared state (the one place the control source writes shared state).
pub fn publish(state: &State, prepared: Prepared, fetched_at: UnixTime) {
    state.keys.store(Arc::new(prepared.keys));
    state.published_keys();
    state.bundles.store(Arc::new(prepared.bundles));
    state.published_bundles();
    state.revocations.store(Arc::new(prepared.revocations));
    state.synced_at(fetched_at);
}

pub struct ControlSource {
    settings: ControlSettings,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl ControlSource {
    /// `cert_file`/`key_file`: the proxy's own SVID (its serving certificate), presented to control.
    pub fn new(
        settings: ControlSettings,
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        ControlSource {
            settings,
            cert_file,
            key_file,
            provider,
        }
    }

    /// Client config for one poll: the current SVID files (they rotate), and as roots the trust
    /// bundle of the domain the proxy is in, as currently published.
    fn client_config(&self, state: &State) -> Result<Arc<rustls::ClientConfig>, SyncError> {
        let chain = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| SyncError::Identity(format!("{}: {e}", self.cert_file.display())))?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| SyncError::Identity(format!("{}: {e}", self.key_file.display())))?;
        let leaf = chain.first().ok_or_else(|| {
            SyncError::Identity(format!("{}: no certificate", self.cert_file.display()))
        })?;
        let own = zen_trust::svid::check_svid_leaf(leaf, UnixTime::now())
            .map_err(|e| SyncError::Identity(format!("{}: {e}", self.cert_file.display())))?;
        let roots = RootCertStore {
            roots: state
                .bundles
                .load()
                .anchors(own.spiffe_id.trust_domain())
                .ok_or_else(|| {
                    SyncError::Identity(format!(
                        "no trust bundle for the proxy's own trust domain {}",
                        own.spiffe_id.trust_domain()
                    ))
                })?
                .to_vec(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SyncError::Identity(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| SyncError::Identity(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// One long-poll: returns the body of a 200 answer.
    async fn poll(&self, state: &State, known: u64) -> Result<Bytes, SyncError> {
        let config = self.client_config(state)?;
        let url = &self.settings.url;
        let authority = url
            .authority()
            .ok_or_else(|| SyncError::Http(format!("{url} has no host")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(443)
        );
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| SyncError::Http(format!("{host}: {e}")))?;
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|source| SyncError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|source| SyncError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| SyncError::Http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let request = http::Request::get(format!("{}?version={known}", url.path()))
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| SyncError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| SyncError::Http(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SyncError::Http(e.to_string()))?
            .to_bytes();
        conn.abort();
        if status != http::StatusCode::OK {
            return Err(SyncError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        Ok(body)
    }

    /// Validates, persists, then publishes one answer; returns its version.
    fn accept(&self, state: &State, body: &[u8]) -> Result<u64, SyncError> {
        let proxy_state: ProxyState = serde_json::from_slice(body)
            .map_err(|e| SyncError::Invalid(format!("not a ProxyState: {e}")))?;
        let prepared = prepare(&proxy_state)?;
        let version = prepared.version;
        let fetched_at = UnixTime::now();
        let cached = CachedState {
            fetched_at,
            state: proxy_state,
        };
        // Persist first: what is enforced is always what a restart would enforce.
        if let Err(e) = store_cache(&self.settings.cache_file, &cached) {
            tracing::warn!(file = %self.settings.cache_file.display(), error = %e,
                "cannot persist the control state; a restart during a control outage would not have it");
        }
        publish(state, prepared, fetched_at);
        Ok(version)
    }
}

#[async_trait]
impl StateSource for ControlSource {
    fn name(&self) -> &'static str {
        "control"
    }

    async fn run(&self, state: Arc<State>, mut shutdown: ShutdownWatch) {
        let mut known = state.keys.load().version();
        let mut backoff = Backoff::new();
        loop {
            let poll =
                tokio::time::timeout(self.settings.request_timeout, self.poll(&state, known));
            let outcome = tokio::select! {
                r = poll => r.unwrap_or(Err(SyncError::Timeout(self.settings.request_timeout))),
                _ = shutdown.changed() => return,
            };
            let result = outcome.and_then(|body| self.accept(&state, &body));
            let pause = match result {
                Ok(version) => {
                    if version != known {
                        tracing::info!(version, "state from control published");
                        for what in [What::KeySet, What::TrustBundles, What::Revocations] {
                            count(&state, what, "ok");
                        }
                    }
                    known = version;
                    backoff.reset();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control sync failed; enforcing the last-known state");
                    count(&state, What::KeySet, "error");
                    backoff.next()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn count(state: &State, what: What, result: &str) {
    state
        .metrics
        .reloads
        .with_label_values(&[what.as_str(), result])
        .inc();
}

/// Exponential backoff with jitter, 200 ms .. 30 s.
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { attempt: 0 }
    }
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
    pub(crate) fn next(&mut self) -> Duration {
        let cap = Duration::from_millis(200)
            .saturating_mul(1 << self.attempt.min(8))
            .min(Duration::from_secs(30));
        self.attempt += 1;
        let jitter = rand_fraction();
        cap.mul_f64(0.5 + jitter / 2.0)
    }
}

/// A fraction in [0, 1) from the clock's sub-second noise; jitter needs spread, not secrecy.
fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
