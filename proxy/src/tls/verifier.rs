//! Client certificate verification: X.509-SVID leaf rules (zen-trust), then
//! the chain against the bundle of the leaf's OWN trust domain only — a
//! certificate from domain B's CA claiming `spiffe://A/...` finds no anchor.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// Trust anchors per trust domain.
#[derive(Debug)]
pub struct TrustBundles {
    domains: HashMap<String, Vec<TrustAnchor<'static>>>,
    /// Number of CA certificates, for `/config_dump`.
    pub summary: Vec<(String, usize)>,
    /// Unique per loaded set of bundles (never reused, unlike an address): a chain verified
    /// against one generation says nothing about another.
    generation: u64,
}

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Default for TrustBundles {
    fn default() -> Self {
        TrustBundles {
            domains: HashMap::new(),
            summary: Vec::new(),
            generation: next_generation(),
        }
    }
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
        Ok(TrustBundles {
            domains,
            summary,
            generation: next_generation(),
        })
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

/// Client chains (the leaf and the intermediates exactly as presented) that verified against
/// one generation of the bundles, keyed by a SHA-256 over the chain. A full handshake then
/// checks the CA signatures over a given chain once, not once per connection, and the identity
/// check's second look (see [`SpiffeClientVerifier::check`]) costs a hash and a lookup.
/// zen-control issues every SVID under an intermediate, so its agents present leaf +
/// intermediate: two signature checks per look without this.
///
/// Sound because the verdict is a function of the exact certificate bytes, the anchors and the
/// time, and each of those is part of the check: the key covers every certificate presented
/// (each prefixed by its length, so no two chains share an input), an entry holds only for the
/// bundle generation it was verified against, and it holds only while the clock is inside the
/// validity window of every certificate in the chain (webpki checks each one's window). A chain
/// whose intermediates cannot be parsed for their windows is refused. The client's proof
/// of key possession (CertificateVerify) is checked by rustls on every handshake regardless.
#[derive(Debug, Default)]
struct VerifiedChains {
    map: Mutex<HashMap<[u8; 32], Verified>>,
}

#[derive(Debug)]
struct Verified {
    generation: u64,
    leaf: zen_trust::SvidLeaf,
    /// Unix seconds: the latest `notBefore` and the earliest `notAfter` in the chain.
    not_before: i64,
    not_after: i64,
}

/// Bound on [`VerifiedChains`]; when full it is emptied (a miss only costs a full check).
const VERIFIED_CHAINS_MAX: usize = 8192;

impl VerifiedChains {
    fn get(&self, key: &[u8; 32], generation: u64, now: i64) -> Option<Checked> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let v = map.get(key)?;
        (v.generation == generation && v.not_before <= now && now <= v.not_after).then(|| Checked {
            leaf: v.leaf.clone(),
            generation,
            not_after: v.not_after,
        })
    }

    fn insert(&self, key: [u8; 32], verified: Verified) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= VERIFIED_CHAINS_MAX {
            map.clear();
        }
        map.insert(key, verified);
    }
}

/// The cache key of a presented chain: SHA-256 over each certificate, leaf first, each
/// preceded by its length.
fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for der in std::iter::once(end_entity).chain(intermediates) {
        h.update((der.len() as u64).to_be_bytes());
        h.update(der.as_ref());
    }
    h.finalize().into()
}

