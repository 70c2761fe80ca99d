//! TLS termination: serving certificate (resolver), client certificate
//! verification per trust domain (verifier), the per-connection peer
//! identity computed once at handshake completion (identity), and the
//! connection's stream that carries it (stream).

pub mod identity;
pub mod resolver;
pub mod stream;
pub mod verifier;

pub use identity::Identifier;
pub use resolver::{ServingCert, ServingCertResolver};
pub use verifier::{SpiffeClientVerifier, TrustBundles};

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::ResolvesServerCert;

/// A listener's TLS termination: the handshake, then the identity check of
/// its result (accept.rs runs both for each connection).
pub struct Termination {
    /// The listener's rustls configuration ([`server_config`]).
    pub config: Arc<rustls::ServerConfig>,
    pub identifier: Identifier,
}

/// A listener's rustls configuration: TLS 1.2 and 1.3 (the verifier and
/// the resolver refuse 1.2 where the listener does not allow it, so the
/// refusal is counted with its reason), the client-certificate verifier,
/// the serving-certificate resolver, ALPN h2 then http/1.1 — what pingora's
/// `TlsSettings` built, without the pingora handshake around it — and one
/// session ticket per full handshake.
pub fn server_config(
    provider: &Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // One TLS 1.3 ticket per full handshake, not rustls's default two: each is
    // encoded, stored in the session cache and sent. An agent reconnecting
    // one connection at a time always holds the ticket of its last one; a
    // burst of parallel new connections resumes fewer of them. CPU per new
    // connection −5 % (`zen-bench handshake -c 8 -d 6`, 4 alternating runs
    // each: medians 298 vs 315 µs).
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// The process-wide rustls provider, which the listeners' configs are built
/// with. Installed as the process default before anything else: pingora
/// installs ring only if nothing is installed yet, so aws-lc-rs wins.
///
/// Cipher suites: aws-lc-rs's defaults minus those built on SHA-384 (TLS 1.3
/// `TLS_AES_256_GCM_SHA384`, TLS 1.2 `*_AES_256_GCM_SHA384`). Clients list
/// AES-256 first and rustls follows the client's order, but SHA-384 has no
/// hardware instructions on x86 (SHA-256 has SHA-NI): it was 5–6 % of the
/// proxy's CPU per new connection in `perf`. What remains (AES-128-GCM and
/// ChaCha20-Poly1305 with SHA-256) is at the 128-bit level of the P-256 and
/// X25519 key exchange, and `TLS_AES_128_GCM_SHA256` is mandatory for every
/// TLS 1.3 client (RFC 8446 §9.1), so no compliant client is turned away.
pub fn install_crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| {
        let common = match s {
            rustls::SupportedCipherSuite::Tls12(s) => &s.common,
            rustls::SupportedCipherSuite::Tls13(s) => &s.common,
        };
        common.hash_provider.algorithm() == rustls::crypto::hash::HashAlgorithm::SHA256
    });
    let _ = provider.install_default();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .expect("a default crypto provider was just installed")
}

/// A self-signed `localhost` server without client authentication, for
/// tests of what runs after the handshake.
#[cfg(test)]
pub(crate) fn test_server(alpn: &[&[u8]]) -> (rustls::ServerConfig, rustls::RootCertStore) {
    let provider = install_crypto_provider();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    (config, roots)
}

#[cfg(test)]
mod tests {
    use rustls::CipherSuite;

    #[test]
    fn the_provider_offers_the_mandatory_suite_and_no_sha384_suite() {
        let suites: Vec<CipherSuite> = super::install_crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert!(suites.contains(&CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert!(suites.contains(&CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
        assert!(!suites.contains(&CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(!suites.contains(&CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384));
    }
}
