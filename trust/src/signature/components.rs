//! Covered components (RFC 9421 §2): parsing identifiers and rebuilding their
//! values from the received request. Anything that cannot be rebuilt
//! correctly is refused as malformed, never skipped.

use std::borrow::Cow;
use std::fmt::Write as _;

use sfv::{BareItemFromInput, Dictionary, ItemSerializer, ListEntry, ListSerializer, Parser};

use super::input::PItem;

use super::{RequestParts, SignatureError};

/// Header fields whose structured type (Dictionary) is known, so `;sf` and
/// `;key` can be applied to them.
const DICTIONARY_FIELDS: &[&str] = &[
    "content-digest",
    "repr-digest",
    "want-content-digest",
    "want-repr-digest",
    "signature",
    "signature-input",
];

/// Derived components of RFC 9421 §2.2 that exist in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derived {
    Method,
    TargetUri,
    Authority,
    Scheme,
    RequestTarget,
    Path,
    Query,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldForm<'a> {
    /// The field value as received.
    Raw,
    /// `;sf`: re-serialised as a structured field.
    Structured,
    /// `;key="k"`: one member of a dictionary field.
    Key(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    Derived(Derived),
    /// `@query-param;name="…"` with the encoded name.
    QueryParam(&'a str),
    Field {
        name: &'a str,
        form: FieldForm<'a>,
    },
}

/// One covered component: its parsed meaning plus the identifier as received
/// (`'de`: the header text the identifier was parsed from).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Component<'a, 'de> {
    pub kind: Kind<'a>,
    pub item: &'a PItem<'de>,
}

