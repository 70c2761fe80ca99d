//! First start: the one-use token, `POST /enroll/v1/request` to control's loopback API signed with
//! the token secret (zen-hmac-v1, the same profile agents use), and the checked bundle written
//! into `dir`. The confirmation follows once the listeners serve (see `renew.rs`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use serde::Deserialize;
use zen_trust::keys::EnrollmentBundle;
use zen_trust::secret::Secret;
use zen_trust::signature::{self, RequestParts, SignOptions};
use zen_trust::UnixTime;

use super::{write, SvidError, SvidSettings, TOKEN_ID_ENV, TOKEN_SECRET_ENV};
use crate::tls::ServingCert;

/// The one-use enrollment token (`Secret` redacts itself in `Debug`).
#[derive(Debug)]
pub struct Token {
    pub id: String,
    pub secret: Secret,
}

/// `zen-control token create --output json` as saved by the operator (extra fields ignored).
#[derive(Deserialize)]
struct TokenFile {
    token_id: String,
    secret: String,
    #[serde(default)]
    spiffe_id: Option<String>,
}

/// The token from `token_file`, else from the environment.
pub fn load_token(settings: &SvidSettings) -> Result<Token, SvidError> {
    if let Some(path) = &settings.token_file {
        let bad = |detail: String| SvidError::File {
            path: path.clone(),
            detail,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let file: TokenFile = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "not the JSON of `zen-control token create --output json`: {e}"
            ))
        })?;
        if let Some(id) = &file.spiffe_id {
            if id != settings.spiffe_id.as_str() {
                return Err(bad(format!(
                    "the token is for {id}, tls.from_control.spiffe_id is {}",
                    settings.spiffe_id
                )));
            }
        }
        let secret =
            Secret::from_base64(&file.secret).map_err(|e| bad(format!("`secret`: {e}")))?;
        return Ok(Token {
            id: file.token_id,
            secret,
        });
    }
    match (
        std::env::var(TOKEN_ID_ENV).ok().filter(|v| !v.is_empty()),
        std::env::var(TOKEN_SECRET_ENV)
            .ok()
            .filter(|v| !v.is_empty()),
    ) {
        (Some(id), Some(secret)) => Ok(Token {
            id,
            secret: Secret::from_base64(&secret)
                .map_err(|e| SvidError::BadToken(format!("{TOKEN_SECRET_ENV}: {e}")))?,
        }),
        (None, None) => Err(SvidError::NoToken {
            dir: settings.dir.clone(),
            why: String::new(),
        }),
        _ => Err(SvidError::BadToken(format!(
            "set both {TOKEN_ID_ENV} and {TOKEN_SECRET_ENV}"
        ))),
    }
}

/// Enrolls and writes the credential files (key first, certificate last: a reader that sees the
/// new `tls.crt` also sees its key), plus the pending-confirmation marker.
pub async fn enroll(
    settings: &SvidSettings,
    token: &Token,
    provider: &CryptoProvider,
) -> Result<(), SvidError> {
    let keys =
        zen_agent::csr::generate_with_sans(&settings.spiffe_id, &settings.dns, &settings.ips)?;
    let body = serde_json::json!({ "token_id": token.id, "csr_pem": keys.csr_pem }).to_string();
    let (status, answer) = post_signed(settings, "/enroll/v1/request", body.into(), token).await?;
    if status != 200 {
        return Err(refused("enrollment request", status, &answer));
    }
    let bundle: EnrollmentBundle = serde_json::from_slice(&answer)
        .map_err(|e| SvidError::BadSvid(format!("the answer is not an enrollment bundle: {e}")))?;
    if bundle.spiffe_id != settings.spiffe_id {
        return Err(SvidError::BadSvid(format!(
            "bundle is for {}, not {}",
            bundle.spiffe_id, settings.spiffe_id
        )));
    }
    check_issued(settings, &bundle.svid_chain_pem, &keys.key_pem, provider)?;
    zen_agent::files::parse_certs(bundle.trust_bundle_pem.as_bytes())
        .map_err(|e| SvidError::BadSvid(format!("trust_bundle_pem {e}")))?;

    mkdir(&settings.dir)?;
    let hmac = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(&bundle.hmac).expect("HmacKeyFile serialises"),
    );
    write(&settings.key_file(), keys.key_pem.as_bytes(), 0o600)?;
    write(&settings.hmac_file(), &hmac, 0o600)?;
    write(
        &settings.ca_file(),
        bundle.trust_bundle_pem.as_bytes(),
        0o644,
    )?;
    let pending = serde_json::json!({ "enrollment_id": bundle.enrollment_id }).to_string();
    write(&settings.pending_file(), pending.as_bytes(), 0o600)?;
    write(
        &settings.cert_file(),
        bundle.svid_chain_pem.as_bytes(),
        0o644,
    )?;
    tracing::info!(
        spiffe_id = %settings.spiffe_id,
        enrollment_id = %bundle.enrollment_id,
        expires_at = %bundle.expires_at.to_rfc3339(),
        dir = %settings.dir.display(),
        "enrolled; confirming once the listeners serve"
    );
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), SvidError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SvidError::File {
            path: dir.to_owned(),
            detail: format!("cannot create: {e}"),
        })
}

