//! An enrolled agent's live credentials and the one way to call the mesh with them.
//!
//! The mTLS client config (with the SVID it presents) and the HMAC signing keys are each an
//! `ArcSwap`: renewal and key pickup are their only writers, and every request `load()`s them once
//! when it starts, so a swap never disturbs a request already in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, StatusCode};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zen_trust::keys::HmacKeyFile;
use zen_trust::spiffe::SpiffeId;
use zen_trust::svid::{check_svid_leaf, SvidLeaf};
use zen_trust::time::UnixTime;

use crate::client::{self, ClientError, Response, SigningKey};
use crate::files::{self, AgentFiles, FilesError};
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("{path}: {source}")]
    Tls { path: PathBuf, source: TlsError },
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("trust bundle from control: {0}")]
    Invalid(String),
    #[error("trust bundle from control: {0}")]
    Tls(TlsError),
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// Why a call did not produce an HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no response from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
}

/// The SVID the agent presents, with the TLS config that presents it and what it was built from
/// (so a new trust bundle can be applied without touching the SVID, and the reverse).
pub struct Identity {
    pub tls: Arc<ClientConfig>,
    pub leaf: SvidLeaf,
    /// When the agent obtained this SVID (the renewal, or `svid.pem`'s mtime at startup). CAs
    /// backdate `notBefore` for clock skew, so the lifetime that matters starts here.
    pub obtained_at: UnixTime,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The trust bundle the TLS config verifies the proxy with.
    pub bundle: Vec<CertificateDer<'static>>,
}

impl Identity {
    pub fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
        leaf: SvidLeaf,
        obtained_at: UnixTime,
    ) -> Result<Identity, TlsError> {
        let tls = tls::mtls_config(&bundle, chain.clone(), key.clone_key())?;
        Ok(Identity {
            tls,
            leaf,
            obtained_at,
            chain,
            key: Arc::new(key),
            bundle,
        })
    }

    /// When this SVID is due for renewal, after `fraction` of its lifetime.
    pub fn renew_at(&self, fraction: f64) -> UnixTime {
        crate::renew::renew_at(
            self.leaf.not_before,
            self.leaf.not_after,
            self.obtained_at,
            fraction,
        )
    }
}

/// The keys the agent signs with.
#[derive(Debug, Clone)]
pub struct KeyRing {
    pub current: SigningKey,
    pub current_not_after: UnixTime,
    /// The key used before the last switch, while it is still valid: a proxy that has not yet
    /// learned `current` (proxies learn keys by long-poll) still accepts it.
    pub previous: Option<(SigningKey, UnixTime)>,
}

impl KeyRing {
    pub fn from_file(file: HmacKeyFile) -> KeyRing {
        KeyRing {
            current: SigningKey {
                key_id: file.key_id,
                secret: Arc::new(file.secret),
            },
            current_not_after: file.not_after,
            previous: None,
        }
    }

    /// The fallback key, if it is still valid at `now`.
    fn fallback(&self, now: UnixTime) -> Option<&SigningKey> {
        self.previous
            .as_ref()
            .filter(|(_, not_after)| now < *not_after)
            .map(|(key, _)| key)
    }
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub request_timeout: Duration,
    pub key_unknown_patience: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            request_timeout: Duration::from_secs(10),
            key_unknown_patience: Duration::from_secs(15),
        }
    }
}

pub struct Session {
    dir: PathBuf,
    server: String,
    spiffe_id: SpiffeId,
    pub(crate) identity: ArcSwap<Identity>,
    pub(crate) keys: ArcSwap<KeyRing>,
    /// Serialises the writers of `identity` (renewal, trust bundle update) so neither undoes the
    /// other. Never taken on the request path, never held across an await.
    pub(crate) identity_writer: std::sync::Mutex<()>,
    options: SessionOptions,
}

