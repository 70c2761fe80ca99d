//! CSR checks: parse, key strength, self-signature, and exactly the expected SPIFFE ID.

use std::net::IpAddr;

use rcgen::{PublicKeyData, SanType, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use zen_trust::spiffe::SpiffeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    KeyTooWeak(String),
    #[error("CSR names `{found}`, expected `{expected}`")]
    SpiffeMismatch { found: String, expected: String },
}

/// A CSR that passed every check: its public key, and the DNS/IP names it asks for (granted to
/// proxy identities only, see [`granted_sans`]).
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    public_key: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    pub key_type: &'static str,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// At most this many DNS + IP names in one serving SVID.
pub const MAX_SERVING_SANS: usize = 16;

/// The DNS/IP SANs an SVID for `id` gets from its CSR. Only a proxy (`spiffe://<td>/proxy/<name>`)
/// serves TLS to ordinary clients by host name (DESIGN §2); for every other identity the requested
/// names are not issued (the SVID carries the SPIFFE URI only), as before proxies enrolled.
pub fn granted_sans(csr: &CheckedCsr, id: &SpiffeId) -> Result<Vec<SanType>, CsrError> {
    if !crate::api::identity::is_proxy(id) {
        return Ok(Vec::new());
    }
    if csr.dns.len() + csr.ips.len() > MAX_SERVING_SANS {
        return Err(CsrError::Invalid(format!(
            "CSR asks for {} DNS/IP names, at most {MAX_SERVING_SANS} are issued",
            csr.dns.len() + csr.ips.len()
        )));
    }
    let mut sans = Vec::with_capacity(csr.dns.len() + csr.ips.len());
    for name in &csr.dns {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
        if !valid {
            return Err(CsrError::Invalid(format!(
                "CSR DNS name {name:?} is not a host name"
            )));
        }
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|_| CsrError::Invalid(format!("CSR DNS name {name:?} is not IA5")))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(csr.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(sans)
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

    let (mut uris, mut dns, mut ips) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => {
                            ips.push(ip_from_bytes(b).ok_or_else(|| {
                                invalid("CSR IP address SAN is neither 4 nor 16 bytes")
                            })?)
                        }
                        _ => {}
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
            dns,
            ips,
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

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
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

    fn csr_with_names(id: &str, dns: &[&str], ips: &[&str]) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        for d in dns {
            p.subject_alt_names
                .push(SanType::DnsName(d.to_string().try_into().unwrap()));
        }
        for ip in ips {
            p.subject_alt_names
                .push(SanType::IpAddress(ip.parse().unwrap()));
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn dns_and_ip_names_are_granted_to_proxies_only() {
        let proxy = "spiffe://zen.local/proxy/p1";
        let csr = check_csr(
            &csr_with_names(proxy, &["localhost"], &["127.0.0.1", "::1"]),
            proxy,
        )
        .unwrap();
        assert_eq!(csr.dns, vec!["localhost".to_string()]);
        assert_eq!(csr.ips.len(), 2);
        let granted = granted_sans(&csr, &SpiffeId::parse(proxy).unwrap()).unwrap();
        assert_eq!(granted.len(), 3);

        // An agent asking for host names gets its SPIFFE URI only.
        let csr = check_csr(&csr_with_names(ID, &["localhost"], &["127.0.0.1"]), ID).unwrap();
        assert!(granted_sans(&csr, &SpiffeId::parse(ID).unwrap())
            .unwrap()
            .is_empty());

        // A proxy may not ask for a wildcard or for too many names.
        let csr = check_csr(&csr_with_names(proxy, &["*.example.com"], &[]), proxy).unwrap();
        assert!(matches!(
            granted_sans(&csr, &SpiffeId::parse(proxy).unwrap()),
            Err(CsrError::Invalid(_))
        ));
        let many: Vec<String> = (0..17).map(|i| format!("h{i}.local")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let csr = check_csr(&csr_with_names(proxy, &many, &[]), proxy).unwrap();
        assert!(matches!(
            granted_sans(&csr, &SpiffeId::parse(proxy).unwrap()),
            Err(CsrError::Invalid(_))
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
