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
pub fn install_crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .expect("a default crypto provider was just installed")
}
