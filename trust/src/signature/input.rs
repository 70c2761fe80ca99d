//! Parsing `Signature-Input` and `Signature` (RFC 9421 §4) with `sfv`.

use sfv::{BareItem, Dictionary, InnerList, Key, ListEntry, Parser};

use super::SignatureError;

/// Upper bound on covered components; keeps duplicate detection trivially cheap.
pub(crate) const MAX_COMPONENTS: usize = 32;

/// The signature parameters this profile reads. Unknown parameters are
/// ignored here (RFC 9421 §2.3) but stay in `@signature-params`, so they are
/// signed.
#[derive(Debug, Default)]
pub(crate) struct SigParams<'a> {
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub keyid: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub alg: Option<&'a str>,
}

fn malformed(detail: String) -> SignatureError {
    SignatureError::Malformed { detail }
}

/// The first member of `Signature-Input`: its label and inner list.
pub(crate) fn parse_signature_input(value: &str) -> Result<(Key, InnerList), SignatureError> {
    let dict: Dictionary = Parser::new(value).parse().map_err(|e| {
        malformed(format!(
            "Signature-Input is not a structured-field dictionary: {e}"
        ))
    })?;
    let (label, entry) = dict
        .into_iter()
        .next()
        .ok_or_else(|| malformed("Signature-Input has no members".into()))?;
    match entry {
        ListEntry::InnerList(list) => {
            if list.items.len() > MAX_COMPONENTS {
                return Err(malformed(format!(
                    "Signature-Input {label} covers more than {MAX_COMPONENTS} components"
                )));
            }
            Ok((label, list))
        }
        ListEntry::Item(_) => Err(malformed(format!(
            "Signature-Input member {label} is not an inner list"
        ))),
    }
}

/// The signature bytes `Signature` carries under `label`.
pub(crate) fn parse_signature(value: &str, label: &str) -> Result<Vec<u8>, SignatureError> {
    let dict: Dictionary = Parser::new(value).parse().map_err(|e| {
        malformed(format!(
            "Signature is not a structured-field dictionary: {e}"
        ))
    })?;
    let entry = dict
        .into_iter()
        .find(|(k, _)| k.as_str() == label)
        .map(|(_, v)| v)
        .ok_or_else(|| malformed(format!("Signature has no member {label}")))?;
    match entry {
        ListEntry::Item(item) => match item.bare_item {
            BareItem::ByteSequence(bytes) => Ok(bytes),
            _ => Err(malformed(format!(
                "Signature member {label} is not a byte sequence"
            ))),
        },
        ListEntry::InnerList(_) => Err(malformed(format!(
            "Signature member {label} is not a byte sequence"
        ))),
    }
}

pub(crate) fn parse_params(list: &InnerList) -> Result<SigParams<'_>, SignatureError> {
    let mut p = SigParams::default();
    for (key, value) in &list.params {
        let name = key.as_str();
        match name {
            "created" | "expires" => {
                let BareItem::Integer(i) = value else {
                    return Err(malformed(format!(
                        "signature parameter {name} must be an integer"
                    )));
                };
                let v = i64::from(*i);
                if name == "created" {
                    p.created = Some(v);
                } else {
                    p.expires = Some(v);
                }
            }
            "keyid" | "nonce" | "alg" | "tag" => {
                let BareItem::String(s) = value else {
                    return Err(malformed(format!(
                        "signature parameter {name} must be a string"
                    )));
                };
                match name {
                    "keyid" => p.keyid = Some(s.as_str()),
                    "nonce" => p.nonce = Some(s.as_str()),
                    "alg" => p.alg = Some(s.as_str()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_member_wins() {
        let (label, list) =
            parse_signature_input("a=(\"@method\");created=1, b=(\"@path\")").unwrap();
        assert_eq!(label.as_str(), "a");
        assert_eq!(list.items.len(), 1);
    }

    #[test]
    fn bad_inputs_are_malformed() {
        for bad in [
            "",
            "a",
            "a=1",
            "a=(\"x\"",
            "(\"@method\")",
            "a=(\"@method\")garbage",
        ] {
            assert!(
                matches!(
                    parse_signature_input(bad),
                    Err(SignatureError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(parse_signature("a=:AAAA:", "b").is_err());
        assert!(parse_signature("a=\"AAAA\"", "a").is_err());
        assert_eq!(parse_signature("a=:AAAA:", "a").unwrap(), vec![0, 0, 0]);
    }

    #[test]
    fn params_are_typed() {
        let (_, l) = parse_signature_input("s=();created=\"1\"").unwrap();
        assert!(parse_params(&l).is_err());
        let (_, l) = parse_signature_input("s=();keyid=k").unwrap();
        assert!(parse_params(&l).is_err());
        let (_, l) = parse_signature_input(
            "s=();created=1;expires=2;keyid=\"k\";nonce=\"n\";alg=\"hmac-sha256\";x=?1",
        )
        .unwrap();
        let p = parse_params(&l).unwrap();
        assert_eq!((p.created, p.expires), (Some(1), Some(2)));
        assert_eq!(
            (p.keyid, p.nonce, p.alg),
            (Some("k"), Some("n"), Some("hmac-sha256"))
        );
    }
}
