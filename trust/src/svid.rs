//! X.509-SVID leaf rules (SPIFFE X509-SVID spec). Chain building and
//! signature checks are the TLS stack's job (webpki against the bundle of the
//! leaf's own trust domain); this module checks what webpki does not.

use sha2::{Digest, Sha256};
use x509_parser::error::PEMError;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};
use crate::time::UnixTime;

/// Why a certificate is not an acceptable X.509-SVID leaf: one variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("PEM input is not usable: {0}")]
    Pem(String),
    #[error("certificate has no URI SAN (an X.509-SVID carries exactly one SPIFFE ID)")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an X.509-SVID carries exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(#[from] SpiffeIdError),
    #[error("certificate is a CA (basicConstraints cA=true); a leaf SVID must not be")]
    IsCa,
    #[error("certificate has no keyUsage extension; a leaf SVID needs digitalSignature")]
    KeyUsageMissing,
    #[error("keyUsage lacks digitalSignature")]
    DigitalSignatureMissing,
    #[error("keyUsage has keyCertSign or cRLSign, which a leaf SVID must not have")]
    CertSignNotAllowed,
    #[error("certificate is not valid before {0}")]
    NotYetValid(UnixTime),
    #[error("certificate expired at {0}")]
    Expired(UnixTime),
}

/// What a valid leaf tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidLeaf {
    pub spiffe_id: SpiffeId,
    /// Lowercase hex of the serial number, without leading zero bytes.
    pub serial_hex: String,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
    /// SHA-256 of the whole DER certificate (the XFCC `Hash=`).
    pub der_sha256: [u8; 32],
}

impl SvidLeaf {
    pub fn der_sha256_hex(&self) -> String {
        hex::encode(self.der_sha256)
    }
}

/// Checks the leaf rules of the X509-SVID spec on one DER certificate.
pub fn check_svid_leaf(der: &[u8], now: UnixTime) -> Result<SvidLeaf, SvidError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Parse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }

    let spiffe_id = single_spiffe_id(&cert)?;

    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Parse(format!("basicConstraints: {e}")))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::IsCa);
    }

    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Parse(format!("keyUsage: {e}")))?
        .ok_or(SvidError::KeyUsageMissing)?;
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::CertSignNotAllowed);
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::DigitalSignatureMissing);
    }

    let not_before = UnixTime(cert.validity().not_before.timestamp());
    let not_after = UnixTime(cert.validity().not_after.timestamp());
    if now < not_before {
        return Err(SvidError::NotYetValid(not_before));
    }
    if now > not_after {
        return Err(SvidError::Expired(not_after));
    }

    let serial = cert.raw_serial();
    let first_nonzero = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    let serial_hex = match serial.get(first_nonzero..) {
        Some(s) if !s.is_empty() => hex::encode(s),
        _ => "00".to_owned(),
    };

    Ok(SvidLeaf {
        spiffe_id,
        serial_hex,
        not_before,
        not_after,
        der_sha256: Sha256::digest(der).into(),
    })
}

fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(format!("subjectAltName: {e}")))?
        .ok_or(SvidError::NoUriSan)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris.next().ok_or(SvidError::NoUriSan)?;
    let others = uris.count();
    if others > 0 {
        return Err(SvidError::MultipleUriSans(others + 1));
    }
    Ok(SpiffeId::parse(first)?)
}

/// The DER bytes of every `CERTIFICATE` block in a PEM buffer, in order.
/// Other block types are skipped; no certificate at all is an error.
pub fn pem_to_der_chain(pem: &[u8]) -> Result<Vec<Vec<u8>>, SvidError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = match block {
            Ok(b) => b,
            // Trailing text after the last block is not a block.
            Err(PEMError::MissingHeader) => break,
            Err(e) => return Err(SvidError::Pem(e.to_string())),
        };
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(SvidError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(out)
}
