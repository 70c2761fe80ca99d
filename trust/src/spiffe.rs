//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`) per the SPIFFE ID spec.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";
/// The spec's interoperability limit for the whole URI.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The spec's limit for the trust domain name.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID: one variant per rule of the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with \"spiffe://\" (lowercase scheme)")]
    WrongScheme,
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} characters")]
    TrustDomainTooLong,
    #[error("trust domain must not carry userinfo ('@')")]
    UserInfo,
    #[error("trust domain must not carry a port (':')")]
    Port,
    #[error(
        "trust domain contains {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    #[error("SPIFFE ID must not contain a query ('?')")]
    Query,
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    Fragment,
    #[error("SPIFFE ID must not contain percent-encoding ('%')")]
    PercentEncoded,
    #[error("path has an empty segment ('//')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path must not end with '/'")]
    TrailingSlash,
    #[error("path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar(char),
}

/// A validated SPIFFE ID. Cheap accessors slice the stored string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (== len when the path is empty).
    path_start: usize,
}

/// A validated trust domain name (no scheme), e.g. `zen.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    for (i, b) in td.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b'@' => return Err(SpiffeIdError::UserInfo),
            b':' => return Err(SpiffeIdError::Port),
            b'?' => return Err(SpiffeIdError::Query),
            b'#' => return Err(SpiffeIdError::Fragment),
            b'%' => return Err(SpiffeIdError::PercentEncoded),
            _ => return Err(SpiffeIdError::BadTrustDomainChar(char_at(td, i))),
        }
    }
    Ok(())
}