fn malformed(detail: String) -> SignatureError {
    SignatureError::Malformed { detail }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl<'a, 'de> Component<'a, 'de> {
    pub fn parse(item: &'a PItem<'de>) -> Result<Component<'a, 'de>, SignatureError> {
        let BareItemFromInput::String(name) = &item.bare else {
            return Err(malformed(
                "covered component identifiers must be strings".into(),
            ));
        };
        let name = name.as_str();
        if name.is_empty() {
            return Err(malformed("empty covered component name".into()));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(malformed(format!(
                "covered component name {name:?} must be lowercase"
            )));
        }
        let kind = if name.starts_with('@') {
            Self::parse_derived(name, item)?
        } else {
            Self::parse_field(name, item)?
        };
        Ok(Component { kind, item })
    }

    fn parse_derived(name: &'a str, item: &'a PItem<'de>) -> Result<Kind<'a>, SignatureError> {
        let derived = match name {
            "@method" => Some(Derived::Method),
            "@target-uri" => Some(Derived::TargetUri),
            "@authority" => Some(Derived::Authority),
            "@scheme" => Some(Derived::Scheme),
            "@request-target" => Some(Derived::RequestTarget),
            "@path" => Some(Derived::Path),
            "@query" => Some(Derived::Query),
            "@query-param" => None,
            "@signature-params" => {
                return Err(malformed(
                    "\"@signature-params\" cannot be a covered component".into(),
                ))
            }
            "@status" => {
                return Err(malformed(
                    "cannot rebuild component \"@status\": it exists only in responses".into(),
                ))
            }
            other => {
                return Err(malformed(format!(
                    "cannot rebuild component {other:?}: unknown derived component"
                )))
            }
        };
        let mut qp_name = None;
        for (key, value) in &item.params {
            match (key.as_str(), derived) {
                ("name", None) => match value {
                    BareItemFromInput::String(s) => qp_name = Some(s.as_str()),
                    _ => {
                        return Err(malformed(
                            "\"@query-param\" name parameter must be a string".into(),
                        ))
                    }
                },
                ("req", _) => {
                    return Err(malformed(format!(
                        "cannot rebuild component {name:?};req: request components are only \
                         referenced from responses"
                    )))
                }
                (other, _) => {
                    return Err(malformed(format!(
                        "cannot rebuild component {name:?}: unsupported parameter {other:?}"
                    )))
                }
            }
        }
        match derived {
            Some(d) => Ok(Kind::Derived(d)),
            None => qp_name
                .map(Kind::QueryParam)
                .ok_or_else(|| malformed("\"@query-param\" requires a name parameter".into())),
        }
    }

    fn parse_field(name: &'a str, item: &'a PItem<'de>) -> Result<Kind<'a>, SignatureError> {
        if !name.bytes().all(is_tchar) {
            return Err(malformed(format!(
                "covered component {name:?} is not a valid field name"
            )));
        }
        let mut form = FieldForm::Raw;
        for (key, value) in &item.params {
            match key.as_str() {
                "sf" => {
                    if !matches!(value, BareItemFromInput::Boolean(true)) {
                        return Err(malformed(format!(
                            "component {name:?}: the sf parameter must be boolean true"
                        )));
                    }
                    if form == FieldForm::Raw {
                        form = FieldForm::Structured;
                    }
                }
                "key" => match value {
                    BareItemFromInput::String(k) => form = FieldForm::Key(k.as_str()),
                    _ => {
                        return Err(malformed(format!(
                            "component {name:?}: the key parameter must be a string"
                        )))
                    }
                },
                "bs" => {
                    return Err(malformed(format!(
                        "cannot rebuild component {name:?};bs: byte-sequence wrapping is not \
                         supported"
                    )))
                }
                "req" => {
                    return Err(malformed(format!(
                        "cannot rebuild component {name:?};req: request components are only \
                         referenced from responses"
                    )))
                }
                "tr" => {
                    return Err(malformed(format!(
                        "cannot rebuild component {name:?};tr: trailers are not supported"
                    )))
                }
                other => {
                    return Err(malformed(format!(
                        "cannot rebuild component {name:?}: unsupported parameter {other:?}"
                    )))
                }
            }
        }
        if form != FieldForm::Raw && !DICTIONARY_FIELDS.contains(&name) {
            return Err(malformed(format!(
                "cannot rebuild component {name:?} as a structured field: its type is unknown"
            )));
        }
        Ok(Kind::Field { name, form })
    }

    /// Appends this component's signature-base line (without the newline).
    pub fn write_line(
        &self,
        req: &RequestParts<'_>,
        base: &mut String,
    ) -> Result<(), SignatureError> {
        let value = self.value(req)?;
        if value.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(malformed(format!(
                "component {} contains a line break",
                self.describe()
            )));
        }
        self.item.write_to(base);
        base.push_str(": ");
        base.push_str(&value);
        Ok(())
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        self.item.write_to(&mut s);
        s
    }

    /// The component value rebuilt from the request.
    pub fn value<'r>(&self, req: &RequestParts<'r>) -> Result<Cow<'r, str>, SignatureError> {
        Ok(match self.kind {
            Kind::Derived(d) => derived_value(d, req),
            Kind::QueryParam(name) => Cow::Owned(query_param_value(req.query, name)?),
            Kind::Field { name, form } => {
                let raw = req.headers.combined(name).ok_or_else(|| {
                    malformed(format!(
                        "cannot rebuild component {name:?}: {}",
                        super::headers::unreadable_field(req.headers, name)
                    ))
                })?;
                match form {
                    FieldForm::Raw => raw,
                    FieldForm::Structured => Cow::Owned(reserialize_dictionary(name, &raw)?),
                    FieldForm::Key(key) => Cow::Owned(dictionary_member(name, &raw, key)?),
                }
            }
        })
    }
}

fn derived_value<'r>(d: Derived, req: &RequestParts<'r>) -> Cow<'r, str> {
    let path = if req.path.is_empty() { "/" } else { req.path };
    match d {
        Derived::Method => Cow::Borrowed(req.method),
        Derived::Scheme => Cow::Borrowed("https"),
        Derived::Authority => {
            if req.authority.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(req.authority.to_ascii_lowercase())
            } else {
                Cow::Borrowed(req.authority)
            }
        }
        Derived::Path => Cow::Borrowed(path),
        Derived::Query => Cow::Owned(format!("?{}", req.query.unwrap_or(""))),
        Derived::RequestTarget => match req.query {
            Some(q) => Cow::Owned(format!("{path}?{q}")),
            None => Cow::Borrowed(path),
        },
        Derived::TargetUri => {
            let mut s = String::with_capacity(8 + req.authority.len() + path.len() + 32);
            s.push_str("https://");
            s.push_str(req.authority);
            s.push_str(path);
            if let Some(q) = req.query {
                s.push('?');
                s.push_str(q);
            }
            Cow::Owned(s)
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// application/x-www-form-urlencoded parsing of one name or value (HTML URL
/// §5.1): '+' is a space, valid %XX escapes are decoded, the result is UTF-8
/// decoded with replacement characters.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// "Percent-encode after encoding" with the application/x-www-form-urlencoded
/// percent-encode set and without space-as-plus (HTML URL §5.2, as RFC 9421
/// §2.2.8 uses it: a space becomes `%20`).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            other => {
                let _ = write!(out, "%{other:02X}");
            }
        }
    }
    out
}

