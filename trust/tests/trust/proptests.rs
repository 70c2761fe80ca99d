//! Property tests: sign→verify round trips, and any single-byte change of a
//! covered part is refused.

use proptest::prelude::*;
use zen_trust::signature::{sign, verify, RequestParts, SignOptions, SignatureError, VerifyPolicy};
use zen_trust::{KeySet, KeySetEntry, KeyStatus, Secret, SpiffeId, UnixTime};

const NOW: UnixTime = UnixTime(1_800_000_000);

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

#[derive(Debug, Clone)]
struct Msg {
    method: String,
    authority: String,
    path: String,
    query: Option<String>,
    body: Vec<u8>,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        "[A-Z]{1,10}",
        "[a-z0-9.-]{1,30}(:[0-9]{1,5})?",
        "/[A-Za-z0-9._~%!$&'()*+,;=:@/-]{0,60}",
        proptest::option::of("[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,40}"),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(method, authority, path, query, body)| Msg {
            method,
            authority,
            path,
            query,
            body,
        })
}

struct Signed {
    headers: Vec<(String, String)>,
}

fn sign_msg(m: &Msg, secret: &Secret) -> Signed {
    let empty: Vec<(String, String)> = Vec::new();
    let parts = RequestParts {
        method: &m.method,
        authority: &m.authority,
        path: &m.path,
        query: m.query.as_deref(),
        headers: &empty,
    };
    let h = sign(&parts, Some(&m.body), &SignOptions::new("k1", secret, NOW)).unwrap();
    let mut headers = vec![
        ("signature-input".to_owned(), h.signature_input),
        ("signature".to_owned(), h.signature),
    ];
    if let Some(d) = h.content_digest {
        headers.push(("content-digest".to_owned(), d));
    }
    Signed { headers }
}

fn verify_msg(m: &Msg, s: &Signed, keys: &KeySet) -> Result<(), SignatureError> {
    let parts = RequestParts {
        method: &m.method,
        authority: &m.authority,
        path: &m.path,
        query: m.query.as_deref(),
        headers: &s.headers,
    };
    verify(&VerifyPolicy::default(), &parts, Some(&m.body), keys, NOW).map(|_| ())
}

/// Replaces byte `idx % len` with a different printable ASCII byte.
fn change_byte(s: &str, idx: usize, with: u8) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let mut b = s.as_bytes().to_vec();
    let i = idx % b.len();
    let new = b' ' + 1 + (with % 94); // '!'..='~'
    if b[i] == new {
        return None;
    }
    b[i] = new;
    String::from_utf8(b).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_then_verify_round_trips(m in msg()) {
        let secret = Secret::generate();
        let keys = keys(&secret);
        let s = sign_msg(&m, &secret);
        prop_assert_eq!(verify_msg(&m, &s, &keys), Ok(()));
    }

    #[test]
    fn any_single_byte_change_is_refused(
        m in msg(),
        field in 0usize..5,
        idx in any::<usize>(),
        with in any::<u8>(),
    ) {
        let secret = Secret::generate();
        let keys = keys(&secret);
        let s = sign_msg(&m, &secret);
        let mut t = m.clone();
        match field {
            0 => match change_byte(&m.method, idx, with) {
                Some(v) => t.method = v,
                None => return Ok(()),
            },
            1 => match change_byte(&m.authority, idx, with) {
                // @authority is compared lowercased (DESIGN §3): a case-only
                // change is the same authority.
                Some(v) if !v.eq_ignore_ascii_case(&m.authority) => {
                    t.authority = v
                }
                _ => return Ok(()),
            },
            2 => match change_byte(&m.path, idx, with) {
                Some(v) => t.path = v,
                None => return Ok(()),
            },
            3 => match m.query.as_deref().and_then(|q| change_byte(q, idx, with)) {
                Some(v) => t.query = Some(v),
                None => return Ok(()),
            },
            _ => {
                if m.body.is_empty() {
                    return Ok(());
                }
                let i = idx % m.body.len();
                let new = m.body[i] ^ (with | 1);
                t.body[i] = new;
            }
        }
        let got = verify_msg(&t, &s, &keys);
        let want = if field == 4 { SignatureError::DigestMismatch } else { SignatureError::Invalid };
        prop_assert_eq!(got, Err(want));
    }
}