/// The first certificate of the chain as an X.509-SVID; errors name `svid.pem`.
pub(crate) fn leaf_of(
    chain: &[CertificateDer<'static>],
    path: &Path,
) -> Result<SvidLeaf, FilesError> {
    let first = chain.first().ok_or_else(|| FilesError::Invalid {
        path: path.to_owned(),
        what: "holds no certificate".into(),
    })?;
    check_svid_leaf(first, UnixTime::now()).map_err(|e| FilesError::Invalid {
        path: path.to_owned(),
        what: format!("the first certificate is not a usable SVID: {e} (re-enroll the agent)"),
    })
}

impl Session {
    /// Loads the credential directory (every error names the file) for calls to `server`
    /// (`https://HOST:PORT`, the proxy's agent listener).
    pub fn load(
        dir: &Path,
        server: &str,
        options: SessionOptions,
    ) -> Result<Session, SessionError> {
        let files = AgentFiles::load(dir)?;
        let chain_path = dir.join(files::SVID_CHAIN);
        let leaf = leaf_of(&files.svid_chain, &chain_path)?;
        let obtained_at = std::fs::metadata(&chain_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| UnixTime(d.as_secs() as i64).min(UnixTime::now()))
            .unwrap_or(leaf.not_before);
        let spiffe_id = leaf.spiffe_id.clone();
        let identity = Identity::build(
            files.svid_chain,
            files.svid_key,
            files.bundle,
            leaf,
            obtained_at,
        )
        .map_err(|source| SessionError::Tls {
            path: match source {
                TlsError::BadRoot { .. } | TlsError::EmptyBundle => dir.join(files::BUNDLE),
                _ => chain_path.clone(),
            },
            source,
        })?;
        Ok(Session {
            dir: dir.to_owned(),
            server: server.trim_end_matches('/').to_owned(),
            spiffe_id,
            identity: ArcSwap::from_pointee(identity),
            keys: ArcSwap::from_pointee(KeyRing::from_file(files.hmac)),
            identity_writer: std::sync::Mutex::new(()),
            options,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The cluster of an agent ID `spiffe://<td>/cluster/<cid>/agent/<aid>`.
    pub fn cluster_id(&self) -> Option<&str> {
        let segments: Vec<&str> = self.spiffe_id.segments().collect();
        match segments.as_slice() {
            ["cluster", cid, "agent", _] => Some(cid),
            _ => None,
        }
    }

    /// The SVID currently presented.
    pub fn leaf(&self) -> SvidLeaf {
        self.identity.load().leaf.clone()
    }

    pub fn identity(&self) -> Arc<Identity> {
        self.identity.load_full()
    }

    /// Applies a trust bundle control sent (PEM). Returns false when it is the one in use;
    /// otherwise writes `bundle.pem` atomically and swaps the TLS config.
    pub fn update_bundle(&self, pem: &str) -> Result<bool, BundleError> {
        let bundle = files::parse_certs(pem.as_bytes()).map_err(BundleError::Invalid)?;
        let _writer = self
            .identity_writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.identity.load_full();
        if current.bundle == bundle {
            return Ok(false);
        }
        let identity = Identity::build(
            current.chain.clone(),
            current.key.clone_key(),
            bundle,
            current.leaf.clone(),
            current.obtained_at,
        )
        .map_err(BundleError::Tls)?;
        files::write_atomic(&self.dir.join(files::BUNDLE), pem.as_bytes(), 0o644)?;
        self.identity.store(Arc::new(identity));
        Ok(true)
    }

    /// The key requests are signed with now.
    pub fn key_id(&self) -> String {
        self.keys.load().current.key_id.clone()
    }

    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    /// Sends one signed request to `path` on the server. A `key_unknown` refusal is retried: at
    /// once with the previous key if one is still valid, then every second for
    /// `key_unknown_patience`; after that the refusal is returned.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Response, CallError> {
        let url = format!("{}{path}", self.server);
        let deadline = tokio::time::Instant::now() + self.options.key_unknown_patience;
        loop {
            let tls = self.identity.load().tls.clone();
            let ring = self.keys.load_full();
            let response = self
                .send_once(
                    tls.clone(),
                    &method,
                    &url,
                    headers,
                    body.clone(),
                    &ring.current,
                )
                .await?;
            if !is_key_unknown(&response) {
                return Ok(response);
            }
            if let Some(previous) = ring.fallback(UnixTime::now()) {
                let retry = self
                    .send_once(tls, &method, &url, headers, body.clone(), previous)
                    .await?;
                // Only a verdict on the request itself counts; a refusal of the old key says
                // nothing the new key's retry will not say better.
                if !is_key_refusal(&retry) {
                    tracing::debug!(key_id = %ring.current.key_id, "proxy does not know the new key yet; the previous key was accepted");
                    return Ok(retry);
                }
            }
            if tokio::time::Instant::now() + Duration::from_secs(1) > deadline {
                return Ok(response);
            }
            tracing::debug!(key_id = %ring.current.key_id, %url, "key_unknown; the proxy may not have learned the key yet, retrying in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn send_once(
        &self,
        tls: Arc<ClientConfig>,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        key: &SigningKey,
    ) -> Result<Response, CallError> {
        let after = self.options.request_timeout;
        tokio::time::timeout(
            after,
            client::send(tls, method.clone(), url, headers, body, Some(key)),
        )
        .await
        .map_err(|_| CallError::Timeout {
            url: url.to_owned(),
            after,
        })?
        .map_err(CallError::from)
    }
}

fn is_key_unknown(response: &Response) -> bool {
    response.status == StatusCode::UNAUTHORIZED
        && response.error_code().as_deref() == Some("key_unknown")
}

fn is_key_refusal(response: &Response) -> bool {
    response.status == StatusCode::UNAUTHORIZED
        && matches!(
            response.error_code().as_deref(),
            Some("key_unknown" | "key_expired" | "key_revoked")
        )
}

/// What a call's result means for the loop that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx or 304.
    Success,
    /// Connection error, timeout, 5xx or 429: try again after a backoff.
    Unavailable(String),
    /// The signing key is not accepted (`key_unknown`, `key_expired`, `key_revoked`): ask control
    /// for the current key, then try again after a backoff.
    KeyRefused(String),
    /// The identity itself is revoked (`identity_revoked` from a proxy, `spiffe_revoked` from
    /// control). Nothing the agent does fixes this; it keeps backing off at the slowest pace.
    Revoked(String),
    /// Any other refusal (4xx): a bug or a misconfiguration; logged, then backed off.
    Refused {
        status: StatusCode,
        code: String,
        detail: String,
    },
}

pub fn classify(result: &Result<Response, CallError>) -> Outcome {
    let response = match result {
        Ok(r) => r,
        Err(e) => return Outcome::Unavailable(e.to_string()),
    };
    let status = response.status;
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Outcome::Success;
    }
    let code = response.error_code().unwrap_or_else(|| "unknown".into());
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Unavailable(format!("{status} {code}"));
    }
    match code.as_str() {
        "key_unknown" | "key_expired" | "key_revoked" => Outcome::KeyRefused(code),
        "identity_revoked" | "spiffe_revoked" => Outcome::Revoked(code),
        _ => Outcome::Refused {
            status,
            detail: detail_of(response),
            code,
        },
    }
}

/// The `detail` of a JSON refusal, or the start of the body.
pub fn detail_of(response: &Response) -> String {
    serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("detail")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect()
        })
}

