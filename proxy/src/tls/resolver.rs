//! The serving certificate, swapped lock-free; and the "TLS 1.3 unless 1.2
//! is opted in" rule, enforced on the ClientHello: the listener's config
//! enables both versions (`tls::server_config`), so that a refused 1.2
//! client is counted with its reason.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;

/// A loaded certificate chain + key, ready for handshakes.
#[derive(Debug)]
pub struct ServingCert {
    pub certified: Arc<CertifiedKey>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub leaf_sha256_hex: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServingCertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no CERTIFICATE block")]
    NoCert { path: String },
    #[error("{path}: no usable private key ({detail})")]
    Key { path: String, detail: String },
    #[error("certificate and key do not belong together: {0}")]
    Mismatch(String),
    #[error("{path}: leaf certificate does not parse: {detail}")]
    Leaf { path: String, detail: String },
}

impl ServingCert {
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<Self, ServingCertError> {
        let cp = cert_path.display().to_string();
        let kp = key_path.display().to_string();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| ServingCertError::NoCert { path: cp.clone() })?;
        if chain.is_empty() {
            return Err(ServingCertError::NoCert { path: cp });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ServingCertError::Key {
            path: kp.clone(),
            detail: e.to_string(),
        })?;
        let (_, leaf) =
            x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| ServingCertError::Leaf {
                path: cp.clone(),
                detail: e.to_string(),
            })?;
        let not_before = leaf.validity().not_before.timestamp();
        let not_after = leaf.validity().not_after.timestamp();
        let leaf_sha256_hex = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&chain[0]))
        };
        let certified = CertifiedKey::from_der(chain, key, provider)
            .map_err(|e| ServingCertError::Mismatch(e.to_string()))?;
        Ok(ServingCert {
            certified: Arc::new(certified),
            not_before,
            not_after,
            leaf_sha256_hex,
        })
    }

    pub fn from_files(
        cert: &Path,
        key: &Path,
        provider: &CryptoProvider,
    ) -> Result<Self, ServingCertError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ServingCertError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?, cert, key, provider)
    }
}

/// Hands out whatever serving certificate is current. One writer (the
/// reloader) stores into the shared `ArcSwap`; each handshake loads once.
#[derive(Debug)]
pub struct ServingCertResolver {
    current: Arc<ArcSwap<ServingCert>>,
    allow_tls12: bool,
    listener: &'static str,
    metrics: Metrics,
}

impl ServingCertResolver {
    pub fn new(
        current: Arc<ArcSwap<ServingCert>>,
        allow_tls12: bool,
        listener: &'static str,
        metrics: Metrics,
    ) -> Self {
        ServingCertResolver {
            current,
            allow_tls12,
            listener,
            metrics,
        }
    }
}

/// TLS 1.3 cipher suites all live in 0x13xx (RFC 8446 §B.4).
fn offers_tls13(hello: &ClientHello<'_>) -> bool {
    hello
        .cipher_suites()
        .iter()
        .any(|cs| u16::from(*cs) >> 8 == 0x13)
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A client that offers any TLS 1.3 suite also sends supported_versions,
        // and rustls then negotiates 1.3; one that offers none can only do 1.2.
        if !self.allow_tls12 && !offers_tls13(&hello) {
            self.metrics
                .tls_handshakes
                .with_label_values(&[self.listener, "tls_version"])
                .inc();
            return None;
        }
        Some(self.current.load().certified.clone())
    }
}
