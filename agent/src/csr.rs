//! The agent's key pair and certificate signing request: P-256, one URI SAN naming the SPIFFE ID.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use zen_trust::spiffe::SpiffeId;

/// A fresh key and a CSR for `id`. The key never leaves the agent; only the CSR is sent.
pub struct KeyAndCsr {
    /// PKCS#8 PEM of the private key.
    pub key_pem: zeroize::Zeroizing<String>,
    pub csr_pem: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the key or CSR: {0}")]
pub struct CsrError(#[from] rcgen::Error);

pub fn generate(id: &SpiffeId) -> Result<KeyAndCsr, CsrError> {
    generate_with_sans(id, &[], &[])
}

/// As [`generate`], also asking for DNS and IP SANs: a serving SVID (zen-proxy's own) that ordinary
/// TLS clients verify by host name. Control grants them to proxy identities only.
pub fn generate_with_sans(
    id: &SpiffeId,
    dns: &[String],
    ips: &[std::net::IpAddr],
) -> Result<KeyAndCsr, CsrError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    // X509-SVID: the identity is the URI SAN; the subject carries nothing of meaning.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    for name in dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.as_str().try_into()?));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        csr_pem: csr.pem()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_names_exactly_the_spiffe_id() {
        let id: SpiffeId = "spiffe://zen.local/cluster/c1/agent/a1".parse().unwrap();
        let out = generate(&id).unwrap();
        assert!(out.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let params = rcgen::CertificateSigningRequestParams::from_pem(&out.csr_pem).unwrap();
        let uris: Vec<String> = params
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(uris, vec![id.as_str().to_owned()]);
    }
}
