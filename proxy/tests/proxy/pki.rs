//! Test PKI made with rcgen: a CA per trust domain, SVID leaves, and the
//! deliberately broken leaves of the refusal matrix.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

#[derive(Default, Clone)]
pub struct LeafOpts {
    pub expired: bool,
    pub is_ca: bool,
    pub extra_uri: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub serial: Option<u64>,
    /// Valid from an hour ago until this long from now (instead of 2024-2035).
    pub valid_for: Option<std::time::Duration>,
}

impl Ca {
    pub fn new(trust_domain: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, format!("{trust_domain} test CA"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").try_into().unwrap(),
        )];
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(p, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn leaf(&self, spiffe_id: &str, o: LeafOpts) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "svid");
        let mut sans = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        if let Some(u) = &o.extra_uri {
            sans.push(SanType::URI(u.as_str().try_into().unwrap()));
        }
        for d in &o.dns {
            sans.push(SanType::DnsName(d.as_str().try_into().unwrap()));
        }
        for ip in &o.ips {
            sans.push(SanType::IpAddress(*ip));
        }
        p.subject_alt_names = sans;
        if o.is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ];
        }
        if let Some(d) = o.valid_for {
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::hours(1);
            p.not_after = now + d;
        } else if o.expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            p.not_before = rcgen::date_time_ymd(2024, 1, 1);
            p.not_after = rcgen::date_time_ymd(2035, 1, 1);
        }
        p.serial_number = Some(SerialNumber::from(o.serial.unwrap_or_else(rand_serial)));
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

fn rand_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0x1000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (N.fetch_add(1, Ordering::Relaxed) << 20) | (nanos & 0xfffff) | 0x0100_0000_0000_0000
}
