//! Certificate authority: a P-256 root + intermediate per CA generation, and X.509-SVID
//! issuance from CSRs. The root key signs the intermediate once and is then dropped (the
//! next rotation makes a new root), so only the intermediate key is kept, sealed at rest.

mod csr;
mod manager;
mod operator_issue;

pub use csr::{check_csr, granted_sans, CheckedCsr, CsrError};
pub use manager::{rotate, tick, CaManager, CaView};
pub use operator_issue::issue_for_operator;

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("CA material: {0}")]
    Material(String),
    #[error("time out of range")]
    Time,
}

fn odt(t: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| CaError::Time)
}

pub fn random_id(prefix: &str) -> String {
    let b: [u8; 12] = rand::random();
    format!("{prefix}{}", hex::encode(b))
}

/// A 128-bit serial: positive (top bit clear) and without a leading zero byte, so its hex form
/// is the same whether or not a parser strips leading zeros.
pub fn random_serial() -> [u8; 16] {
    let mut s: [u8; 16] = rand::random();
    s[0] = (s[0] & 0x7f) | 0x10;
    s
}

/// A freshly generated CA generation (root + intermediate).
pub struct GeneratedCa {
    pub id: String,
    pub root_cert_pem: String,
    pub inter_cert_pem: String,
    pub inter_key_pem: Zeroizing<String>,
}

fn ca_params(
    cn: String,
    not_before: i64,
    not_after: i64,
    path_len: u8,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Zen Mesh");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = odt(not_before)?;
    p.not_after = odt(not_after)?;
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

pub fn generate_ca(
    trust_domain: &str,
    now: i64,
    root_ttl: Duration,
    inter_ttl: Duration,
) -> Result<GeneratedCa, CaError> {
    let id = random_id("ca-");
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut root_params = ca_params(
        format!("Zen Mesh root {trust_domain} {id}"),
        now - 60,
        now + root_ttl.as_secs() as i64,
        1,
    )?;
    root_params.use_authority_key_identifier_extension = false;
    let root_cert = root_params.self_signed(&root_key)?;
    let root_issuer = Issuer::new(root_params, root_key);

    let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let inter_params = ca_params(
        format!("Zen Mesh intermediate {trust_domain} {id}"),
        now - 60,
        now + inter_ttl.as_secs() as i64,
        0,
    )?;
    let inter_cert = inter_params.signed_by(&inter_key, &root_issuer)?;
    Ok(GeneratedCa {
        id,
        root_cert_pem: root_cert.pem(),
        inter_cert_pem: inter_cert.pem(),
        inter_key_pem: Zeroizing::new(inter_key.serialize_pem()),
    })
}

/// An SVID as issued.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// Leaf then intermediate.
    pub chain_pem: String,
    pub serial_hex: String,
    /// Backdated for clock skew; `issued_at` is when it was signed.
    pub not_before: i64,
    pub issued_at: i64,
    pub not_after: i64,
    pub leaf_sha256: String,
}

impl IssuedSvid {
    /// Halfway through the lifetime counted from issuance (not from the backdated `not_before`,
    /// which would make a short-lived SVID due for renewal the moment it is issued).
    pub fn renew_after(&self) -> i64 {
        self.issued_at + (self.not_after - self.issued_at) / 2
    }
}

/// The CA that currently signs SVIDs.
pub struct SigningCa {
    pub id: String,
    pub inter_cert_pem: String,
    pub inter_not_after: i64,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCa").field("id", &self.id).finish()
    }
}