/// An SVID control issued for us: a valid X.509-SVID naming our ID, carrying every DNS/IP name we
/// asked for (the proxy verifies itself by them), matching `key_pem`.
pub fn check_issued(
    settings: &SvidSettings,
    chain_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<ServingCert, SvidError> {
    let cert = ServingCert::from_pem(
        chain_pem.as_bytes(),
        key_pem.as_bytes(),
        &settings.cert_file(),
        &settings.key_file(),
        provider,
    )
    .map_err(|e| SvidError::BadSvid(e.to_string()))?;
    let leaf_der = cert
        .certified
        .end_entity_cert()
        .map_err(|e| SvidError::BadSvid(e.to_string()))?;
    let leaf = zen_trust::check_svid_leaf(leaf_der, UnixTime::now())
        .map_err(|e| SvidError::BadSvid(e.to_string()))?;
    if leaf.spiffe_id != settings.spiffe_id {
        return Err(SvidError::BadSvid(format!(
            "it names {}, not {}",
            leaf.spiffe_id, settings.spiffe_id
        )));
    }
    let (dns, ips) = host_sans(leaf_der).map_err(SvidError::BadSvid)?;
    let missing: Vec<String> = settings
        .dns
        .iter()
        .filter(|d| !dns.iter().any(|have| have.eq_ignore_ascii_case(d)))
        .cloned()
        .chain(
            settings
                .ips
                .iter()
                .filter(|ip| !ips.contains(ip))
                .map(|ip| ip.to_string()),
        )
        .collect();
    if !missing.is_empty() {
        return Err(SvidError::BadSvid(format!(
            "it lacks the requested SANs {} (does this zen-control grant DNS/IP SANs to proxy identities?)",
            missing.join(", ")
        )));
    }
    Ok(cert)
}

fn host_sans(der: &[u8]) -> Result<(Vec<String>, Vec<IpAddr>), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                    _ => return Err("an IP address SAN is neither 4 nor 16 bytes".into()),
                },
                _ => {}
            }
        }
    }
    Ok((dns, ips))
}

/// A refusal from control: its JSON `error` code and `detail`.
pub fn refused(step: &'static str, status: u16, body: &[u8]) -> SvidError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let code = field("error").unwrap_or_else(|| "unknown".into());
    let mut detail = field("detail")
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    if code == "token_used" {
        detail.push_str(
            " (a token enrolls once; if this proxy enrolled before, its files in tls.from_control.dir are gone: create a new token)",
        );
    }
    SvidError::Refused {
        step,
        status,
        code,
        detail,
    }
}

