//! Verifier and signer behaviour: one test per refusal reason, plus round trips.

use super::*;
use crate::keys::{KeySet, KeySetEntry, KeyStatus};
use crate::replay::{ReplayCache, ReplayError, ReplayToken};
use crate::secret::Secret;
use crate::spiffe::SpiffeId;
use crate::time::UnixTime;

const NOW: UnixTime = UnixTime(1_800_000_000);

struct Req {
    method: String,
    authority: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
}

impl Req {
    fn get(path: &str, query: Option<&str>) -> Req {
        Req {
            method: "GET".into(),
            authority: "api.zen.local".into(),
            path: path.into(),
            query: query.map(str::to_owned),
            headers: vec![("host".into(), "api.zen.local".into())],
        }
    }

    fn post(path: &str) -> Req {
        Req {
            method: "POST".into(),
            ..Req::get(path, None)
        }
    }

    fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: &self.method,
            authority: &self.authority,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn sign_with(&mut self, body: Option<&[u8]>, opts: &SignOptions<'_>) {
        let h = sign(&self.parts(), body, opts).expect("sign");
        self.set("signature-input", &h.signature_input);
        self.set("signature", &h.signature);
        if let Some(d) = &h.content_digest {
            self.set("content-digest", d);
        }
    }

    fn sign(&mut self, body: Option<&[u8]>, secret: &Secret) {
        self.sign_with(body, &SignOptions::new("k1", secret, NOW));
    }

    /// Hand-made signature over an arbitrary `Signature-Input` inner list.
    fn craft(&mut self, inner: &str, secret: &Secret) {
        let base = signature_base(&self.parts(), inner).expect("base");
        self.set("signature-input", &format!("sig1={inner}"));
        self.set(
            "signature",
            &format!("sig1=:{}:", mac_base64(secret, &base)),
        );
    }

    fn verify<'k>(
        &self,
        body: Option<&[u8]>,
        keys: &'k KeySet,
    ) -> Result<Verified<'k>, SignatureError> {
        verify(&VerifyPolicy::default(), &self.parts(), body, keys, NOW)
    }

    /// The headers as an `http::HeaderMap`, which can then hold what `Req` cannot: values that
    /// are not text, a field on several lines.
    fn header_map(&self) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (n, v) in &self.headers {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// [`Req::verify`] (no body) with `headers` in place of the request's own.
    fn verify_headers<'k>(
        &self,
        headers: &http::HeaderMap,
        keys: &'k KeySet,
    ) -> Result<Verified<'k>, SignatureError> {
        let parts = RequestParts {
            headers,
            ..self.parts()
        };
        verify(&VerifyPolicy::default(), &parts, None, keys, NOW)
    }
}

struct Fixture {
    secret: Secret,
    keys: KeySet,
}

fn fixture() -> Fixture {
    let secret = Secret::generate();
    let owner = SpiffeId::parse("spiffe://zen.local/cluster/c1/agent/a1").unwrap();
    let entry = |id: &str, nb: i64, na: i64, status| KeySetEntry {
        key_id: id.into(),
        secret: secret.clone(),
        owner: owner.clone(),
        not_before: UnixTime(nb),
        not_after: UnixTime(na),
        status,
    };
    let n = NOW.as_secs();
    let keys = KeySet::from_entries(
        1,
        &[
            entry("k1", n - 1000, n + 1000, KeyStatus::Active),
            entry("k-retiring", n - 1000, n + 1000, KeyStatus::Retiring),
            entry("k-revoked", n - 1000, n + 1000, KeyStatus::Revoked),
            entry("k-expired", n - 1000, n - 1, KeyStatus::Active),
            entry("k-future", n + 10, n + 1000, KeyStatus::Active),
        ],
    )
    .unwrap();
    Fixture { secret, keys }
}

/// A GET to `/x` whose signature covers the field `field`, sent as `value`.
fn covering(field: &str, value: &str, secret: &Secret) -> Req {
    let inner = format!(
        r#"("@method" "@authority" "@path" "{field}");created=1800000000;keyid="k1";nonce="n""#
    );
    let mut r = Req::get("/x", None);
    r.set(field, value);
    r.craft(&inner, secret);
    r
}

