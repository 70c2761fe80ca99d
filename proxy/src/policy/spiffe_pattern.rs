//! SPIFFE ID patterns of a route's auth rule:
//! `spiffe://zen.local/cluster/{cid}/agent/*` — literal segments, `*` = exactly
//! one segment, `**` = one or more remaining segments (last only), `{var}` =
//! one segment equal to the same-named path variable of the request.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    One,
    Rest,
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffePattern {
    source: String,
    trust_domain: String,
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("must start with spiffe://")]
    Scheme,
    #[error("trust domain must be a literal lowercase name (no wildcards)")]
    TrustDomain,
    #[error("empty, '.' or '..' path segment")]
    BadSegment,
    #[error("'**' may only be the last segment")]
    RestNotLast,
    #[error("a segment mixes a wildcard or variable with other text: {0:?}")]
    MixedSegment(String),
}

impl SpiffePattern {
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let rest = s.strip_prefix("spiffe://").ok_or(PatternError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !td_ok {
            return Err(PatternError::TrustDomain);
        }
        let mut segs = Vec::new();
        if !path.is_empty() {
            let parts: Vec<&str> = path[1..].split('/').collect();
            for (i, p) in parts.iter().enumerate() {
                let seg = match *p {
                    "" | "." | ".." => return Err(PatternError::BadSegment),
                    "*" => Seg::One,
                    "**" if i + 1 == parts.len() => Seg::Rest,
                    "**" => return Err(PatternError::RestNotLast),
                    v if v.starts_with('{') && v.ends_with('}') && v.len() > 2 => {
                        let name = &v[1..v.len() - 1];
                        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                            return Err(PatternError::MixedSegment(v.into()));
                        }
                        Seg::Var(name.into())
                    }
                    v if v.contains(['*', '{', '}']) => {
                        return Err(PatternError::MixedSegment(v.into()))
                    }
                    v => Seg::Literal(v.into()),
                };
                segs.push(seg);
            }
        }
        Ok(SpiffePattern {
            source: s.into(),
            trust_domain: td.into(),
            segs,
        })
    }

    /// Names of the path variables this pattern binds to.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Var(v) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Does the (already validated) SPIFFE ID match, with `{var}` taken from
    /// the request's path variables? A variable missing from `vars` never
    /// matches (fail closed).
    pub fn matches(&self, spiffe_id: &str, vars: &[(&str, &str)]) -> bool {
        let Some(rest) = spiffe_id.strip_prefix("spiffe://") else {
            return false;
        };
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if td != self.trust_domain {
            return false;
        }
        let mut id_segs = path
            .split('/')
            .filter(|s| !path.is_empty() || !s.is_empty());
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Rest => {
                    debug_assert_eq!(i + 1, self.segs.len());
                    return id_segs.next().is_some();
                }
                Seg::One => {
                    if id_segs.next().is_none() {
                        return false;
                    }
                }
                Seg::Literal(l) => {
                    if id_segs.next() != Some(l.as_str()) {
                        return false;
                    }
                }
                Seg::Var(name) => {
                    let Some(value) = vars.iter().find(|(n, _)| n == name).map(|(_, v)| *v) else {
                        return false;
                    };
                    if id_segs.next() != Some(value) {
                        return false;
                    }
                }
            }
        }
        id_segs.next().is_none()
    }
}

impl fmt::Display for SpiffePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SpiffePattern {
        SpiffePattern::parse(s).unwrap()
    }

    #[test]
    fn exact() {
        let pat = p("spiffe://zen.local/proxy/edge");
        assert!(pat.matches("spiffe://zen.local/proxy/edge", &[]));
        assert!(!pat.matches("spiffe://zen.local/proxy/edge/x", &[]));
        assert!(!pat.matches("spiffe://zen.local/proxy", &[]));
        assert!(!pat.matches("spiffe://other.local/proxy/edge", &[]));
    }

    #[test]
    fn one_and_rest() {
        let one = p("spiffe://zen.local/cluster/*/agent/*");
        assert!(one.matches("spiffe://zen.local/cluster/c1/agent/a1", &[]));
        assert!(!one.matches("spiffe://zen.local/cluster/c1/agent/a1/x", &[]));
        assert!(!one.matches("spiffe://zen.local/cluster/c1/agent", &[]));
        let rest = p("spiffe://zen.local/cluster/**");
        assert!(rest.matches("spiffe://zen.local/cluster/c1", &[]));
        assert!(rest.matches("spiffe://zen.local/cluster/c1/agent/a", &[]));
        assert!(!rest.matches("spiffe://zen.local/cluster", &[]));
        assert!(!rest.matches("spiffe://zen.local/clusterx/c1", &[]));
    }

    #[test]
    fn var_binds_to_path_variable() {
        let pat = p("spiffe://zen.local/cluster/{cid}/agent/*");
        assert!(pat.matches("spiffe://zen.local/cluster/c1/agent/a", &[("cid", "c1")]));
        assert!(!pat.matches("spiffe://zen.local/cluster/c1/agent/a", &[("cid", "c2")]));
        // A pattern variable the route does not bind never matches.
        assert!(!pat.matches("spiffe://zen.local/cluster/c1/agent/a", &[]));
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(
            SpiffePattern::parse("http://x/y"),
            Err(PatternError::Scheme)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://*/y"),
            Err(PatternError::TrustDomain)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://a/**/b"),
            Err(PatternError::RestNotLast)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://a//b"),
            Err(PatternError::BadSegment)
        );
        assert!(matches!(
            SpiffePattern::parse("spiffe://a/x*"),
            Err(PatternError::MixedSegment(_))
        ));
    }
}
