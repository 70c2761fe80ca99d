//! The peer identity, computed once per connection when the handshake
//! completes and carried with the connection's stream (tls/stream.rs);
//! requests only read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use rustls::{CommonState, ProtocolVersion};
use zen_trust::SpiffeId;

use rustls_pki_types::{CertificateDer, UnixTime};

use crate::metrics::Metrics;
use crate::refusal::Refusal;
use crate::tls::verifier::SpiffeClientVerifier;

/// A verified client SVID, held to its verdict for the life of the connection: a keep-alive or
/// HTTP/2 connection outlives its handshake, so every request asks [`PeerIdentity::holds`]
/// whether the chain is still inside its validity and still trusted by the bundles as they are
/// now.
pub struct PeerIdentity {
    pub spiffe_id: SpiffeId,
    pub serial_hex: String,
    /// Envoy-format `x-forwarded-client-cert`, built once per connection.
    pub xfcc: HeaderValue,
    pub spiffe_header: HeaderValue,
    /// Unix seconds: the earliest `notAfter` in the chain.
    not_after: i64,
    /// The chain as presented, to be verified again when the bundles change.
    chain: Box<[CertificateDer<'static>]>,
    verifier: Arc<SpiffeClientVerifier>,
    /// The bundle generation the chain last verified against.
    generation: AtomicU64,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PeerIdentity {
    /// Verifies `chain` (leaf first, as the client presented it) with `verifier` against the
    /// bundles as they are now. Returns the handshake-metric label and the error if it does not
    /// verify, and `client_cert_required` as the label if its ID cannot be a header value.
    pub fn verify(
        verifier: &Arc<SpiffeClientVerifier>,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<PeerIdentity, (&'static str, String)> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(("no_certificate", "no certificate presented".into()));
        };
        let checked = verifier
            .check(leaf, intermediates, now)
            .map_err(|(label, err)| (label, err.to_string()))?;
        let leaf = checked.leaf;
        let xfcc = format!(
            "Hash={};URI={}",
            leaf.der_sha256_hex(),
            leaf.spiffe_id.as_str()
        );
        let (Ok(xfcc), Ok(spiffe_header)) = (
            HeaderValue::from_str(&xfcc),
            HeaderValue::from_str(leaf.spiffe_id.as_str()),
        ) else {
            return Err((
                "client_cert_required",
                "the SPIFFE ID is not a valid header value".into(),
            ));
        };
        Ok(PeerIdentity {
            spiffe_id: leaf.spiffe_id,
            serial_hex: leaf.serial_hex,
            xfcc,
            spiffe_header,
            not_after: checked.not_after,
            chain: chain.into(),
            verifier: verifier.clone(),
            generation: AtomicU64::new(checked.generation),
        })
    }

    /// Whether the connection's certificate still vouches for it at `now`: every certificate of
    /// the chain is inside its validity, and the chain verifies against the current bundles. On
    /// the request path this is a comparison and a generation load; the chain is verified again
    /// only after the bundles changed (and then once per chain, see the verifier's memory).
    pub fn holds(&self, now: zen_trust::UnixTime) -> bool {
        if now.0 > self.not_after {
            return false;
        }
        let current = self.verifier.generation();
        if current == self.generation.load(Ordering::Acquire) {
            return true;
        }
        let Some((leaf, intermediates)) = self.chain.split_first() else {
            return false;
        };
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now.0).unwrap_or(0),
        ));
        match self.verifier.check(leaf, intermediates, at) {
            // The same bytes cannot name another ID; checked anyway, as a connection's identity
            // must never change under it.
            Ok(c) if c.leaf.spiffe_id == self.spiffe_id => {
                self.generation.store(c.generation, Ordering::Release);
                true
            }
            Ok(_) => false,
            Err((_, err)) => {
                tracing::debug!(spiffe_id = %self.spiffe_id, %err, "client certificate no longer verifies on a live connection");
                false
            }
        }
    }
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
        let Some(chain) = chain.filter(|c| !c.is_empty()) else {
            return ConnIdentity::Anonymous;
        };
        // On a full handshake the verifier has just accepted this chain; on a resumption it has
        // not run at all, and the bundle may have changed since. Check again against the bundle
        // as it is now; this is also the one place the connection's identity is extracted.
        match PeerIdentity::verify(&self.verifier, chain, UnixTime::now()) {
            Ok(peer) => ConnIdentity::Peer(peer),
            Err((result, err)) => {
                // Counted once, by the caller, as `client_cert_required`.
                tracing::debug!(listener = self.listener, result, %err, "client certificate no longer verifies");
                ConnIdentity::Refused(Refusal::ClientCertRequired)
            }
        }
    }
}