impl SigningCa {
    pub fn load(id: &str, inter_cert_pem: &str, inter_key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(inter_key_pem)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(inter_cert_pem.as_bytes())
            .map_err(|e| CaError::Material(format!("intermediate certificate PEM: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| CaError::Material(format!("intermediate certificate: {e}")))?;
        let inter_not_after = cert.validity().not_after.timestamp();
        if !cert.is_ca() {
            return Err(CaError::Material(
                "intermediate certificate is not a CA".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(inter_cert_pem, key)?;
        Ok(Self {
            id: id.to_string(),
            inter_cert_pem: inter_cert_pem.to_string(),
            inter_not_after,
            issuer,
        })
    }

    /// Signs an X.509-SVID for `spiffe_id` over the CSR's public key. Only the key is taken
    /// from the CSR; every other field is set here.
    pub fn issue(
        &self,
        csr: &CheckedCsr,
        spiffe_id: &str,
        now: i64,
        ttl: Duration,
    ) -> Result<IssuedSvid, CaError> {
        self.issue_with_sans(csr, spiffe_id, Vec::new(), now, ttl)
    }

    /// As `issue`, with DNS/IP SANs beside the SPIFFE URI (a serving SVID that ordinary TLS
    /// clients can verify by host name, DESIGN §2). Still exactly one URI SAN.
    pub fn issue_with_sans(
        &self,
        csr: &CheckedCsr,
        spiffe_id: &str,
        extra_sans: Vec<SanType>,
        now: i64,
        ttl: Duration,
    ) -> Result<IssuedSvid, CaError> {
        if extra_sans.iter().any(|s| matches!(s, SanType::URI(_))) {
            return Err(CaError::Material(
                "an X.509-SVID carries exactly one URI SAN".into(),
            ));
        }
        let not_before = now - 60; // tolerate small clock skew on the relying side
        let not_after = (now + ttl.as_secs() as i64).min(self.inter_not_after);
        if not_after <= now {
            return Err(CaError::Material("intermediate CA has expired".into()));
        }
        let serial = random_serial();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Zen Mesh");
        p.distinguished_name = dn;
        p.subject_alt_names =
            vec![SanType::URI(spiffe_id.to_string().try_into().map_err(
                |_| CaError::Material("SPIFFE ID is not IA5".into()),
            )?)];
        p.subject_alt_names.extend(extra_sans);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.not_before = odt(not_before)?;
        p.not_after = odt(not_after)?;
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(csr, &self.issuer)?;
        let leaf_sha256 = hex::encode(Sha256::digest(cert.der()));
        let mut chain_pem = cert.pem();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.inter_cert_pem);
        Ok(IssuedSvid {
            chain_pem,
            serial_hex: hex::encode(serial),
            not_before,
            issued_at: now,
            not_after,
            leaf_sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    pub(crate) fn csr_for(id: &str, alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn issues_an_svid_with_the_spiffe_leaf_profile() {
        let ca = generate_ca(
            "zen.local",
            1_800_000_000,
            Duration::from_secs(86400 * 3650),
            Duration::from_secs(86400 * 365),
        )
        .unwrap();
        let signer = SigningCa::load(&ca.id, &ca.inter_cert_pem, &ca.inter_key_pem).unwrap();
        let id = "spiffe://zen.local/cluster/c1/agent/a1";
        let csr = check_csr(&csr_for(id, &rcgen::PKCS_ECDSA_P256_SHA256), id).unwrap();
        let svid = signer
            .issue(&csr, id, 1_800_000_000, Duration::from_secs(86400))
            .unwrap();
        assert_eq!(svid.not_after - 1_800_000_000, 86400);
        assert_eq!(svid.renew_after(), 1_800_000_000 + 43200);
        assert_eq!(svid.serial_hex.len(), 32);
        let pems: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(svid.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(pems.len(), 2);
        let leaf = pems[0].parse_x509().unwrap();
        assert!(!leaf.is_ca());
        assert_eq!(hex::encode(leaf.raw_serial()), svid.serial_hex);
        let mut uris = vec![];
        let mut eku_ok = false;
        let mut ds = false;
        for ext in leaf.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        if let GeneralName::URI(u) = n {
                            uris.push(u.to_string());
                        }
                    }
                }
                ParsedExtension::ExtendedKeyUsage(e) => eku_ok = e.client_auth && e.server_auth,
                ParsedExtension::KeyUsage(k) => {
                    ds = k.digital_signature() && !k.key_cert_sign() && !k.crl_sign()
                }
                _ => {}
            }
        }
        assert_eq!(uris, vec![id.to_string()]);
        assert!(eku_ok && ds);
        // The leaf verifies under the intermediate, which verifies under the root.
        let inter = pems[1].parse_x509().unwrap();
        leaf.verify_signature(Some(inter.public_key())).unwrap();
        let (_, root_pem) = x509_parser::pem::parse_x509_pem(ca.root_cert_pem.as_bytes()).unwrap();
        let root = root_pem.parse_x509().unwrap();
        inter.verify_signature(Some(root.public_key())).unwrap();
    }
}
