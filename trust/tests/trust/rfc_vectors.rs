//! The standards' own test vectors.

use zen_trust::signature::{
    content_digest, mac_base64, signature_base, verify, DigestAlg, HeaderLookup, RequestParts,
    SignatureError, VerifyPolicy,
};
use zen_trust::{KeySet, KeySetEntry, KeyStatus, Secret, SpiffeId, UnixTime};

/// RFC 9421 Appendix B.1.5, `test-shared-secret`.
const TEST_SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

/// RFC 9421 Appendix B.2, the test request's headers.
const HEADERS: [(&str, &str); 5] = [
    ("Host", "example.com"),
    ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
    ("Content-Type", "application/json"),
    (
        "Content-Digest",
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    ),
    ("Content-Length", "18"),
];
const BODY: &[u8] = b"{\"hello\": \"world\"}";

fn test_request(headers: &dyn HeaderLookup) -> RequestParts<'_> {
    RequestParts {
        method: "POST",
        authority: "example.com",
        path: "/foo",
        query: Some("param=Value&Pet=dog"),
        headers,
    }
}

#[test]
fn rfc9421_b25_hmac_sha256_base_and_signature() {
    let req = test_request(&HEADERS);
    let params =
        r#"("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    let base = signature_base(&req, params).unwrap();
    let expected = concat!(
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
        "\"@authority\": example.com\n",
        "\"content-type\": application/json\n",
        "\"@signature-params\": (\"date\" \"@authority\" \"content-type\")",
        ";created=1618884473;keyid=\"test-shared-secret\"",
    );
    assert_eq!(base, expected);
    let secret = Secret::from_base64(TEST_SHARED_SECRET).unwrap();
    assert_eq!(secret.len(), 64);
    assert_eq!(
        mac_base64(&secret, &base),
        "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="
    );
}

/// The B.2.5 signature is a valid RFC 9421 signature, but the zen-hmac-v1
/// profile demands more coverage (@method, target, nonce): the verifier
/// parses it, rebuilds the same base, and refuses it for the profile reason.
#[test]
fn rfc9421_b25_is_parsed_and_refused_by_profile_rules() {
    let mut headers = HEADERS.to_vec();
    headers.push((
        "Signature-Input",
        r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
    ));
    headers.push((
        "Signature",
        "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
    ));
    let req = test_request(&headers);
    let keys = KeySet::from_entries(
        1,
        &[KeySetEntry {
            key_id: "test-shared-secret".into(),
            secret: Secret::from_base64(TEST_SHARED_SECRET).unwrap(),
            owner: SpiffeId::parse("spiffe://example.com/rfc").unwrap(),
            not_before: UnixTime(0),
            not_after: UnixTime(2_000_000_000),
            status: KeyStatus::Active,
        }],
    )
    .unwrap();
    let now = UnixTime(1618884473);
    let relaxed = VerifyPolicy {
        require_nonce: false,
        ..VerifyPolicy::default()
    };
    let err = verify(&relaxed, &req, Some(BODY), &keys, now).unwrap_err();
    assert_eq!(
        err,
        SignatureError::Malformed {
            detail: "covered components must include \"@method\"".into()
        }
    );
    let err = verify(&VerifyPolicy::default(), &req, Some(BODY), &keys, now).unwrap_err();
    assert_eq!(err.code(), "signature_malformed");
    assert!(err.to_string().contains("nonce"), "{err}");
}

#[test]
fn rfc9530_hello_world_digests() {
    assert_eq!(
        content_digest(DigestAlg::Sha256, BODY),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    assert_eq!(content_digest(DigestAlg::Sha512, BODY), HEADERS[3].1);
}
