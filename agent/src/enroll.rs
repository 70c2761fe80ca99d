//! Enrollment (DESIGN.md §7): key + CSR → `POST /enroll/v1/request` on the bootstrap listener, signed
//! with the one-use token → credential files → `POST /enroll/v1/confirm` over mTLS with the new SVID
//! and HMAC key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use zen_trust::keys::EnrollmentBundle;
use zen_trust::secret::Secret;
use zen_trust::spiffe::SpiffeId;
use zen_trust::svid::check_svid_leaf;
use zen_trust::time::UnixTime;

use crate::client::{self, ClientError, Response, SigningKey};
use crate::files::{self, FilesError};
use crate::{csr, tls};

pub struct EnrollRequest {
    /// Bootstrap listener, `https://HOST:8443`.
    pub server: String,
    /// Agent listener for the confirm step, `https://HOST:9443`.
    pub agent_server: String,
    pub token_id: String,
    pub token_secret: Secret,
    pub spiffe_id: SpiffeId,
    pub ca_file: PathBuf,
    pub out: PathBuf,
    /// A pre-provisioned SVID to present on the bootstrap listener (required there when the proxy
    /// runs with `require_spiffe`): `tls.crt` + `tls.key` (the layout `zen-control ca issue` writes)
    /// or `svid.pem` + `svid.key` (an agent's credential directory).
    pub client_dir: Option<PathBuf>,
    /// How long to keep retrying the confirm while the proxy has not yet learned the new key.
    pub confirm_patience: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Csr(#[from] csr::CsrError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{step} refused: {status} {code}: {detail}")]
    Refused {
        step: &'static str,
        status: StatusCode,
        code: String,
        detail: String,
    },
    #[error("control answered the enrollment with something that is not a bundle: {0}")]
    BadBundle(String),
    #[error(
        "{server} refused the TLS handshake: its bootstrap listener requires a client certificate \
         (require_spiffe / BOOTSTRAP_REQUIRE_SPIFFE=true); pass --client-dir with an SVID for the \
         token's SPIFFE ID"
    )]
    ClientCertRequired { server: String },
    #[error(
        "{server} refused the client certificate from {dir} in the TLS handshake (alert {alert:?}); \
         it must be an SVID of the trust domain the proxy trusts, unexpired"
    )]
    ClientCertRefused {
        server: String,
        dir: PathBuf,
        alert: rustls::AlertDescription,
    },
}

/// Runs the whole enrollment and returns the bundle; the files are in `req.out` when it returns Ok.
pub async fn enroll(req: &EnrollRequest) -> Result<EnrollmentBundle, EnrollError> {
    let ca = files::read_certs(&req.ca_file)?;
    let tls = match &req.client_dir {
        Some(dir) => {
            let (chain, key) = files::read_client_identity(dir)?;
            tls::mtls_config(&ca, chain, key)?
        }
        None => tls::bootstrap_config(&ca)?,
    };
    let keys = csr::generate(&req.spiffe_id)?;
    let body = serde_json::json!({ "token_id": req.token_id, "csr_pem": keys.csr_pem });
    let token_key = SigningKey {
        key_id: req.token_id.clone(),
        secret: Arc::new(Secret::from_bytes(req.token_secret.expose().to_vec())),
    };
    let response = client::send(
        tls,
        Method::POST,
        &format!("{}/enroll/v1/request", req.server.trim_end_matches('/')),
        &[],
        Some(Bytes::from(body.to_string())),
        Some(&token_key),
    )
    .await
    .map_err(|e| handshake_refusal(req, e))?;
    if response.status != StatusCode::OK {
        return Err(refused("enrollment request", &response));
    }
    let bundle: EnrollmentBundle = serde_json::from_slice(&response.body)
        .map_err(|e| EnrollError::BadBundle(e.to_string()))?;
    check_bundle(&bundle, &req.spiffe_id)?;
    write_files(&req.out, &bundle, &keys.key_pem)?;
    confirm(req, &bundle).await?;
    Ok(bundle)
}

/// The bundle must be for the identity we asked for, and its leaf must be a valid X.509-SVID of it.
fn check_bundle(bundle: &EnrollmentBundle, want: &SpiffeId) -> Result<(), EnrollError> {
    if &bundle.spiffe_id != want {
        return Err(EnrollError::BadBundle(format!(
            "bundle is for {}, not {want}",
            bundle.spiffe_id
        )));
    }
    let chain = files::parse_certs(bundle.svid_chain_pem.as_bytes())
        .map_err(|e| EnrollError::BadBundle(format!("svid_chain_pem {e}")))?;
    let leaf = check_svid_leaf(&chain[0], UnixTime::now())
        .map_err(|e| EnrollError::BadBundle(format!("issued SVID: {e}")))?;
    if &leaf.spiffe_id != want {
        return Err(EnrollError::BadBundle(format!(
            "issued SVID names {}, not {want}",
            leaf.spiffe_id
        )));
    }
    files::parse_certs(bundle.trust_bundle_pem.as_bytes())
        .map_err(|e| EnrollError::BadBundle(format!("trust_bundle_pem {e}")))?;
    Ok(())
}