/// RFC 9421 §2.2.8. A name that is absent, or present more than once, cannot
/// be signed unambiguously and is refused.
fn query_param_value(query: Option<&str>, encoded_name: &str) -> Result<String, SignatureError> {
    let mut found: Option<String> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_encode(&form_decode(n)) != encoded_name {
            continue;
        }
        if found.is_some() {
            return Err(malformed(format!(
                "cannot rebuild component \"@query-param\";name={encoded_name:?}: the parameter \
                 occurs more than once (cover \"@query\" instead)"
            )));
        }
        found = Some(form_encode(&form_decode(v)));
    }
    found.ok_or_else(|| {
        malformed(format!(
            "cannot rebuild component \"@query-param\";name={encoded_name:?}: no such query \
             parameter"
        ))
    })
}

fn parse_dictionary(name: &str, raw: &str) -> Result<Dictionary, SignatureError> {
    Parser::new(raw).parse::<Dictionary>().map_err(|e| {
        malformed(format!(
            "cannot rebuild component {name:?};sf: the header is not a dictionary: {e}"
        ))
    })
}

fn reserialize_dictionary(name: &str, raw: &str) -> Result<String, SignatureError> {
    let dict = parse_dictionary(name, raw)?;
    let mut out = String::new();
    let mut ser = sfv::DictSerializer::with_buffer(&mut out);
    ser.members(&dict);
    let _ = ser.finish();
    Ok(out)
}

fn dictionary_member(name: &str, raw: &str, key: &str) -> Result<String, SignatureError> {
    let dict = parse_dictionary(name, raw)?;
    let entry = dict
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| v)
        .ok_or_else(|| {
            malformed(format!(
                "cannot rebuild component {name:?};key={key:?}: no such dictionary member"
            ))
        })?;
    let mut out = String::new();
    match entry {
        ListEntry::Item(item) => {
            let _ = ItemSerializer::with_buffer(&mut out)
                .bare_item(&item.bare_item)
                .parameters(&item.params)
                .finish();
        }
        ListEntry::InnerList(_) => {
            let mut ser = ListSerializer::with_buffer(&mut out);
            ser.members(std::iter::once(entry));
            let _ = ser.finish();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_codec_matches_rfc9421_examples() {
        // RFC 9421 §2.2.8 example query.
        let q = Some(
            "var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace\
             &fa%C3%A7ade%22%3A%20=something&qux=",
        );
        assert_eq!(
            query_param_value(q, "var").unwrap(),
            "this%20is%20a%20big%0Amultiline%20value"
        );
        assert_eq!(
            query_param_value(q, "bar").unwrap(),
            "with%20plus%20whitespace"
        );
        assert_eq!(
            query_param_value(q, "fa%C3%A7ade%22%3A%20").unwrap(),
            "something"
        );
        assert_eq!(query_param_value(q, "qux").unwrap(), "");
        // Appendix B.2 test-request: /foo?param=Value&Pet=dog
        let q = Some("param=Value&Pet=dog");
        assert_eq!(query_param_value(q, "Pet").unwrap(), "dog");
        assert!(query_param_value(q, "pet").is_err());
        assert!(query_param_value(Some("a=1&a=2"), "a").is_err());
        assert_eq!(query_param_value(Some("a&b=2"), "a").unwrap(), "");
        assert!(query_param_value(None, "a").is_err());
        // Broken escapes stay literal.
        assert_eq!(form_encode(&form_decode("%zz%4")), "%25zz%254");
    }
}