/// The character starting at byte `i` (for error messages only).
fn char_at(s: &str, i: usize) -> char {
    s.get(i..)
        .and_then(|rest| rest.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// `path` is empty or starts with '/'. One pass over the bytes.
fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    let bytes = path.as_bytes();
    let mut seg_start = 1;
    for i in 1..=bytes.len() {
        match bytes.get(i) {
            None | Some(b'/') => {
                let seg = bytes.get(seg_start..i).unwrap_or_default();
                if seg.is_empty() {
                    return Err(if i == bytes.len() {
                        SpiffeIdError::TrailingSlash
                    } else {
                        SpiffeIdError::EmptySegment
                    });
                }
                if seg == b"." || seg == b".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                seg_start = i + 1;
            }
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_') => {}
            Some(b'?') => return Err(SpiffeIdError::Query),
            Some(b'#') => return Err(SpiffeIdError::Fragment),
            Some(b'%') => return Err(SpiffeIdError::PercentEncoded),
            Some(_) => return Err(SpiffeIdError::BadPathChar(char_at(path, i))),
        }
    }
    Ok(())
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        check_trust_domain(td)?;
        check_path(path)?;
        Ok(SpiffeId {
            uri: s.to_owned(),
            path_start: SCHEME.len() + td_len,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain name, without scheme.
    pub fn trust_domain(&self) -> &str {
        self.uri.get(SCHEME.len()..self.path_start).unwrap_or("")
    }

    /// The path: empty, or starting with '/'.
    pub fn path(&self) -> &str {
        self.uri.get(self.path_start..).unwrap_or("")
    }

    /// The path segments, without slashes.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// True when this ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain() == td.as_str()
    }
}

impl TrustDomain {
    /// Accepts a bare name (`zen.local`) or a SPIFFE ID (`spiffe://zen.local[/...]`),
    /// from which the trust domain is taken.
    pub fn parse(s: &str) -> Result<TrustDomain, SpiffeIdError> {
        if s.starts_with(SCHEME) {
            let id = SpiffeId::parse(s)?;
            return Ok(TrustDomain(id.trust_domain().to_owned()));
        }
        check_trust_domain(s)?;
        Ok(TrustDomain(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<td>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME}{}", self.0),
            path_start: SCHEME.len() + self.0.len(),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TrustDomain, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::parse(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;

    #[test]
    fn valid_ids_from_the_spec() {
        for (s, td, path) in [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/workload", "example.org", "/workload"),
            (
                "spiffe://staging.example.com/payments/mysql",
                "staging.example.com",
                "/payments/mysql",
            ),
            (
                "spiffe://k8s-west.example.com/ns/staging/sa/default",
                "k8s-west.example.com",
                "/ns/staging/sa/default",
            ),
            (
                "spiffe://trust_domain-1.x/Path.With-Mixed_Case9",
                "trust_domain-1.x",
                "/Path.With-Mixed_Case9",
            ),
            ("spiffe://td/...", "td", "/..."),
            (
                "spiffe://zen.local/cluster/c1/agent/a1",
                "zen.local",
                "/cluster/c1/agent/a1",
            ),
        ] {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            assert_eq!(id.trust_domain(), td);
            assert_eq!(id.path(), path);
        }
    }

    #[test]
    fn invalid_ids_from_the_spec() {
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(2048));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", E::Empty),
            ("http://example.org/x", E::WrongScheme),
            ("SPIFFE://example.org/x", E::WrongScheme),
            ("spiffe:/example.org/x", E::WrongScheme),
            ("example.org/x", E::WrongScheme),
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe:///path", E::MissingTrustDomain),
            ("spiffe://Example.org/x", E::BadTrustDomainChar('E')),
            ("spiffe://exa mple.org", E::BadTrustDomainChar(' ')),
            ("spiffe://exämple.org", E::BadTrustDomainChar('ä')),
            ("spiffe://user@example.org/x", E::UserInfo),
            ("spiffe://example.org:8443/x", E::Port),
            ("spiffe://example.org/x?a=b", E::Query),
            ("spiffe://example.org?a=b", E::Query),
            ("spiffe://example.org/x#frag", E::Fragment),
            ("spiffe://example.org/%41", E::PercentEncoded),
            ("spiffe://example.org/", E::TrailingSlash),
            ("spiffe://example.org/x/", E::TrailingSlash),
            ("spiffe://example.org//x", E::EmptySegment),
            ("spiffe://example.org/x//y", E::EmptySegment),
            ("spiffe://example.org/./x", E::DotSegment),
            ("spiffe://example.org/x/..", E::DotSegment),
            ("spiffe://example.org/x/y z", E::BadPathChar(' ')),
            ("spiffe://example.org/x/y*", E::BadPathChar('*')),
            ("spiffe://example.org/x/ü", E::BadPathChar('ü')),
            (&long_td, E::TrustDomainTooLong),
            (&long_id, E::TooLong),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(s), Err(want), "{s:?}");
        }
    }

    #[test]
    fn segments_and_trust_domain() {
        let id: SpiffeId = "spiffe://zen.local/cluster/c1/agent/a1".parse().unwrap();
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["cluster", "c1", "agent", "a1"]
        );
        let root = SpiffeId::parse("spiffe://zen.local").unwrap();
        assert_eq!(root.segments().count(), 0);
        let td = TrustDomain::parse("zen.local").unwrap();
        assert_eq!(td.id(), root);
        assert!(id.is_member_of(&td));
        assert_eq!(TrustDomain::parse("spiffe://zen.local/x").unwrap(), td);
        assert_eq!(
            TrustDomain::parse("Zen.local"),
            Err(E::BadTrustDomainChar('Z'))
        );
        assert_eq!(TrustDomain::parse(""), Err(E::MissingTrustDomain));
    }

    #[test]
    fn serde_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://zen.local/proxy/p1\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://zen.local/proxy/p1\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://zen.local/\"").is_err());
        assert!(serde_json::from_str::<TrustDomain>("\"a:1\"").is_err());
    }

    #[test]
    fn ordering_and_hash_follow_the_string() {
        let a = SpiffeId::parse("spiffe://a/x").unwrap();
        let b = SpiffeId::parse("spiffe://b/x").unwrap();
        assert!(a < b);
        let set: std::collections::HashSet<_> = [a.clone(), a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 2);
    }
}
