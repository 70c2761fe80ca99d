//! RFC 9530 `Content-Digest` (sha-256 and sha-512).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::convert::Infallible;

use sfv::visitor::{DictionaryVisitor, EntryVisitor};
use sfv::{BareItem, Dictionary, KeyRef, ListEntry, Parser};
use sha2::{Digest, Sha256, Sha512};

use super::SignatureError;

/// Digest algorithms this profile accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestAlg {
    #[default]
    Sha256,
    Sha512,
}

impl DigestAlg {
    /// The RFC 9530 algorithm key.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => "sha-256",
            DigestAlg::Sha512 => "sha-512",
        }
    }

    fn from_name(name: &str) -> Option<DigestAlg> {
        match name {
            "sha-256" => Some(DigestAlg::Sha256),
            "sha-512" => Some(DigestAlg::Sha512),
            _ => None,
        }
    }

    fn matches(self, body: &[u8], expected: &[u8]) -> bool {
        match self {
            DigestAlg::Sha256 => Sha256::digest(body).as_slice() == expected,
            DigestAlg::Sha512 => Sha512::digest(body).as_slice() == expected,
        }
    }
}

/// The `Content-Digest` header value for `body`, e.g. `sha-256=:<base64>:`.
pub fn content_digest(alg: DigestAlg, body: &[u8]) -> String {
    let b64 = match alg {
        DigestAlg::Sha256 => STANDARD.encode(Sha256::digest(body)),
        DigestAlg::Sha512 => STANDARD.encode(Sha512::digest(body)),
    };
    format!("{}=:{}:", alg.name(), b64)
}

/// Checks a received `Content-Digest` against the body. Every sha-256 /
/// sha-512 member must match; other algorithms are ignored, and a header
/// with none of ours is malformed (we could not check it).
/// sha-256 or sha-512 listed twice is malformed: RFC 9651 keeps the last
/// member, but a recipient that reads the first would check another digest
/// than the one verified here.
pub(crate) fn check_content_digest(header: &str, body: &[u8]) -> Result<(), SignatureError> {
    let mut members = Members::default();
    Parser::new(header)
        .parse_dictionary_with_visitor(&mut members)
        .map_err(|e| {
            SignatureError::malformed(format!(
                "Content-Digest is not a structured-field dictionary: {e}"
            ))
        })?;
    if let Some(alg) = members.repeated {
        return Err(SignatureError::malformed(format!(
            "Content-Digest lists {} more than once",
            alg.name()
        )));
    }
    let mut checked = false;
    for (key, entry) in &members.dict {
        let Some(alg) = DigestAlg::from_name(key.as_str()) else {
            continue;
        };
        let expected = match entry {
            ListEntry::Item(item) => match &item.bare_item {
                BareItem::ByteSequence(b) => b,
                _ => {
                    return Err(SignatureError::malformed(format!(
                        "Content-Digest member {} is not a byte sequence",
                        alg.name()
                    )))
                }
            },
            ListEntry::InnerList(_) => {
                return Err(SignatureError::malformed(format!(
                    "Content-Digest member {} is not a byte sequence",
                    alg.name()
                )))
            }
        };
        if !alg.matches(body, expected) {
            return Err(SignatureError::DigestMismatch);
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(SignatureError::malformed(
            "Content-Digest has no sha-256 or sha-512 member",
        ))
    }
}

/// The parsed dictionary, and the first of our algorithms seen twice.
#[derive(Default)]
struct Members {
    dict: Dictionary,
    repeated: Option<DigestAlg>,
}

impl<'de> DictionaryVisitor<'de> for Members {
    type Error = Infallible;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Infallible> {
        if self.repeated.is_none() && self.dict.contains_key(key) {
            self.repeated = DigestAlg::from_name(key.as_str());
        }
        <Dictionary as DictionaryVisitor<'de>>::entry(&mut self.dict, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 9530 §2 / Appendix B: the body `{"hello": "world"}`.
    const HELLO: &[u8] = b"{\"hello\": \"world\"}";

    #[test]
    fn rfc9530_examples() {
        assert_eq!(
            content_digest(DigestAlg::Sha256, HELLO),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert_eq!(
            content_digest(DigestAlg::Sha512, HELLO),
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
        );
        check_content_digest(
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            HELLO,
        )
        .unwrap();
        // The RFC's combined example: both algorithms present.
        check_content_digest(
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            HELLO,
        )
        .unwrap();
    }

    #[test]
    fn mismatch_and_malformed() {
        let d = content_digest(DigestAlg::Sha256, b"one");
        assert_eq!(
            check_content_digest(&d, b"two"),
            Err(SignatureError::DigestMismatch)
        );
        // A matching sha-256 does not excuse a wrong sha-512.
        let both = format!("{d}, {}", content_digest(DigestAlg::Sha512, b"two"));
        assert_eq!(
            check_content_digest(&both, b"one"),
            Err(SignatureError::DigestMismatch)
        );
        for bad in [
            "",
            "md5=:AAAA:",
            "sha-256=abc",
            "sha-256=(:AAAA:)",
            "sha-256=:not base64:",
            "::",
        ] {
            assert!(
                matches!(
                    check_content_digest(bad, b"one"),
                    Err(SignatureError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        // Unknown algorithms next to a good one are ignored.
        check_content_digest(&format!("unixsum=:AAAA:, {d}"), b"one").unwrap();
    }

    #[test]
    fn an_algorithm_listed_twice_is_malformed() {
        let good = content_digest(DigestAlg::Sha256, b"one");
        let bad = content_digest(DigestAlg::Sha256, b"two");
        // RFC 9651 alone would keep the last (good) member and pass; a recipient reading the
        // first would see a digest of other content. Two header lines join into this same text.
        for header in [
            format!("{bad}, {good}"),
            format!("{good}, {good}"),
            format!("{good}, unixsum=:AAAA:, {good}"),
        ] {
            match check_content_digest(&header, b"one") {
                Err(SignatureError::Malformed { detail }) => {
                    assert!(detail.contains("lists sha-256 more than once"), "{detail}")
                }
                other => panic!("{header}: {other:?}"),
            }
        }
        // Repeats of algorithms this profile ignores are not ours to judge.
        check_content_digest(&format!("unixsum=:AAAA:, unixsum=:AAAB:, {good}"), b"one").unwrap();
    }
}