/// A credential directory made in-process (CA, SVID, key, bundle, hmac.json) for unit tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
        PKCS_ECDSA_P256_SHA256,
    };

    pub(crate) struct Ca {
        pub(crate) pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    pub(crate) fn ca() -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (chain PEM, key PEM) of a leaf SVID for `id`; `expired` puts notAfter in 2020.
    pub(crate) fn svid(ca: &Ca, id: &str, expired: bool) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// (chain PEM, key PEM) of a TLS server certificate for `localhost`.
    pub(crate) fn server(ca: &Ca) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(crate) const HMAC: &str = r#"{"key_id":"k-first","secret":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==","not_after":"2099-01-01T00:00:00Z"}"#;

    /// An HTTPS server on 127.0.0.1 with a `localhost` certificate from `ca`, one request per
    /// connection: `respond` gets the request head (lowercased) and returns status line and JSON
    /// body. Returns its port; the server lives until the runtime ends.
    pub(crate) async fn https_server<F>(ca: &Ca, respond: F) -> u16
    where
        F: Fn(&str) -> (&'static str, String) + Send + Sync + 'static,
    {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (chain, key) = server(ca);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                // Read the body too: closing with unread bytes would reset the connection.
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                if tls.read_exact(&mut body).await.is_err() {
                    continue;
                }
                let (status, body) = respond(&head);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        port
    }

    /// A complete, valid credential directory for `id`; returns the CA that signed it.
    pub(crate) fn write_dir(dir: &Path, id: &str) -> Ca {
        let ca = ca();
        let (chain, key) = svid(&ca, id, false);
        std::fs::write(dir.join("svid.pem"), chain).unwrap();
        std::fs::write(dir.join("svid.key"), key).unwrap();
        std::fs::write(dir.join("bundle.pem"), &ca.pem).unwrap();
        std::fs::write(dir.join("hmac.json"), HMAC).unwrap();
        ca
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    const ID: &str = "spiffe://zen.local/cluster/c1/agent/a1";

    fn load(dir: &Path) -> Result<Session, String> {
        Session::load(dir, "https://localhost:9443/", SessionOptions::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_dir_loads_with_its_identity_and_key() {
        let dir = tempfile::tempdir().unwrap();
        fixture::write_dir(dir.path(), ID);
        let session = load(dir.path()).unwrap();
        assert_eq!(session.spiffe_id().as_str(), ID);
        assert_eq!(session.cluster_id(), Some("c1"));
        assert_eq!(session.key_id(), "k-first");
        assert_eq!(session.server(), "https://localhost:9443");
        let identity = session.identity();
        assert!(identity.obtained_at <= UnixTime::now());
        assert!(identity.obtained_at >= identity.leaf.not_before);
    }

    /// Which file a case breaks, and how.
    type Breakage<'a> = (&'a str, &'a dyn Fn(&Path));

    #[test]
    fn a_bad_file_is_named() {
        let cases: &[Breakage] = &[
            ("svid.pem", &|d| {
                std::fs::write(d.join("svid.pem"), "-----BEGIN CERTIFICATE-----\nMIIB").unwrap()
            }),
            ("svid.pem", &|d| {
                std::fs::write(d.join("svid.pem"), "").unwrap()
            }),
            ("svid.key", &|d| {
                std::fs::write(d.join("svid.key"), "-----BEGIN PRIVATE KEY-----\nMIG").unwrap()
            }),
            ("bundle.pem", &|d| {
                std::fs::write(d.join("bundle.pem"), "not pem").unwrap()
            }),
            ("bundle.pem", &|d| {
                std::fs::remove_file(d.join("bundle.pem")).unwrap()
            }),
            ("hmac.json", &|d| {
                std::fs::write(d.join("hmac.json"), &fixture::HMAC[..40]).unwrap()
            }),
            ("hmac.json", &|d| {
                std::fs::write(
                    d.join("hmac.json"),
                    r#"{"key_id":"k","secret":"!!","not_after":"2099-01-01T00:00:00Z"}"#,
                )
                .unwrap()
            }),
        ];
        for (file, break_it) in cases {
            let dir = tempfile::tempdir().unwrap();
            fixture::write_dir(dir.path(), ID);
            break_it(dir.path());
            let err = load(dir.path()).err().expect("a broken dir is refused");
            assert!(
                err.contains(file),
                "error for a bad {file} does not name it: {err}"
            );
        }
    }

    #[test]
    fn an_expired_or_foreign_svid_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let (chain, key) = fixture::svid(&ca, ID, true);
        std::fs::write(dir.path().join("svid.pem"), chain).unwrap();
        std::fs::write(dir.path().join("svid.key"), key).unwrap();
        let err = load(dir.path()).err().unwrap();
        assert!(err.contains("svid.pem") && err.contains("expired"), "{err}");

        // A key that is not the certificate's.
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let (_, other_key) = fixture::svid(&ca, ID, false);
        std::fs::write(dir.path().join("svid.key"), other_key).unwrap();
        let err = load(dir.path()).err().unwrap();
        assert!(err.contains("svid.pem"), "{err}");
    }

    /// A renewal cut short after the new svid.pem replaced the old but before its key
    /// (svid.key.next) was moved into place: the next load finishes the move.
    #[test]
    fn a_renewal_cut_short_after_the_chain_is_finished_by_the_next_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let (chain, key) = fixture::svid(&ca, ID, false);
        let next = dir.path().join(files::SVID_KEY_NEXT);
        files::write_atomic(&next, key.as_bytes(), 0o600).unwrap();
        std::fs::write(dir.path().join("svid.pem"), &chain).unwrap();

        let session = load(dir.path()).unwrap();
        let served = pem_to_der(&chain);
        assert_eq!(session.identity().chain, served);
        let key_path = dir.path().join("svid.key");
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key);
        assert_eq!(
            std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!next.exists(), "svid.key.next moved into place");
    }

    /// Cut short before svid.pem was replaced: the old pair still matches and stays in use.
    #[test]
    fn a_renewal_cut_short_before_the_chain_keeps_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let old_key = std::fs::read_to_string(dir.path().join("svid.key")).unwrap();
        let (_, key) = fixture::svid(&ca, ID, false);
        let next = dir.path().join(files::SVID_KEY_NEXT);
        files::write_atomic(&next, key.as_bytes(), 0o600).unwrap();

        load(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("svid.key")).unwrap(),
            old_key
        );
        assert!(
            next.exists(),
            "an unmatched next key is left for the next renewal"
        );
    }

    fn pem_to_der(pem: &str) -> Vec<CertificateDer<'static>> {
        files::parse_certs(pem.as_bytes()).unwrap()
    }

    /// An HTTPS server on 127.0.0.1 that knows only the HMAC key `known` (by keyid, like a proxy
    /// that has not long-polled a new key yet): 401 key_unknown for any other keyid, else 200.
    /// Returns its port and the keyids it was sent, in order.
    async fn proxy_knowing(
        ca: &fixture::Ca,
        known: &'static str,
    ) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let port = fixture::https_server(ca, move |head| {
            let keyid = head
                .split("keyid=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned();
            log.lock().unwrap().push(keyid.clone());
            if keyid == known {
                ("200 OK", r#"{"ok":true}"#.to_owned())
            } else {
                (
                    "401 Unauthorized",
                    r#"{"error":"key_unknown","detail":"no such key"}"#.to_owned(),
                )
            }
        })
        .await;
        (port, seen)
    }

    fn session_at(dir: &Path, port: u16, patience: Duration) -> Session {
        Session::load(
            dir,
            &format!("https://localhost:{port}"),
            SessionOptions {
                request_timeout: Duration::from_secs(5),
                key_unknown_patience: patience,
            },
        )
        .unwrap()
    }

    fn switch_to(session: &Session, key_id: &str) {
        let ring = session.key_ring();
        session.keys.store(Arc::new(KeyRing {
            current: SigningKey {
                key_id: key_id.into(),
                secret: ring.current.secret.clone(),
            },
            current_not_after: UnixTime::now().saturating_add(Duration::from_secs(3600)),
            previous: Some((ring.current.clone(), ring.current_not_after)),
        }));
    }

    #[tokio::test]
    async fn a_new_key_the_proxy_does_not_know_yet_falls_back_to_the_previous_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let (port, seen) = proxy_knowing(&ca, "k-first").await;
        let session = session_at(dir.path(), port, Duration::from_secs(15));
        switch_to(&session, "k-second");
        let response = session.call(Method::GET, "/x", &[], None).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["k-second", "k-first"],
            "new key first, then the fallback at once"
        );
    }

    #[tokio::test]
    async fn key_unknown_is_retried_every_second_until_the_patience_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let (port, seen) = proxy_knowing(&ca, "k-nobody").await;
        let session = session_at(dir.path(), port, Duration::from_millis(2_500));
        let started = std::time::Instant::now();
        let response = session.call(Method::GET, "/x", &[], None).await.unwrap();
        assert_eq!(response.error_code().as_deref(), Some("key_unknown"));
        assert_eq!(seen.lock().unwrap().len(), 3, "t=0, 1 s, 2 s");
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert!(matches!(classify(&Ok(response)), Outcome::KeyRefused(_)));
    }

    #[test]
    fn a_new_bundle_is_written_and_swapped_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = fixture::write_dir(dir.path(), ID);
        let session = load(dir.path()).unwrap();
        assert!(
            !session.update_bundle(&ca.pem).unwrap(),
            "same bundle: no change"
        );
        let before = session.identity().tls.clone();

        let both = format!("{}{}", ca.pem, fixture::ca().pem);
        assert!(session.update_bundle(&both).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bundle.pem")).unwrap(),
            both
        );
        assert_eq!(session.identity().bundle.len(), 2);
        assert!(
            !Arc::ptr_eq(&before, &session.identity().tls),
            "TLS config swapped"
        );
        assert_eq!(session.identity().leaf, session.leaf(), "SVID untouched");

        assert!(session.update_bundle("garbage").is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bundle.pem")).unwrap(),
            both,
            "a bad bundle leaves the file alone"
        );
    }

    fn response(status: u16, body: &str) -> Result<Response, CallError> {
        Ok(Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        })
    }

    #[test]
    fn outcomes() {
        assert_eq!(classify(&response(200, "{}")), Outcome::Success);
        assert_eq!(classify(&response(304, "")), Outcome::Success);
        assert!(matches!(
            classify(&response(502, r#"{"error":"upstream_unavailable"}"#)),
            Outcome::Unavailable(_)
        ));
        assert!(matches!(
            classify(&Err(CallError::Timeout {
                url: "u".into(),
                after: Duration::from_secs(1)
            })),
            Outcome::Unavailable(_)
        ));
        for code in ["key_unknown", "key_expired", "key_revoked"] {
            assert_eq!(
                classify(&response(401, &format!(r#"{{"error":"{code}"}}"#))),
                Outcome::KeyRefused(code.into())
            );
        }
        assert_eq!(
            classify(&response(403, r#"{"error":"identity_revoked"}"#)),
            Outcome::Revoked("identity_revoked".into())
        );
        assert_eq!(
            classify(&response(403, r#"{"error":"spiffe_revoked","detail":"x"}"#)),
            Outcome::Revoked("spiffe_revoked".into())
        );
        assert_eq!(
            classify(&response(
                403,
                r#"{"error":"spiffe_forbidden","detail":"no"}"#
            )),
            Outcome::Refused {
                status: StatusCode::FORBIDDEN,
                code: "spiffe_forbidden".into(),
                detail: "no".into()
            }
        );
    }
}
