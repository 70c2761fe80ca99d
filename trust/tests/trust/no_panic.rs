//! Every parser returns a typed error on bad input and never panics:
//! truncations of valid inputs, bit flips, and random bytes.

use proptest::prelude::*;
use rcgen::{CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
use zen_trust::keys::{EnrollmentBundle, HmacKeyFile, KeySetFile, ProxyState};
use zen_trust::signature::{sign, signature_base, verify, RequestParts, SignOptions, VerifyPolicy};
use zen_trust::svid::{check_svid_leaf, pem_to_der_chain};
use zen_trust::{KeySet, KeySetEntry, KeyStatus, Secret, SpiffeId, TrustDomain, UnixTime};

const NOW: UnixTime = UnixTime(1_800_000_000);

fn leaf() -> (Vec<u8>, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI("spiffe://zen.local/a/b".try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.der().to_vec(), cert.pem())
}

fn keys(secret: &Secret) -> KeySet {
    KeySet::from_entries(
        1,
        &[KeySetEntry {
            key_id: "k1".into(),
            secret: secret.clone(),
            owner: SpiffeId::parse("spiffe://zen.local/agent/a").unwrap(),
            not_before: UnixTime(0),
            not_after: UnixTime(i64::MAX / 2),
            status: KeyStatus::Active,
        }],
    )
    .unwrap()
}

/// Runs every text parser on `s`; results are ignored, only panics matter.
fn all_text_parsers(s: &str, keys: &KeySet) {
    let _ = SpiffeId::parse(s);
    let _ = TrustDomain::parse(s);
    let _ = Secret::from_base64(s);
    let _ = KeySetFile::from_json(s);
    let _ = serde_json::from_str::<EnrollmentBundle>(s);
    let _ = serde_json::from_str::<HmacKeyFile>(s);
    let _ = serde_json::from_str::<ProxyState>(s);
    let _ = serde_yaml::from_str::<KeySetFile>(s);
    let _ = UnixTime::parse_rfc3339(s);
    let _ = pem_to_der_chain(s.as_bytes());
    let empty: Vec<(&str, &str)> = Vec::new();
    let base_req = RequestParts {
        method: "GET",
        authority: "a",
        path: "/",
        query: Some(s),
        headers: &empty,
    };
    let _ = signature_base(&base_req, s);
    // As Signature-Input, as Signature, and as Content-Digest.
    for (si, sig, cd) in [
        (s, "sig1=:AAAA:", "sha-256=:AAAA:"),
        (
            r#"sig1=("@method" "@authority" "@path" "content-digest");created=1800000000;keyid="k1";nonce="n""#,
            s,
            "sha-256=:AAAA:",
        ),
        (
            r#"sig1=("@method" "@authority" "@path" "content-digest");created=1800000000;keyid="k1";nonce="n""#,
            "sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
            s,
        ),
    ] {
        let headers = vec![
            ("signature-input", si),
            ("signature", sig),
            ("content-digest", cd),
        ];
        let req = RequestParts {
            method: s,
            authority: s,
            path: s,
            query: Some(s),
            headers: &headers,
        };
        let _ = verify(
            &VerifyPolicy::default(),
            &req,
            Some(s.as_bytes()),
            keys,
            NOW,
        );
    }
}

#[test]
fn truncated_valid_inputs_never_panic() {
    let secret = Secret::generate();
    let keys = keys(&secret);
    let (der, pem) = leaf();
    for i in 0..=der.len() {
        let _ = check_svid_leaf(&der[..i], NOW);
    }
    for i in 0..=pem.len() {
        let _ = pem_to_der_chain(&pem.as_bytes()[..i]);
    }
    // Bit flips across the DER.
    for i in 0..der.len() {
        let mut d = der.clone();
        d[i] ^= 0x55;
        let _ = check_svid_leaf(&d, NOW);
    }

    let empty: Vec<(&str, &str)> = Vec::new();
    let req = RequestParts {
        method: "POST",
        authority: "a.zen.local",
        path: "/p",
        query: Some("x=1&y=%zz"),
        headers: &empty,
    };
    let h = sign(&req, Some(b"body"), &SignOptions::new("k1", &secret, NOW)).unwrap();
    let digest = h.content_digest.clone().unwrap();
    let key_file = serde_json::to_string(&KeySetFile {
        version: 1,
        keys: vec![KeySetEntry {
            key_id: "k1".into(),
            secret: secret.clone(),
            owner: SpiffeId::parse("spiffe://zen.local/a").unwrap(),
            not_before: UnixTime(0),
            not_after: UnixTime(10),
            status: KeyStatus::Active,
        }],
    })
    .unwrap();
    let bundle = serde_json::to_string(&EnrollmentBundle {
        spiffe_id: SpiffeId::parse("spiffe://zen.local/a").unwrap(),
        svid_chain_pem: pem.clone(),
        trust_bundle_pem: pem.clone(),
        hmac: HmacKeyFile {
            key_id: "k1".into(),
            secret: secret.clone(),
            not_after: UnixTime(10),
        },
        renew_after: UnixTime(5),
        expires_at: UnixTime(10),
        enrollment_id: "e".into(),
    })
    .unwrap();
    for text in [
        h.signature_input.as_str(),
        h.signature.as_str(),
        digest.as_str(),
        key_file.as_str(),
        bundle.as_str(),
        "spiffe://zen.local/cluster/c1/agent/a1",
    ] {
        for (i, _) in text.char_indices() {
            all_text_parsers(&text[..i], &keys);
        }
        // Truncated member of a real request.
        for (i, _) in h.signature_input.char_indices() {
            let headers = vec![
                ("signature-input", &h.signature_input[..i]),
                ("signature", h.signature.as_str()),
                ("content-digest", digest.as_str()),
            ];
            let r = RequestParts {
                headers: &headers,
                ..req
            };
            assert!(verify(&VerifyPolicy::default(), &r, Some(b"body"), &keys, NOW).is_err());
        }
    }
    // The untruncated request verifies (the loop above is meaningful).
    let headers = vec![
        ("signature-input", h.signature_input.as_str()),
        ("signature", h.signature.as_str()),
        ("content-digest", digest.as_str()),
    ];
    let r = RequestParts {
        headers: &headers,
        ..req
    };
    verify(&VerifyPolicy::default(), &r, Some(b"body"), &keys, NOW).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let secret = Secret::generate();
        let keys = keys(&secret);
        let _ = check_svid_leaf(&bytes, NOW);
        let _ = pem_to_der_chain(&bytes);
        let s = String::from_utf8_lossy(&bytes);
        all_text_parsers(&s, &keys);
    }

    #[test]
    fn structured_looking_text_never_panics(s in r#"[a-z0-9=:;(),"@*?% -]{0,120}"#) {
        let secret = Secret::generate();
        let keys = keys(&secret);
        all_text_parsers(&s, &keys);
        all_text_parsers(&format!("sig1=({s}"), &keys);
        all_text_parsers(&format!("sig1=(\"@method\" {s});created=1800000000;keyid=\"k1\";nonce=\"n\""), &keys);
    }

    #[test]
    fn der_prefix_with_random_tail_never_panics(cut in 0usize..600, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (der, _) = leaf();
        let mut d = der[..cut.min(der.len())].to_vec();
        d.extend_from_slice(&tail);
        let _ = check_svid_leaf(&d, NOW);
    }
}