fn write_files(dir: &Path, bundle: &EnrollmentBundle, key_pem: &str) -> Result<(), FilesError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| FilesError::Write {
            path: dir.to_owned(),
            source,
        })?;
    let hmac = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(&bundle.hmac).expect("HmacKeyFile serialises"),
    );
    // The key first and the chain last: a reader that sees a new svid.pem also sees its key.
    files::write_atomic(&dir.join(files::SVID_KEY), key_pem.as_bytes(), 0o600)?;
    files::write_atomic(&dir.join(files::HMAC_KEY), &hmac, 0o600)?;
    files::write_atomic(
        &dir.join(files::BUNDLE),
        bundle.trust_bundle_pem.as_bytes(),
        0o644,
    )?;
    files::write_atomic(
        &dir.join(files::SVID_CHAIN),
        bundle.svid_chain_pem.as_bytes(),
        0o644,
    )
}

/// Confirms over the agent listener with the new credentials. Proxies learn new keys by long-poll, so
/// `key_unknown` right after enrollment is retried for `confirm_patience`.
async fn confirm(req: &EnrollRequest, bundle: &EnrollmentBundle) -> Result<(), EnrollError> {
    let creds = files::AgentFiles::load(&req.out)?;
    let config = tls::mtls_config(&creds.bundle, creds.svid_chain, creds.svid_key)?;
    let key = SigningKey {
        key_id: creds.hmac.key_id.clone(),
        secret: Arc::new(creds.hmac.secret),
    };
    let url = format!(
        "{}/enroll/v1/confirm",
        req.agent_server.trim_end_matches('/')
    );
    let body =
        Bytes::from(serde_json::json!({ "enrollment_id": bundle.enrollment_id }).to_string());
    let deadline = tokio::time::Instant::now() + req.confirm_patience;
    let mut pause = Duration::from_millis(100);
    loop {
        let response = client::send(
            config.clone(),
            Method::POST,
            &url,
            &[],
            Some(body.clone()),
            Some(&key),
        )
        .await?;
        if response.status == StatusCode::OK {
            return Ok(());
        }
        let retry = response.error_code().as_deref() == Some("key_unknown")
            && tokio::time::Instant::now() + pause < deadline;
        if !retry {
            return Err(refused("enrollment confirm", &response));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// A TLS alert from the bootstrap listener about our client certificate becomes an error that says
/// what to do; anything else stays the client error it was. (In TLS 1.3 the server checks the client
/// certificate after the client's handshake is done, so the alert can surface on the first read.)
fn handshake_refusal(req: &EnrollRequest, err: ClientError) -> EnrollError {
    use rustls::AlertDescription as A;
    let server = req.server.clone();
    match (tls_alert(&err), &req.client_dir) {
        (Some(A::CertificateRequired), _) => EnrollError::ClientCertRequired { server },
        (
            Some(
                alert @ (A::BadCertificate
                | A::UnknownCA
                | A::CertificateExpired
                | A::UnsupportedCertificate
                | A::CertificateUnknown
                | A::AccessDenied),
            ),
            Some(dir),
        ) => EnrollError::ClientCertRefused {
            server,
            dir: dir.clone(),
            alert,
        },
        _ => EnrollError::Client(err),
    }
}

/// The TLS alert the peer sent, if that is what `err` comes down to.
fn tls_alert(err: &ClientError) -> Option<rustls::AlertDescription> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return Some(*alert);
        }
        next = e.source();
    }
    None
}

fn refused(step: &'static str, response: &Response) -> EnrollError {
    let json: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    EnrollError::Refused {
        step,
        status: response.status,
        code: field("error").unwrap_or_else(|| "unknown".into()),
        detail: field("detail").unwrap_or_else(|| {
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client_dir: Option<&str>) -> EnrollRequest {
        EnrollRequest {
            server: "https://localhost:8443".into(),
            agent_server: "https://localhost:9443".into(),
            token_id: "t".into(),
            token_secret: Secret::from_bytes(vec![7; 32]),
            spiffe_id: "spiffe://zen.local/cluster/c1/agent/a1".parse().unwrap(),
            ca_file: "ca.pem".into(),
            out: "out".into(),
            client_dir: client_dir.map(PathBuf::from),
            confirm_patience: Duration::from_secs(1),
        }
    }

    fn alert(a: rustls::AlertDescription) -> ClientError {
        ClientError::Handshake {
            addr: "localhost:8443".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(a),
            ),
        }
    }

    #[test]
    fn client_certificate_alerts_say_what_to_do() {
        use rustls::AlertDescription as A;
        let err = handshake_refusal(&request(None), alert(A::CertificateRequired));
        assert!(
            matches!(err, EnrollError::ClientCertRequired { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--client-dir"), "{err}");
        let err = handshake_refusal(&request(Some("ids")), alert(A::BadCertificate));
        assert!(
            matches!(
                err,
                EnrollError::ClientCertRefused {
                    alert: A::BadCertificate,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("ids"), "{err}");
        // Without --client-dir a bad-certificate alert is not about our certificate.
        let err = handshake_refusal(&request(None), alert(A::BadCertificate));
        assert!(matches!(err, EnrollError::Client(_)), "{err}");
    }
}