fn malformed_containing(r: Result<Verified<'_>, SignatureError>, needle: &str) {
    match r {
        Err(SignatureError::Malformed { detail }) => {
            assert!(
                detail.contains(needle),
                "detail {detail:?} lacks {needle:?}"
            )
        }
        other => panic!("expected Malformed({needle}), got {other:?}"),
    }
}

#[test]
fn get_round_trip() {
    let f = fixture();
    let mut r = Req::get("/agent/v1/allowlist", None);
    r.sign(None, &f.secret);
    let v = r.verify(None, &f.keys).unwrap();
    assert_eq!(v.key_id(), "k1");
    assert_eq!(v.created, NOW);
    assert_eq!(v.age_out, NOW + std::time::Duration::from_secs(300));
    assert_eq!(v.nonce.as_ref().map(String::len), Some(22));
    let si = r
        .parts()
        .headers
        .combined("signature-input")
        .unwrap()
        .into_owned();
    assert!(
        si.starts_with(
            "sig1=(\"@method\" \"@authority\" \"@path\");created=1800000000;keyid=\"k1\";nonce=\""
        ),
        "{si}"
    );
}

#[test]
fn post_round_trip_with_query_and_digest() {
    let f = fixture();
    let mut r = Req::post("/agent/v1/heartbeat");
    r.query = Some("a=1&b=two".into());
    let body = br#"{"cluster":"c1"}"#;
    r.sign(Some(body), &f.secret);
    let si = r
        .parts()
        .headers
        .combined("signature-input")
        .unwrap()
        .into_owned();
    assert!(
        si.contains("(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\")"),
        "{si}"
    );
    r.verify(Some(body), &f.keys).unwrap();
}

#[test]
fn missing_headers() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    assert_eq!(
        r.verify(None, &f.keys).unwrap_err(),
        SignatureError::Missing
    );
    r.sign(None, &f.secret);
    r.remove("signature");
    assert_eq!(
        r.verify(None, &f.keys).unwrap_err(),
        SignatureError::Missing
    );
    let e = SignatureError::Missing;
    assert_eq!((e.code(), e.status()), ("signature_missing", 401));
}

#[test]
fn stale_future_and_expired_signatures() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    let mut o = SignOptions::new("k1", &f.secret, NOW - std::time::Duration::from_secs(301));
    r.sign_with(None, &o);
    let e = r.verify(None, &f.keys).unwrap_err();
    assert!(matches!(e, SignatureError::Stale { .. }), "{e:?}");
    assert_eq!((e.code(), e.status()), ("signature_stale", 401));

    o.created = NOW - std::time::Duration::from_secs(300);
    r.sign_with(None, &o);
    r.verify(None, &f.keys).unwrap();

    o.created = NOW + std::time::Duration::from_secs(6);
    r.sign_with(None, &o);
    let e = r.verify(None, &f.keys).unwrap_err();
    assert!(e.to_string().contains("future"), "{e}");

    o.created = NOW + std::time::Duration::from_secs(5);
    r.sign_with(None, &o);
    r.verify(None, &f.keys).unwrap();

    o.created = NOW - std::time::Duration::from_secs(10);
    o.expires = Some(NOW - std::time::Duration::from_secs(1));
    r.sign_with(None, &o);
    let e = r.verify(None, &f.keys).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");

    // expires bounds the age-out time.
    o.expires = Some(NOW + std::time::Duration::from_secs(20));
    r.sign_with(None, &o);
    assert_eq!(
        r.verify(None, &f.keys).unwrap().age_out,
        NOW + std::time::Duration::from_secs(20)
    );
}

