//! TLS termination: serving certificate (resolver), client certificate
//! verification per trust domain (verifier), and the per-connection peer
//! identity computed once at handshake completion (identity).

pub mod identity;
pub mod resolver;
pub mod verifier;

pub use identity::HandshakeCallback;
pub use resolver::{ServingCert, ServingCertResolver};
pub use verifier::{SpiffeClientVerifier, TrustBundles};

use std::sync::Arc;

/// The process-wide rustls provider. Installed before pingora builds any
/// listener: pingora's `TlsSettings::build` installs ring only if nothing is
/// installed yet, so aws-lc-rs wins.
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
