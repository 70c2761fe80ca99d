//! CSR checks: parse, key strength, self-signature, and exactly the expected SPIFFE ID.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    KeyTooWeak(String),
    #[error("CSR names `{found}`, expected `{expected}`")]
    SpiffeMismatch { found: String, expected: String },
}

/// A CSR that passed every check; carries only its public key.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    public_key: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    pub key_type: &'static str,
}

impl PublicKeyData for CheckedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

const MIN_RSA_BITS: usize = 2048;

pub fn check_csr(pem_text: &str, expected_spiffe_id: &str) -> Result<CheckedCsr, CsrError> {
    let invalid = |s: &str| CsrError::Invalid(s.to_string());
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|_| invalid("csr_pem is not a PEM block"))?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(invalid("PEM block is not a CERTIFICATE REQUEST"));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|_| invalid("CSR is not valid DER"))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the CSR"));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;

    // Key strength comes before the signature: a weak RSA key would otherwise surface as a
    // signature failure and hide the real reason.
    let (alg, key_type): (&'static SignatureAlgorithm, &'static str) =
        if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            if curve.as_ref() != Some(&OID_EC_P256) {
                return Err(CsrError::KeyTooWeak(
                    "EC key is not on P-256 (allowed: P-256, Ed25519, RSA >= 2048)".into(),
                ));
            }
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ecdsa-p256")
        } else if spki.algorithm.algorithm == OID_SIG_ED25519 {
            (&rcgen::PKCS_ED25519, "ed25519")
        } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => return Err(invalid("RSA public key does not parse")),
            };
            if bits < MIN_RSA_BITS {
                return Err(CsrError::KeyTooWeak(format!(
                    "RSA key has {bits} bits, at least {MIN_RSA_BITS} required"
                )));
            }
            (&rcgen::PKCS_RSA_SHA256, "rsa")
        } else {
            return Err(CsrError::KeyTooWeak(format!(
                "key algorithm {} is not allowed (allowed: P-256, Ed25519, RSA >= 2048)",
                spki.algorithm.algorithm
            )));
        };

    csr.verify_signature()
        .map_err(|_| invalid("CSR self-signature does not verify"))?;

    let mut uris = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push(u.to_string());
                    }
                }
            }
        }
    }
    match uris.as_slice() {
        [] => Err(invalid("CSR has no URI SAN (it must name the SPIFFE ID)")),
        [one] if one == expected_spiffe_id => Ok(CheckedCsr {
            public_key: spki.subject_public_key.data.to_vec(),
            alg,
            key_type,
        }),
        [one] => Err(CsrError::SpiffeMismatch {
            found: one.clone(),
            expected: expected_spiffe_id.to_string(),
        }),
        many => Err(CsrError::SpiffeMismatch {
            found: many.join(", "),
            expected: expected_spiffe_id.to_string(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType, SigningKey};

    pub(crate) fn csr_with(id: &str, key: &impl SigningKey) -> String {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    /// A 1024-bit RSA public key with a junk signature: the key check must fire first.
    pub(crate) struct WeakRsa(Vec<u8>);
    impl WeakRsa {
        pub(crate) fn new() -> Self {
            let mut der = vec![0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00];
            let mut n = [0xC5u8; 128];
            n[127] |= 1;
            der.extend_from_slice(&n);
            der.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
            WeakRsa(der)
        }
    }
    impl PublicKeyData for WeakRsa {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &'static SignatureAlgorithm {
            &rcgen::PKCS_RSA_SHA256
        }
    }
    impl SigningKey for WeakRsa {
        fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            Ok(vec![1u8; 128])
        }
    }

    const ID: &str = "spiffe://zen.local/cluster/c1/agent/a1";

    #[test]
    fn accepts_p256_and_ed25519() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            check_csr(&csr_with(ID, &key), ID).unwrap();
        }
    }

    #[test]
    fn refuses_weak_and_disallowed_keys() {
        let e = check_csr(&csr_with(ID, &WeakRsa::new()), ID).unwrap_err();
        assert!(
            matches!(e, CsrError::KeyTooWeak(ref d) if d.contains("1024")),
            "{e:?}"
        );
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            check_csr(&csr_with(ID, &key), ID),
            Err(CsrError::KeyTooWeak(_))
        ));
    }

    #[test]
    fn refuses_other_ids_garbage_and_bad_signatures() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            check_csr(
                &csr_with("spiffe://zen.local/cluster/c1/agent/a2", &key),
                ID
            ),
            Err(CsrError::SpiffeMismatch { .. })
        ));
        assert!(matches!(check_csr("hello", ID), Err(CsrError::Invalid(_))));
        // Flip a byte inside the signature.
        let pem = csr_with(ID, &key);
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = p.contents.clone();
        let last = der.len() - 3;
        der[last] ^= 0x55;
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
        );
        assert!(matches!(
            check_csr(&tampered, ID),
            Err(CsrError::Invalid(_))
        ));
    }
}
