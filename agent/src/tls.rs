//! rustls client configurations for talking to a zen-proxy: mTLS with the agent's SVID on the agent
//! listener, server-auth only on the bootstrap listener. aws-lc-rs is the crypto provider throughout.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust bundle: certificate {index} is not a usable CA: {source}")]
    BadRoot { index: usize, source: rustls::Error },
    #[error("trust bundle holds no certificate")]
    EmptyBundle,
    #[error("client certificate or key rejected by rustls: {0}")]
    ClientAuth(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

fn roots(bundle: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    if bundle.is_empty() {
        return Err(TlsError::EmptyBundle);
    }
    let mut store = RootCertStore::empty();
    for (index, cert) in bundle.iter().enumerate() {
        store
            .add(cert.clone())
            .map_err(|source| TlsError::BadRoot { index, source })?;
    }
    Ok(store)
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)
}

/// Server-auth TLS (bootstrap listener): verifies the proxy against `bundle`, presents no certificate.
pub fn bootstrap_config(bundle: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = builder()?
        .with_root_certificates(roots(bundle)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Mutual TLS (agent listener, or bootstrap with `require_spiffe`): presents `chain` + `key`.
pub fn mtls_config(
    bundle: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = builder()?
        .with_root_certificates(roots(bundle)?)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::ClientAuth)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
