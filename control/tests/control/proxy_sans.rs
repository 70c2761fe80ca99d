//! DNS/IP SANs: a proxy identity gets the host names its CSR asks for (its serving SVID must
//! verify for ordinary TLS clients, DESIGN §2), at enrollment and at renewal; an agent does not.

use rcgen::{CertificateParams, KeyPair, SanType};
use serde_json::json;
use x509_parser::extensions::GeneralName;

use crate::common::*;

const PROXY: &str = "spiffe://zen.local/proxy/edge";

fn csr_with_names(id: &str) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        SanType::URI(id.to_string().try_into().unwrap()),
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

/// (URI, DNS, IP) SANs of the chain's leaf.
fn sans(chain_pem: &str) -> (Vec<String>, Vec<String>, Vec<Vec<u8>>) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).unwrap();
    let leaf = pem.parse_x509().unwrap();
    let (mut uris, mut dns, mut ips) = (vec![], vec![], vec![]);
    for name in &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
    {
        match name {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ips.push(b.to_vec()),
            _ => {}
        }
    }
    (uris, dns, ips)
}

#[tokio::test]
async fn proxy_gets_its_host_names_at_enrollment_and_renewal_an_agent_does_not() {
    let h = Harness::new().await;

    let t = h.token(PROXY).await;
    let r = h.enroll_with(&t, &csr_with_names(PROXY)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bundle = r.json();
    let (uris, dns, ips) = sans(bundle["svid_chain_pem"].as_str().unwrap());
    assert_eq!(uris, vec![PROXY.to_string()]);
    assert_eq!(dns, vec!["localhost".to_string()]);
    assert_eq!(ips, vec![vec![127, 0, 0, 1]]);

    let key_id = bundle["hmac"]["key_id"].as_str().unwrap();
    let r = h
        .call(agent_req(
            "POST",
            "/agent/v1/svid/renew",
            PROXY,
            Some(key_id),
            Some(&json!({"csr_pem": csr_with_names(PROXY)})),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (_, dns, ips) = sans(r.json()["svid_chain_pem"].as_str().unwrap());
    assert_eq!((dns.len(), ips.len()), (1, 1));

    // An agent asking for the same names gets its SPIFFE ID only.
    let agent = agent_id("c1", "a1");
    let t = h.token(&agent).await;
    let r = h.enroll_with(&t, &csr_with_names(&agent)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (uris, dns, ips) = sans(r.json()["svid_chain_pem"].as_str().unwrap());
    assert_eq!(uris, vec![agent.clone()]);
    assert!(dns.is_empty() && ips.is_empty(), "{dns:?} {ips:?}");
}