const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// One token-signed POST to control's loopback API over plain HTTP/1.1.
async fn post_signed(
    settings: &SvidSettings,
    path: &str,
    body: Bytes,
    token: &Token,
) -> Result<(u16, Bytes), SvidError> {
    let url = format!("{}{path}", settings.enroll_url);
    let unreachable = |detail: String| SvidError::Unreachable {
        url: url.clone(),
        detail,
    };
    let authority = settings
        .enroll_url
        .trim_start_matches("http://")
        .to_string();
    let empty = http::HeaderMap::new();
    let parts = RequestParts {
        method: "POST",
        authority: &authority,
        path,
        query: None,
        headers: &empty,
    };
    let opts = SignOptions::new(token.id.clone(), &token.secret, UnixTime::now());
    let signed = signature::sign(&parts, Some(&body), &opts)
        .map_err(|e| SvidError::BadToken(format!("cannot sign with it: {e}")))?;
    let mut request = http::Request::post(path)
        .header(http::header::HOST, &authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("signature-input", signed.signature_input)
        .header("signature", signed.signature);
    if let Some(digest) = signed.content_digest {
        request = request.header("content-digest", digest);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| unreachable(e.to_string()))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    };
    tokio::time::timeout(ENROLL_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("no answer within {ENROLL_TIMEOUT:?}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, token_file: Option<std::path::PathBuf>) -> SvidSettings {
        SvidSettings {
            dir: dir.to_path_buf(),
            spiffe_id: "spiffe://zen.local/proxy/p1".parse().unwrap(),
            token_file,
            enroll_url: "http://127.0.0.1:1".into(),
            dns: vec!["localhost".into()],
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            renew_fraction: 0.5,
            agent_url: "https://127.0.0.1:9443".into(),
        }
    }

    /// A self-signed SVID-shaped certificate and its key (PEM).
    fn cert_and_key() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://zen.local/proxy/p1".try_into().unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_renewal_cut_after_the_certificate_is_completed_at_start() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), None);
        let ((_, old_key), (new_cert, new_key)) = (cert_and_key(), cert_and_key());
        // Cut between writing tls.crt and renaming tls.key.next: tls.key no longer matches.
        std::fs::write(s.cert_file(), &new_cert).unwrap();
        std::fs::write(s.key_file(), &old_key).unwrap();
        std::fs::write(dir.path().join(super::super::KEY_NEXT_FILE), &new_key).unwrap();
        assert!(ServingCert::from_files(&s.cert_file(), &s.key_file(), &provider).is_err());
        super::super::settle_next_key(&s, &provider).unwrap();
        assert_eq!(std::fs::read_to_string(s.key_file()).unwrap(), new_key);
        assert!(!dir.path().join(super::super::KEY_NEXT_FILE).exists());
        ServingCert::from_files(&s.cert_file(), &s.key_file(), &provider).unwrap();
    }

    #[test]
    fn a_renewal_cut_before_the_certificate_is_undone_at_start() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), None);
        let ((cert, key), (_, next_key)) = (cert_and_key(), cert_and_key());
        std::fs::write(s.cert_file(), &cert).unwrap();
        std::fs::write(s.key_file(), &key).unwrap();
        std::fs::write(dir.path().join(super::super::KEY_NEXT_FILE), &next_key).unwrap();
        super::super::settle_next_key(&s, &provider).unwrap();
        assert_eq!(std::fs::read_to_string(s.key_file()).unwrap(), key);
        assert!(!dir.path().join(super::super::KEY_NEXT_FILE).exists());
    }

    #[test]
    fn token_file_is_the_token_create_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.json");
        let secret = Secret::generate();
        std::fs::write(
            &path,
            serde_json::json!({"token_id": "tok-1", "secret": secret.to_base64(),
                "spiffe_id": "spiffe://zen.local/proxy/p1", "expires_at": "2030-01-01T00:00:00Z"})
            .to_string(),
        )
        .unwrap();
        let t = load_token(&settings(dir.path(), Some(path.clone()))).unwrap();
        assert_eq!(t.id, "tok-1");
        assert_eq!(t.secret.expose(), secret.expose());

        // A token for another identity is refused before anything is sent.
        std::fs::write(
            &path,
            serde_json::json!({"token_id": "tok-1", "secret": secret.to_base64(),
                "spiffe_id": "spiffe://zen.local/proxy/other"})
            .to_string(),
        )
        .unwrap();
        let e = load_token(&settings(dir.path(), Some(path.clone()))).unwrap_err();
        assert!(e.to_string().contains("token.json"), "{e}");
        std::fs::write(&path, "{").unwrap();
        let e = load_token(&settings(dir.path(), Some(path))).unwrap_err();
        assert!(e.to_string().contains("token.json"), "{e}");
    }

    #[test]
    fn token_used_says_what_to_do() {
        let e = refused(
            "enrollment request",
            409,
            br#"{"error":"token_used","detail":"token already used"}"#,
        );
        assert!(!e.retryable());
        assert!(e.to_string().contains("create a new token"), "{e}");
        let e = refused("renewal", 503, b"upstream down");
        assert!(e.retryable());
    }
}
