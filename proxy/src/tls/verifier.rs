//! Client certificate verification: X.509-SVID leaf rules (zen-trust), then
//! the chain against the bundle of the leaf's OWN trust domain only — a
//! certificate from domain B's CA claiming `spiffe://A/...` finds no anchor.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::metrics::Metrics;

/// Trust anchors per trust domain.
#[derive(Debug, Default)]
pub struct TrustBundles {
    domains: HashMap<String, Vec<TrustAnchor<'static>>>,
    /// Number of CA certificates, for `/config_dump`.
    pub summary: Vec<(String, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no CERTIFICATE block")]
    Empty { path: String },
    #[error("{path}: certificate #{index} is not usable as a trust anchor: {detail}")]
    Anchor {
        path: String,
        index: usize,
        detail: String,
    },
}

impl TrustBundles {
    pub fn from_pems(items: &[(String, Vec<u8>, String)]) -> Result<Self, BundleError> {
        let mut domains = HashMap::new();
        let mut summary = Vec::new();
        for (td, pem, path) in items {
            let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|_| BundleError::Empty { path: path.clone() })?;
            if ders.is_empty() {
                return Err(BundleError::Empty { path: path.clone() });
            }
            let mut anchors = Vec::with_capacity(ders.len());
            for (index, der) in ders.iter().enumerate() {
                let a = webpki::anchor_from_trusted_cert(der).map_err(|e| BundleError::Anchor {
                    path: path.clone(),
                    index,
                    detail: e.to_string(),
                })?;
                anchors.push(a.to_owned());
            }
            summary.push((td.clone(), anchors.len()));
            domains.insert(td.clone(), anchors);
        }
        Ok(TrustBundles { domains, summary })
    }

    pub fn from_files(items: &[(String, std::path::PathBuf)]) -> Result<Self, BundleError> {
        let mut loaded = Vec::new();
        for (td, path) in items {
            let pem = std::fs::read(path).map_err(|source| BundleError::Read {
                path: path.display().to_string(),
                source,
            })?;
            loaded.push((td.clone(), pem, path.display().to_string()));
        }
        Self::from_pems(&loaded)
    }

    pub fn anchors(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        self.domains.get(trust_domain).map(Vec::as_slice)
    }
}

#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<ArcSwap<TrustBundles>>,
    mandatory: bool,
    allow_tls12: bool,
    listener: &'static str,
    metrics: Metrics,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    pub fn new(
        bundles: Arc<ArcSwap<TrustBundles>>,
        mandatory: bool,
        allow_tls12: bool,
        listener: &'static str,
        metrics: Metrics,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        SpiffeClientVerifier {
            bundles,
            mandatory,
            allow_tls12,
            listener,
            metrics,
            provider,
        }
    }

    /// The whole client-certificate check against the trust bundles as they are now: the
    /// X.509-SVID leaf rules, then the chain to an anchor of the leaf's own trust domain. Returns
    /// the parsed leaf, or the handshake-metric label and the TLS error.
    ///
    /// The handshake callback runs it again: on a TLS 1.3 resumption rustls restores the client
    /// certificate from its session cache without calling the verifier, so a CA that left the
    /// bundle since the session was made would otherwise still vouch for the connection.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<zen_trust::SvidLeaf, (&'static str, rustls::Error)> {
        let leaf =
            zen_trust::check_svid_leaf(end_entity, zen_trust::UnixTime(now.as_secs() as i64))
                .map_err(|e| ("svid_invalid", other(e)))?;
        let bundles = self.bundles.load();
        let Some(anchors) = bundles.anchors(leaf.spiffe_id.trust_domain()) else {
            return Err((
                "unknown_trust_domain",
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            ));
        };
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| ("bad_certificate", webpki_to_rustls(e)))?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| ("chain_invalid", webpki_to_rustls(e)))?;
        Ok(leaf)
    }

    fn reject(&self, result: &'static str, err: rustls::Error) -> rustls::Error {
        self.metrics
            .tls_handshakes
            .with_label_values(&[self.listener, result])
            .inc();
        err
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

fn webpki_to_rustls(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::CertRevoked => CertificateError::Revoked,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        e => CertificateError::Other(rustls::OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA hints: SVID clients present their one certificate regardless,
        // and hints would leak the list of trusted domains.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|(result, err)| self.reject(result, err))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.2 handshakes get here: with a client certificate, this is
        // where a TLS 1.2 connection is refused when the listener wants 1.3
        // (pingora's TlsSettings always enables both versions).
        if !self.allow_tls12 {
            return Err(self.reject(
                "tls_version",
                rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
                ),
            ));
        }
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Used by `check` to report bundle errors with the file's YAML path.
pub fn load_bundle_file(td: &str, path: &Path) -> Result<TrustBundles, BundleError> {
    TrustBundles::from_files(&[(td.to_string(), path.to_path_buf())])
}