#[test]
fn key_refusals() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    for (id, want) in [
        ("nope", Some(SignatureError::KeyUnknown)),
        ("k-revoked", Some(SignatureError::KeyRevoked)),
        ("k-expired", Some(SignatureError::KeyExpired)),
        ("k-future", Some(SignatureError::KeyExpired)),
        ("k-retiring", None),
    ] {
        r.sign_with(None, &SignOptions::new(id, &f.secret, NOW));
        match want {
            Some(e) => assert_eq!(r.verify(None, &f.keys).unwrap_err(), e, "{id}"),
            None => assert_eq!(r.verify(None, &f.keys).unwrap().key_id(), id),
        }
    }
    assert_eq!(SignatureError::KeyUnknown.code(), "key_unknown");
    assert_eq!(SignatureError::KeyRevoked.code(), "key_revoked");
    assert_eq!(SignatureError::KeyExpired.code(), "key_expired");
}

#[test]
fn tampering_is_refused() {
    let f = fixture();
    let body = b"{\"beat\":1}".to_vec();
    let mut base = Req::post("/agent/v1/heartbeat");
    base.query = Some("x=1".into());
    base.sign(Some(&body), &f.secret);
    base.verify(Some(&body), &f.keys).unwrap();

    let mut r = Req {
        method: "PUT".into(),
        ..clone(&base)
    };
    assert_eq!(
        r.verify(Some(&body), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    r = Req {
        path: "/agent/v1/heartbeats".into(),
        ..clone(&base)
    };
    assert_eq!(
        r.verify(Some(&body), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    r = Req {
        authority: "evil.zen.local".into(),
        ..clone(&base)
    };
    assert_eq!(
        r.verify(Some(&body), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    r = Req {
        query: Some("x=2".into()),
        ..clone(&base)
    };
    assert_eq!(
        r.verify(Some(&body), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    // Body changed, digest header kept: the digest no longer matches.
    assert_eq!(
        base.verify(Some(b"{\"beat\":2}"), &f.keys).unwrap_err(),
        SignatureError::DigestMismatch
    );
    assert_eq!(SignatureError::DigestMismatch.code(), "digest_mismatch");
    // Body and digest header both changed: the signature no longer matches.
    r = clone(&base);
    r.set(
        "content-digest",
        &content_digest(DigestAlg::Sha256, b"{\"beat\":2}"),
    );
    assert_eq!(
        r.verify(Some(b"{\"beat\":2}"), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    // Authority case is normalised for @authority (DESIGN §3: lowercased).
    r = Req {
        authority: "API.zen.local".into(),
        ..clone(&base)
    };
    r.verify(Some(&body), &f.keys).unwrap();
    // A different secret under the same key id.
    let mut other = clone(&base);
    other.sign(Some(&body), &Secret::generate());
    assert_eq!(
        other.verify(Some(&body), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    assert_eq!(SignatureError::Invalid.code(), "signature_invalid");
}

fn clone(r: &Req) -> Req {
    Req {
        method: r.method.clone(),
        authority: r.authority.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
    }
}

#[test]
fn nonce_rules_and_replay() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    r.craft(
        r#"("@method" "@authority" "@path");created=1800000000;keyid="k1""#,
        &f.secret,
    );
    malformed_containing(r.verify(None, &f.keys), "nonce");
    let relaxed = VerifyPolicy {
        require_nonce: false,
        ..VerifyPolicy::default()
    };
    let v = verify(&relaxed, &r.parts(), None, &f.keys, NOW).unwrap();
    assert_eq!(v.nonce, None);
    // Without a nonce, the signature itself is what a replay is recognised by: the same bytes
    // are refused, another signature under the same key is not.
    let cache = ReplayCache::new(16);
    cache
        .insert_token(v.key_id(), v.replay_token(), v.age_out, NOW)
        .unwrap();
    let again = verify(&relaxed, &r.parts(), None, &f.keys, NOW).unwrap();
    assert_eq!(
        cache.insert_token(again.key_id(), again.replay_token(), again.age_out, NOW),
        Err(ReplayError::Replay)
    );
    let mut other = Req::get("/y", None);
    other.craft(
        r#"("@method" "@authority" "@path");created=1800000000;keyid="k1""#,
        &f.secret,
    );
    let v2 = verify(&relaxed, &other.parts(), None, &f.keys, NOW).unwrap();
    assert_eq!(v2.nonce, None);
    cache
        .insert_token(v2.key_id(), v2.replay_token(), v2.age_out, NOW)
        .unwrap();

    r.sign_with(
        None,
        &SignOptions {
            nonce: Some("n-1".into()),
            ..SignOptions::new("k1", &f.secret, NOW)
        },
    );
    let cache = ReplayCache::new(16);
    let v = r.verify(None, &f.keys).unwrap();
    assert_eq!(v.replay_token(), ReplayToken::Nonce("n-1"));
    cache
        .insert_token(v.key_id(), v.replay_token(), v.age_out, NOW)
        .unwrap();
    let v = r.verify(None, &f.keys).unwrap();
    assert_eq!(
        cache.insert_token(v.key_id(), v.replay_token(), v.age_out, NOW),
        Err(ReplayError::Replay)
    );
}

#[test]
fn alg_parameter() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    let p = r#"("@method" "@authority" "@path");created=1800000000;keyid="k1";nonce="n";alg="#;
    r.craft(&format!("{p}\"hmac-sha256\""), &f.secret);
    r.verify(None, &f.keys).unwrap();
    r.craft(&format!("{p}\"hmac-sha512\""), &f.secret);
    malformed_containing(r.verify(None, &f.keys), "alg");
    r.craft(&format!("{p}\"ed25519\""), &f.secret);
    malformed_containing(r.verify(None, &f.keys), "alg");
}

#[test]
fn malformed_signature_headers() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    r.sign(None, &f.secret);
    for bad in [
        "",
        "sig1",
        "sig1=",
        "sig1=(\"@method\"",
        "sig1=\"x\"",
        "(\"@method\")",
        "sig1=(@method)",
    ] {
        r.set("signature-input", bad);
        let e = r.verify(None, &f.keys).unwrap_err();
        assert!(
            matches!(e, SignatureError::Malformed { .. }),
            "{bad:?}: {e:?}"
        );
        assert_eq!(e.status(), 400);
    }
    r.sign(None, &f.secret);
    let good_sig = r
        .parts()
        .headers
        .combined("signature")
        .unwrap()
        .into_owned();
    r.set("signature", "other=:AAAA:");
    malformed_containing(r.verify(None, &f.keys), "no member sig1");
    r.set("signature", "sig1=\"AAAA\"");
    malformed_containing(r.verify(None, &f.keys), "byte sequence");
    // Wrong length: cannot be an hmac-sha256 output.
    r.set("signature", "sig1=:AAAA:");
    assert_eq!(
        r.verify(None, &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    r.set("signature", &good_sig);
    r.verify(None, &f.keys).unwrap();
    // Missing required parameters.
    r.craft(
        r#"("@method" "@authority" "@path");keyid="k1";nonce="n""#,
        &f.secret,
    );
    malformed_containing(r.verify(None, &f.keys), "created");
    r.craft(
        r#"("@method" "@authority" "@path");created=1800000000;nonce="n""#,
        &f.secret,
    );
    malformed_containing(r.verify(None, &f.keys), "keyid");
    r.craft(
        r#"("@method" "@authority" "@path");created="1800000000";keyid="k1";nonce="n""#,
        &f.secret,
    );
    malformed_containing(r.verify(None, &f.keys), "integer");
}

#[test]
fn components_that_cannot_be_rebuilt() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    let tail = r#";created=1800000000;keyid="k1";nonce="n""#;
    for (extra, needle) in [
        ("\"@status\"", "@status"),
        ("\"@request-response\"", "@request-response"),
        ("\"@signature-params\"", "@signature-params"),
        ("\"@bogus\"", "@bogus"),
        ("\"@method\";req", "req"),
        ("\"@path\";x=1", "unsupported parameter"),
        ("\"@query-param\"", "name parameter"),
        ("\"x-absent\"", "no such header"),
        ("\"host\";bs", "bs"),
        ("\"host\";tr", "tr"),
        ("\"host\";req", "req"),
        ("\"host\";sf", "type is unknown"),
        ("\"host\";key=\"a\"", "type is unknown"),
        ("\"Host\"", "lowercase"),
        ("\"bad header\"", "field name"),
        ("host", "must be strings"),
    ] {
        let inner = format!("(\"@method\" \"@authority\" \"@path\" {extra}){tail}");
        r.set("signature-input", &format!("sig1={inner}"));
        r.set(
            "signature",
            "sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
        );
        malformed_containing(r.verify(None, &f.keys), needle);
        // The signer refuses the same inputs (where the name is plain).
        if !extra.contains(';') && extra.starts_with('"') && extra != "\"Host\"" {
            let name = extra.trim_matches('"').to_owned();
            let o = SignOptions {
                covered: CoverSet::Custom(vec![
                    "@method".into(),
                    "@authority".into(),
                    "@path".into(),
                    name,
                ]),
                ..SignOptions::new("k1", &f.secret, NOW)
            };
            assert!(sign(&r.parts(), None, &o).is_err(), "{extra}");
        }
    }
}

#[test]
fn coverage_rules() {
    let f = fixture();
    let tail = r#";created=1800000000;keyid="k1";nonce="n""#;
    let mut r = Req::get("/x", None);
    for (list, needle) in [
        (r#"("@authority" "@path")"#, "@method"),
        (r#"("@method" "@path")"#, "@target-uri"),
        (r#"("@method" "@authority")"#, "@target-uri"),
        (r#"("@method" "@authority" "@path" "@method")"#, "twice"),
    ] {
        r.craft(&format!("{list}{tail}"), &f.secret);
        malformed_containing(r.verify(None, &f.keys), needle);
    }
    // @target-uri alone covers the target; so does @authority + @request-target.
    for list in [
        r#"("@method" "@target-uri")"#,
        r#"("@method" "@authority" "@request-target")"#,
    ] {
        r.craft(&format!("{list}{tail}"), &f.secret);
        r.verify(None, &f.keys).unwrap();
    }
    // With a query, @path alone is not enough.
    let mut q = Req::get("/x", Some("a=1"));
    q.craft(
        &format!(r#"("@method" "@authority" "@path"){tail}"#),
        &f.secret,
    );
    malformed_containing(q.verify(None, &f.keys), "@query");
    q.craft(
        &format!(r#"("@method" "@authority" "@path" "@query"){tail}"#),
        &f.secret,
    );
    q.verify(None, &f.keys).unwrap();
    q.craft(&format!(r#"("@method" "@target-uri"){tail}"#), &f.secret);
    q.verify(None, &f.keys).unwrap();
    // A body requires a covered content-digest, and the header must exist.
    let mut p = Req::post("/x");
    p.craft(
        &format!(r#"("@method" "@authority" "@path"){tail}"#),
        &f.secret,
    );
    malformed_containing(p.verify(Some(b"x"), &f.keys), "content-digest");
    p.verify(Some(b""), &f.keys).unwrap();
    p.verify(None, &f.keys).unwrap();
    p.set("content-digest", &content_digest(DigestAlg::Sha256, b"x"));
    p.craft(
        &format!(r#"("@method" "@authority" "@path" "content-digest"){tail}"#),
        &f.secret,
    );
    p.verify(Some(b"x"), &f.keys).unwrap();
    p.remove("content-digest");
    malformed_containing(p.verify(Some(b"x"), &f.keys), "content-digest");
    // Covered content-digest with no body is checked against the empty body.
    p.set("content-digest", &content_digest(DigestAlg::Sha256, b"x"));
    assert_eq!(
        p.verify(None, &f.keys).unwrap_err(),
        SignatureError::DigestMismatch
    );
    // Only unknown digest algorithms: we cannot check it.
    p.set("content-digest", "md5=:AAAA:");
    p.craft(
        &format!(r#"("@method" "@authority" "@path" "content-digest"){tail}"#),
        &f.secret,
    );
    malformed_containing(p.verify(Some(b"x"), &f.keys), "sha-256");
}

#[test]
fn derived_components_and_parameters_verify() {
    let f = fixture();
    let tail = r#";created=1800000000;keyid="k1";nonce="n";future-param="ok""#;
    let mut r = Req::post("/p");
    r.query = Some("var=this%20is%20a%20big%0Avalue&Pet=dog".into());
    r.set(
        "content-digest",
        &format!(
            "{}, {}",
            content_digest(DigestAlg::Sha256, b"b"),
            content_digest(DigestAlg::Sha512, b"b")
        ),
    );
    r.set("x-multi", "a");
    r.headers.push(("x-multi".into(), " b ".into()));
    let list = r#"("@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" "@query" "@query-param";name="var" "@query-param";name="Pet" "content-digest" "content-digest";sf "content-digest";key="sha-512" "x-multi")"#;
    r.craft(&format!("{list}{tail}"), &f.secret);
    r.verify(Some(b"b"), &f.keys).unwrap();
    let base = signature_base(&r.parts(), &format!("{list}{tail}")).unwrap();
    assert!(
        base.contains(
            "\"@target-uri\": https://api.zen.local/p?var=this%20is%20a%20big%0Avalue&Pet=dog\n"
        ),
        "{base}"
    );
    assert!(base.contains("\"@scheme\": https\n"));
    assert!(base.contains("\"@request-target\": /p?var="));
    assert!(base.contains("\"@query\": ?var="));
    assert!(base.contains("\"@query-param\";name=\"var\": this%20is%20a%20big%0Avalue\n"));
    assert!(base.contains("\"@query-param\";name=\"Pet\": dog\n"));
    assert!(base.contains("\"x-multi\": a, b\n"));
    assert!(base.contains("\"content-digest\";key=\"sha-512\": :"));
    assert!(base.ends_with(&format!("\"@signature-params\": {list}{tail}")));
    // Changing a covered query parameter breaks the signature.
    r.query = Some("var=this%20is%20a%20big%0Avalue&Pet=cat".into());
    assert_eq!(
        r.verify(Some(b"b"), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    // An unknown signature parameter is signed too.
    r.query = Some("var=this%20is%20a%20big%0Avalue&Pet=dog".into());
    r.verify(Some(b"b"), &f.keys).unwrap();
    r.set(
        "signature-input",
        &format!("sig1={list}{}", tail.replace("\"ok\"", "\"changed\"")),
    );
    assert_eq!(
        r.verify(Some(b"b"), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
}

#[test]
fn first_label_is_verified() {
    let f = fixture();
    let mut r = Req::get("/x", None);
    r.sign(None, &f.secret);
    let si = r
        .parts()
        .headers
        .combined("signature-input")
        .unwrap()
        .into_owned();
    let sg = r
        .parts()
        .headers
        .combined("signature")
        .unwrap()
        .into_owned();
    r.set(
        "signature-input",
        &format!("{si}, other=(\"@method\");created=1"),
    );
    r.set("signature", &format!("other=:AAAA:, {sg}"));
    r.verify(None, &f.keys).unwrap();
    r.set(
        "signature-input",
        &format!("other=(\"@method\");created=1, {si}"),
    );
    assert!(r.verify(None, &f.keys).is_err());
}

#[test]
fn signer_options() {
    let f = fixture();
    let mut r = Req::post("/x");
    r.query = Some("q=1".into());
    r.set("x-tenant", "t1");
    let o = SignOptions {
        covered: CoverSet::TargetUri,
        digest: DigestAlg::Sha512,
        extra_headers: vec!["X-Tenant".into()],
        expires: Some(NOW + std::time::Duration::from_secs(60)),
        ..SignOptions::new("k1", &f.secret, NOW)
    };
    r.sign_with(Some(b"body"), &o);
    let si = r
        .parts()
        .headers
        .combined("signature-input")
        .unwrap()
        .into_owned();
    assert!(si.starts_with("sig1=(\"@method\" \"@target-uri\" \"content-digest\" \"x-tenant\");created=1800000000;expires=1800000060;keyid=\"k1\";nonce="), "{si}");
    assert!(r
        .parts()
        .headers
        .combined("content-digest")
        .unwrap()
        .starts_with("sha-512=:"));
    let v = r.verify(Some(b"body"), &f.keys).unwrap();
    assert_eq!(v.age_out, NOW + std::time::Duration::from_secs(60));
    r.set("x-tenant", "t2");
    assert_eq!(
        r.verify(Some(b"body"), &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
    // Extra header absent: signing fails instead of silently skipping it.
    r.remove("x-tenant");
    assert!(sign(&r.parts(), Some(b"body"), &o).is_err());
    // Nonces are fresh per signature.
    let a = sign(&r.parts(), None, &SignOptions::new("k1", &f.secret, NOW)).unwrap();
    let b = sign(&r.parts(), None, &SignOptions::new("k1", &f.secret, NOW)).unwrap();
    assert_ne!(a.signature_input, b.signature_input);
    assert_eq!(a.pairs().len(), 2);
}

#[test]
fn http_header_map_works_end_to_end() {
    let f = fixture();
    let mut h = http::HeaderMap::new();
    h.insert("host", "api.zen.local".parse().unwrap());
    let parts = RequestParts {
        method: "GET",
        authority: "api.zen.local",
        path: "/a",
        query: None,
        headers: &h,
    };
    let s = sign(&parts, None, &SignOptions::new("k1", &f.secret, NOW)).unwrap();
    let mut signed = h.clone();
    signed.insert("signature-input", s.signature_input.parse().unwrap());
    signed.insert("signature", s.signature.parse().unwrap());
    let parts = RequestParts {
        headers: &signed,
        ..parts
    };
    verify(&VerifyPolicy::default(), &parts, None, &f.keys, NOW).unwrap();
}

/// The verifier reuses a per-thread base buffer and inline component/parameter storage: a
/// large base, then small ones, then more components than fit inline, must each verify on
/// their own content only.
#[test]
fn reused_buffers_do_not_leak_between_requests() {
    let f = fixture();
    let big_value = "v".repeat(40 * 1024);
    let mut big = Req::get("/big", None);
    big.set("x-big", &big_value);
    big.sign_with(
        None,
        &SignOptions {
            extra_headers: vec!["x-big".into()],
            ..SignOptions::new("k1", &f.secret, NOW)
        },
    );
    let mut small = Req::get("/small", None);
    small.sign(None, &f.secret);
    let mut tampered = clone(&small);
    tampered.path = "/smalL".into();
    let many: Vec<String> = (0..12).map(|i| format!("x-h{i}")).collect();
    let mut wide = Req::get("/wide", Some("a=1"));
    for h in &many {
        wide.set(h, h);
    }
    wide.sign_with(
        None,
        &SignOptions {
            extra_headers: many.clone(),
            covered: CoverSet::TargetUri,
            ..SignOptions::new("k1", &f.secret, NOW)
        },
    );
    for _ in 0..3 {
        assert!(big.verify(None, &f.keys).is_ok());
        assert!(small.verify(None, &f.keys).is_ok());
        assert_eq!(
            tampered.verify(None, &f.keys).unwrap_err(),
            SignatureError::Invalid
        );
        assert!(wide.verify(None, &f.keys).is_ok());
    }
    let mut wide_changed = clone(&wide);
    wide_changed.set("x-h11", "other");
    assert_eq!(
        wide_changed.verify(None, &f.keys).unwrap_err(),
        SignatureError::Invalid
    );
}

/// A covered field whose bytes are not UTF-8 cannot be part of a signature base: decoded
/// lossily, 0xFF and U+FFFD would sign alike, and the bytes forwarded would not be the ones
/// signed. It is a 400, with the reason, never a verification over substituted text.
#[test]
fn a_covered_field_that_is_not_utf8_is_malformed() {
    let f = fixture();
    let inner =
        r#"("@method" "@authority" "@path" "x-bin");created=1800000000;keyid="k1";nonce="n""#;
    let mut h = http::HeaderMap::new();
    h.insert("host", "api.zen.local".parse().unwrap());
    h.insert("x-bin", http::HeaderValue::from_bytes(b"a\xffb").unwrap());
    h.insert("signature-input", format!("sig1={inner}").parse().unwrap());
    h.insert(
        "signature",
        "sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:"
            .parse()
            .unwrap(),
    );
    let verify_with = |h: &http::HeaderMap| {
        let p = RequestParts {
            method: "GET",
            authority: "api.zen.local",
            path: "/x",
            query: None,
            headers: h,
        };
        verify(&VerifyPolicy::default(), &p, None, &f.keys, NOW)
    };
    malformed_containing(verify_with(&h), "\"x-bin\": its value is not UTF-8");
    // The signature fields themselves: malformed too, not "missing".
    h.insert(
        "signature-input",
        http::HeaderValue::from_bytes(b"sig1=(\"@method\")\xfe").unwrap(),
    );
    malformed_containing(verify_with(&h), "signature-input: its value is not UTF-8");
}

#[test]
fn a_covered_field_that_would_not_reach_the_upstream_is_malformed() {
    let f = fixture();
    let mut r = covering("x-tenant", "t1", &f.secret);
    r.verify(None, &f.keys)
        .expect("signed x-tenant, no Connection");
    // A Connection field naming it (in any case, among other tokens) makes it hop-by-hop: the
    // proxy removes it, so the upstream would act without what was signed.
    for connection in ["X-Tenant", "keep-alive, x-tenant", " close ,X-TENANT "] {
        r.set("connection", connection);
        malformed_containing(
            r.verify(None, &f.keys),
            "covered field \"x-tenant\" is named by the Connection header",
        );
    }
    // Naming other fields is fine.
    r.set("connection", "keep-alive, x-tenantx");
    r.verify(None, &f.keys)
        .expect("Connection names another field");
    // The fixed hop-by-hop fields and the ones the proxy sets itself, with or without Connection.
    r.remove("connection");
    for field in [
        "te",
        "transfer-encoding",
        "upgrade",
        "keep-alive",
        "connection",
        "x-zen-tenant",
        "x-forwarded-client-cert",
        "expect",
    ] {
        malformed_containing(
            covering(field, "v", &f.secret).verify(None, &f.keys),
            &format!("covered field \"{field}\" is hop-by-hop or set by the proxy"),
        );
    }
}

#[test]
fn a_connection_line_that_is_not_utf8_cannot_hide_the_others() {
    // `Connection: x-tenant` and `Connection: \xff`: the forwarder reads the first line and drops
    // x-tenant, so the verifier may not read the field as absent.
    let f = fixture();
    let r = covering("x-tenant", "t1", &f.secret);
    let mut h = r.header_map();
    r.verify_headers(&h, &f.keys)
        .expect("signed, without Connection");
    h.append("connection", "x-tenant".parse().unwrap());
    h.append(
        "connection",
        http::HeaderValue::from_bytes(b"\xff").unwrap(),
    );
    malformed_containing(
        r.verify_headers(&h, &f.keys),
        "Connection: its value is not UTF-8 text",
    );
}

#[test]
fn a_covered_cookie_on_several_lines_is_malformed() {
    // "s=1, t=2" signed on one line (one cookie to the upstream) would verify the two lines
    // "s=1" and "t=2" too, forwarded as "s=1; t=2" (two cookies). One line is fine.
    let f = fixture();
    let r = covering("cookie", "s=1, t=2", &f.secret);
    let mut h = r.header_map();
    r.verify_headers(&h, &f.keys).expect("one cookie line");
    h.insert("cookie", "s=1".parse().unwrap());
    h.append("cookie", "t=2".parse().unwrap());
    malformed_containing(
        r.verify_headers(&h, &f.keys),
        "covered field \"cookie\" is on more than one line",
    );
}
