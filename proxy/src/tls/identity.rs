//! The peer identity, computed once per connection when the handshake
//! completes and carried with the connection's stream (tls/stream.rs);
//! requests only read it.

use std::sync::Arc;

use http::HeaderValue;
use rustls::{CommonState, ProtocolVersion};
use zen_trust::SpiffeId;

use rustls_pki_types::UnixTime;

use crate::metrics::Metrics;
use crate::refusal::Refusal;
use crate::tls::verifier::SpiffeClientVerifier;

/// A verified client SVID.
#[derive(Debug)]
pub struct PeerIdentity {
    pub spiffe_id: SpiffeId,
    pub serial_hex: String,
    /// Envoy-format `x-forwarded-client-cert`, built once per connection.
    pub xfcc: HeaderValue,
    pub spiffe_header: HeaderValue,
}

/// What the connection established about its peer.
#[derive(Debug)]
pub enum ConnIdentity {
    Peer(PeerIdentity),
    /// No client certificate (allowed only where the listener says so).
    Anonymous,
    /// The connection must not serve requests (e.g. a TLS version the
    /// listener does not allow slipped past the ClientHello check).
    Refused(Refusal),
}

/// A listener's check of each completed handshake: it decides the
/// connection's [`ConnIdentity`] and counts the verdict in
/// `zen_proxy_tls_handshakes_total`.
pub struct Identifier {
    pub listener: &'static str,
    pub allow_tls12: bool,
    pub metrics: Metrics,
    /// The listener's client-certificate verifier, run again here (see
    /// [`SpiffeClientVerifier::check`]: resumed sessions skip it otherwise).
    pub verifier: Arc<SpiffeClientVerifier>,
}

impl Identifier {
    /// The identity of a connection whose handshake has just completed,
    /// counted once by its verdict.
    pub fn identify(&self, conn: &CommonState) -> ConnIdentity {
        let id = self.decide(conn.protocol_version(), conn.peer_certificates());
        let result = match &id {
            ConnIdentity::Peer(_) => "ok",
            ConnIdentity::Anonymous => "ok_anonymous",
            ConnIdentity::Refused(r) => r.code(),
        };
        self.metrics
            .tls_handshakes
            .with_label_values(&[self.listener, result])
            .inc();
        id
    }

    fn decide(
        &self,
        version: Option<ProtocolVersion>,
        chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> ConnIdentity {
        if !self.allow_tls12 && version != Some(ProtocolVersion::TLSv1_3) {
            return ConnIdentity::Refused(Refusal::TlsVersion);
        }
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return ConnIdentity::Anonymous;
        };
        // On a full handshake the verifier has just accepted this chain; on a resumption it has
        // not run at all, and the bundle may have changed since. Check again against the bundle
        // as it is now; this is also the one place the connection's identity is extracted.
        match self.verifier.check(leaf, intermediates, UnixTime::now()) {
            Ok(leaf) => {
                let hash = leaf.der_sha256_hex();
                let xfcc = format!("Hash={hash};URI={}", leaf.spiffe_id.as_str());
                match (
                    HeaderValue::from_str(&xfcc),
                    HeaderValue::from_str(leaf.spiffe_id.as_str()),
                ) {
                    (Ok(xfcc), Ok(spiffe_header)) => ConnIdentity::Peer(PeerIdentity {
                        spiffe_id: leaf.spiffe_id,
                        serial_hex: leaf.serial_hex,
                        xfcc,
                        spiffe_header,
                    }),
                    _ => ConnIdentity::Refused(Refusal::ClientCertRequired),
                }
            }
            Err((result, err)) => {
                // Counted once, by the caller, as `client_cert_required`.
                tracing::debug!(listener = self.listener, result, %err, "client certificate no longer verifies");
                ConnIdentity::Refused(Refusal::ClientCertRequired)
            }
        }
    }
}
