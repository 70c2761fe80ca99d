//! X.509-SVID leaf rules against rcgen-made certificates.

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::OffsetDateTime;
use zen_trust::svid::{check_svid_leaf, pem_to_der_chain, SvidError};
use zen_trust::{SpiffeIdError, UnixTime};

const NOW: i64 = 1_800_000_000;

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A good leaf's parameters; each test breaks one rule.
fn leaf_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![uri("spiffe://zen.local/cluster/c1/agent/a1")];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = at(NOW - 3600);
    p.not_after = at(NOW + 3600);
    p.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x8f, 0x01]));
    p
}

fn ca() -> (CertificateParams, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![uri("spiffe://zen.local")];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(NOW - 7200);
    p.not_after = at(NOW + 7200);
    (p, KeyPair::generate().unwrap())
}

fn issue(p: &CertificateParams) -> Vec<u8> {
    let (ca_params, ca_key) = ca();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    p.signed_by(&key, &issuer).unwrap().der().to_vec()
}

fn check(p: &CertificateParams) -> Result<zen_trust::SvidLeaf, SvidError> {
    check_svid_leaf(&issue(p), UnixTime(NOW))
}

#[test]
fn good_leaf_is_accepted() {
    let der = issue(&leaf_params());
    let leaf = check_svid_leaf(&der, UnixTime(NOW)).unwrap();
    assert_eq!(
        leaf.spiffe_id.as_str(),
        "spiffe://zen.local/cluster/c1/agent/a1"
    );
    assert_eq!(leaf.serial_hex, "8f01");
    assert_eq!(leaf.not_before, UnixTime(NOW - 3600));
    assert_eq!(leaf.not_after, UnixTime(NOW + 3600));
    use sha2::Digest as _;
    let want: [u8; 32] = sha2::Sha256::digest(&der).into();
    assert_eq!(leaf.der_sha256, want);
    assert_eq!(leaf.der_sha256_hex(), hex::encode(want));
    // Absent basicConstraints is also "not a CA".
    let mut p = leaf_params();
    p.is_ca = IsCa::NoCa;
    check(&p).unwrap();
    // Other usages next to digitalSignature are fine.
    p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    check(&p).unwrap();
}

#[test]
fn ca_certificate_as_leaf_is_refused() {
    let (ca_params, ca_key) = ca();
    let der = ca_params.self_signed(&ca_key).unwrap().der().to_vec();
    let err = check_svid_leaf(&der, UnixTime(NOW)).unwrap_err();
    assert!(
        matches!(err, SvidError::IsCa | SvidError::CertSignNotAllowed),
        "{err:?}"
    );
    let mut p = leaf_params();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(check(&p).unwrap_err(), SvidError::IsCa);
}

#[test]
fn uri_san_rules() {
    let mut p = leaf_params();
    p.subject_alt_names = vec![uri("spiffe://zen.local/a"), uri("spiffe://zen.local/b")];
    assert_eq!(check(&p).unwrap_err(), SvidError::MultipleUriSans(2));
    p.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
    assert_eq!(check(&p).unwrap_err(), SvidError::NoUriSan);
    p.subject_alt_names = vec![];
    assert_eq!(check(&p).unwrap_err(), SvidError::NoUriSan);
    p.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        uri("spiffe://zen.local/proxy/p1"),
    ];
    check(&p).unwrap();
    p.subject_alt_names = vec![uri("https://zen.local/x")];
    assert_eq!(
        check(&p).unwrap_err(),
        SvidError::InvalidSpiffeId(SpiffeIdError::WrongScheme)
    );
    p.subject_alt_names = vec![uri("spiffe://Zen.local/x")];
    assert!(matches!(
        check(&p).unwrap_err(),
        SvidError::InvalidSpiffeId(SpiffeIdError::BadTrustDomainChar('Z'))
    ));
}

#[test]
fn key_usage_rules() {
    let mut p = leaf_params();
    p.key_usages = vec![];
    assert_eq!(check(&p).unwrap_err(), SvidError::KeyUsageMissing);
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(check(&p).unwrap_err(), SvidError::DigitalSignatureMissing);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    assert_eq!(check(&p).unwrap_err(), SvidError::CertSignNotAllowed);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    assert_eq!(check(&p).unwrap_err(), SvidError::CertSignNotAllowed);
}

#[test]
fn validity_window() {
    let der = issue(&leaf_params());
    assert_eq!(
        check_svid_leaf(&der, UnixTime(NOW + 3601)).unwrap_err(),
        SvidError::Expired(UnixTime(NOW + 3600))
    );
    assert_eq!(
        check_svid_leaf(&der, UnixTime(NOW - 3601)).unwrap_err(),
        SvidError::NotYetValid(UnixTime(NOW - 3600))
    );
    check_svid_leaf(&der, UnixTime(NOW + 3600)).unwrap();
    let mut p = leaf_params();
    p.not_after = at(NOW - 1);
    p.not_before = at(NOW - 10);
    assert!(matches!(check(&p).unwrap_err(), SvidError::Expired(_)));
}

#[test]
fn garbage_and_trailing_bytes() {
    assert!(matches!(
        check_svid_leaf(b"", UnixTime(NOW)).unwrap_err(),
        SvidError::Parse(_)
    ));
    let mut der = issue(&leaf_params());
    der.push(0);
    assert!(matches!(
        check_svid_leaf(&der, UnixTime(NOW)).unwrap_err(),
        SvidError::Parse(_)
    ));
}

#[test]
fn pem_chain() {
    let (ca_params, ca_key) = ca();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = leaf_params().signed_by(&key, &issuer).unwrap();
    let pem = format!(
        "# comment\n{}{}{}\n\n",
        leaf.pem(),
        key.serialize_pem(),
        ca_pem
    );
    let chain = pem_to_der_chain(pem.as_bytes()).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], leaf.der().to_vec());
    check_svid_leaf(&chain[0], UnixTime(NOW)).unwrap();
    assert!(matches!(
        pem_to_der_chain(b"no pem here"),
        Err(SvidError::Pem(_))
    ));
    assert!(matches!(
        pem_to_der_chain(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
        Err(SvidError::Pem(_))
    ));
}