/// The span in which every certificate of the chain is valid, or `None` if an intermediate's
/// validity cannot be read (the chain is then refused: without the span, a connection could not
/// be held to it).
fn chain_window(
    leaf: &zen_trust::SvidLeaf,
    intermediates: &[CertificateDer<'_>],
) -> Option<(i64, i64)> {
    let (mut from, mut until) = (leaf.not_before.0, leaf.not_after.0);
    for der in intermediates {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let validity = cert.validity();
        from = from.max(validity.not_before.timestamp());
        until = until.min(validity.not_after.timestamp());
    }
    Some((from, until))
}

/// A chain [`SpiffeClientVerifier::check`] accepted, and how long that verdict holds.
#[derive(Debug, Clone)]
pub struct Checked {
    pub leaf: zen_trust::SvidLeaf,
    /// The bundle generation it was verified against: the verdict says nothing about another.
    pub generation: u64,
    /// Unix seconds: the earliest `notAfter` in the chain. The verdict ends after it.
    pub not_after: i64,
}

#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<ArcSwap<TrustBundles>>,
    mandatory: bool,
    allow_tls12: bool,
    listener: &'static str,
    metrics: Metrics,
    provider: Arc<CryptoProvider>,
    verified: VerifiedChains,
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
            verified: VerifiedChains::default(),
        }
    }

    /// The whole client-certificate check against the trust bundles as they are now: the
    /// X.509-SVID leaf rules, then the chain to an anchor of the leaf's own trust domain. Returns
    /// the parsed leaf, or the handshake-metric label and the TLS error.
    ///
    /// The identity check at handshake completion (`Identifier`) runs it again: on a TLS 1.3
    /// resumption rustls restores the client certificate from its session cache without calling
    /// the verifier, so a CA that left the bundle since the session was made would otherwise
    /// still vouch for the connection.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Checked, (&'static str, rustls::Error)> {
        let bundles = self.bundles.load();
        let unix_now = now.as_secs() as i64;
        let cache_key = chain_key(end_entity, intermediates);
        if let Some(hit) = self.verified.get(&cache_key, bundles.generation, unix_now) {
            return Ok(hit);
        }
        let leaf = zen_trust::check_svid_leaf(end_entity, zen_trust::UnixTime(unix_now))
            .map_err(|e| ("svid_invalid", other(e)))?;
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
        let Some((not_before, not_after)) = chain_window(&leaf, intermediates) else {
            return Err((
                "bad_certificate",
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            ));
        };
        self.verified.insert(
            cache_key,
            Verified {
                generation: bundles.generation,
                leaf: leaf.clone(),
                not_before,
                not_after,
            },
        );
        Ok(Checked {
            leaf,
            generation: bundles.generation,
            not_after,
        })
    }

    /// The generation of the trust bundles as they are now; a [`Checked`] of another generation
    /// must be checked again.
    pub fn generation(&self) -> u64 {
        self.bundles.load().generation
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
        // (the listener's config enables both versions: tls::server_config).
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

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, SanType,
    };

    use super::*;

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://zen.local/cluster/c1/agent/a1".try_into().unwrap(),
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = p.signed_by(&KeyPair::generate().unwrap(), ca).unwrap();
        cert.der().clone()
    }

    fn bundle(ca: &CertifiedIssuer<'static, KeyPair>) -> TrustBundles {
        TrustBundles::from_pems(&[(
            "zen.local".to_string(),
            ca.pem().into_bytes(),
            "bundle.pem".to_string(),
        )])
        .unwrap()
    }

    fn verifier(b: TrustBundles) -> (SpiffeClientVerifier, Arc<ArcSwap<TrustBundles>>) {
        let bundles = Arc::new(ArcSwap::from_pointee(b));
        let v = SpiffeClientVerifier::new(
            bundles.clone(),
            true,
            false,
            "agent",
            Metrics::new(),
            crate::tls::install_crypto_provider(),
        );
        (v, bundles)
    }

    fn at(secs: i64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs as u64))
    }

    const NOW: i64 = 1_800_000_000; // 2027
    const AFTER_EXPIRY: i64 = 4_200_000_000; // 2103

    #[test]
    fn a_verified_leaf_is_remembered_only_for_the_bundle_it_verified_against() {
        let (a, b) = (ca(), ca());
        let cert = leaf(&a);
        let (v, bundles) = verifier(bundle(&a));
        assert!(v.check(&cert, &[], at(NOW)).is_ok());
        assert_eq!(v.verified.map.lock().unwrap().len(), 1, "remembered");
        assert!(v.check(&cert, &[], at(NOW)).is_ok(), "hit");

        // The bundle now trusts only another CA: the remembered verdict must not apply.
        bundles.store(Arc::new(bundle(&b)));
        assert_eq!(v.check(&cert, &[], at(NOW)).unwrap_err().0, "chain_invalid");

        // The same CA loaded again is a new generation: verified afresh, then accepted.
        bundles.store(Arc::new(bundle(&a)));
        assert!(v.check(&cert, &[], at(NOW)).is_ok());
    }

    #[test]
    fn a_remembered_leaf_is_refused_once_it_has_expired() {
        let a = ca();
        let cert = leaf(&a);
        let (v, _) = verifier(bundle(&a));
        assert!(v.check(&cert, &[], at(NOW)).is_ok());
        assert_eq!(
            v.check(&cert, &[], at(AFTER_EXPIRY)).unwrap_err().0,
            "svid_invalid"
        );
    }

    /// An intermediate under `root` named `name`, valid from 2020 until `until_year`.
    fn intermediate(
        root: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        until_year: i32,
    ) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), root).unwrap()
    }

    const BEFORE_2030: i64 = 1_890_000_000; // 2029-11
    const AFTER_2030: i64 = 1_900_000_000; // 2030-03

    #[test]
    fn a_chain_with_an_intermediate_is_remembered_while_every_certificate_is_valid() {
        let root = ca();
        // The intermediate expires in 2030, long before the leaf (2100).
        let inter = intermediate(&root, "zen intermediate", 2030);
        let cert = leaf(&inter);
        let chain = [inter.der().clone()];
        let (v, _) = verifier(bundle(&root));
        assert!(v.check(&cert, &chain, at(NOW)).is_ok());
        assert_eq!(v.verified.map.lock().unwrap().len(), 1, "remembered");
        assert!(v.check(&cert, &chain, at(BEFORE_2030)).is_ok(), "hit");
        assert_eq!(v.verified.map.lock().unwrap().len(), 1, "no second entry");

        // The leaf is still valid, the intermediate is not: the remembered verdict must not apply.
        assert_eq!(
            v.check(&cert, &chain, at(AFTER_2030)).unwrap_err().0,
            "chain_invalid"
        );
    }

    #[test]
    fn a_remembered_leaf_with_another_intermediate_is_checked_afresh() {
        let root = ca();
        let inter = intermediate(&root, "zen intermediate", 2100);
        let cert = leaf(&inter);
        let (v, _) = verifier(bundle(&root));
        assert!(v.check(&cert, &[inter.der().clone()], at(NOW)).is_ok());

        // Same leaf bytes, same issuer name, but an intermediate with another key that the
        // root never signed for this leaf's issuer: the key covers the intermediates, so this
        // is verified, and refused, on its own.
        let impostor = intermediate(&ca(), "zen intermediate", 2100);
        assert_eq!(
            v.check(&cert, &[impostor.der().clone()], at(NOW))
                .unwrap_err()
                .0,
            "chain_invalid"
        );
        // And without the intermediate the leaf has no path to the root.
        assert_eq!(v.check(&cert, &[], at(NOW)).unwrap_err().0, "chain_invalid");
        assert_eq!(
            v.verified.map.lock().unwrap().len(),
            1,
            "only the good chain"
        );
    }

    #[test]
    fn chain_keys_separate_certificates() {
        let (a, b) = (
            CertificateDer::from(vec![1u8, 2, 3]),
            CertificateDer::from(vec![4u8]),
        );
        let joined = CertificateDer::from(vec![1u8, 2, 3, 4]);
        let a_then_b = chain_key(&a, std::slice::from_ref(&b));
        assert_ne!(a_then_b, chain_key(&joined, &[]));
        assert_ne!(a_then_b, chain_key(&b, std::slice::from_ref(&a)));
        assert_eq!(a_then_b, chain_key(&a, &[b]));
    }

    #[test]
    fn the_memory_is_bounded() {
        let a = ca();
        let (v, _) = verifier(bundle(&a));
        let sample = zen_trust::check_svid_leaf(&leaf(&a), zen_trust::UnixTime(NOW)).unwrap();
        let entry = || Verified {
            generation: 1,
            leaf: sample.clone(),
            not_before: sample.not_before.0,
            not_after: sample.not_after.0,
        };
        for i in 0..VERIFIED_CHAINS_MAX {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            v.verified.insert(key, entry());
        }
        assert_eq!(v.verified.map.lock().unwrap().len(), VERIFIED_CHAINS_MAX);
        v.verified.insert([9u8; 32], entry());
        assert_eq!(v.verified.map.lock().unwrap().len(), 1, "emptied when full");
    }
}
