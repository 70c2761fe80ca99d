//! Access to request header fields in the form RFC 9421 §2.1 signs them.

use std::borrow::Cow;

/// Header access for signing and verifying.
pub trait HeaderLookup {
    /// All values of the field `lowercase_name`, each trimmed of leading and
    /// trailing whitespace, joined with ", " (RFC 9421 §2.1); `None` when the
    /// field is absent, or when a value is not UTF-8 text (see
    /// [`HeaderLookup::present`]).
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>>;

    /// Whether the field is in the request at all, readable or not. Asked
    /// only after [`HeaderLookup::combined`] said `None`, to tell an absent
    /// field from one whose bytes cannot be signed.
    fn present(&self, lowercase_name: &str) -> bool {
        self.combined(lowercase_name).is_some()
    }

    /// Whether the field arrived on more than one line.
    fn repeated(&self, lowercase_name: &str) -> bool {
        let _ = lowercase_name;
        false
    }
}

/// Why a covered field could not be read: absent, or not UTF-8 text.
pub(crate) fn unreadable_field(headers: &dyn HeaderLookup, name: &str) -> &'static str {
    if headers.present(name) {
        "its value is not UTF-8 text"
    } else {
        "the request has no such header"
    }
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// A field value without leading and trailing spaces and tabs: what RFC 9421
/// §2.1 signs of each line (and what a forwarder joining lines must send).
pub fn trim_ows_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |i| i + 1);
    b.get(start..end).unwrap_or_default()
}

/// Joins values; the single-value case borrows (the common case on the hot path).
fn join<'a, I: Iterator<Item = Cow<'a, str>>>(mut values: I) -> Option<Cow<'a, str>> {
    let first = values.next()?;
    match values.next() {
        None => Some(first),
        Some(second) => {
            let mut out = String::with_capacity(first.len() + second.len() + 2);
            out.push_str(&first);
            out.push_str(", ");
            out.push_str(&second);
            for v in values {
                out.push_str(", ");
                out.push_str(&v);
            }
            Some(Cow::Owned(out))
        }
    }
}

static SIGNATURE_INPUT: http::HeaderName = http::HeaderName::from_static("signature-input");
static SIGNATURE: http::HeaderName = http::HeaderName::from_static("signature");
static CONTENT_DIGEST: http::HeaderName = http::HeaderName::from_static("content-digest");

impl HeaderLookup for http::HeaderMap {
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        // The fields read on every request skip header-name parsing.
        let values = match lowercase_name {
            "signature-input" => self.get_all(&SIGNATURE_INPUT),
            "signature" => self.get_all(&SIGNATURE),
            "content-digest" => self.get_all(&CONTENT_DIGEST),
            other => self.get_all(other),
        };
        // Bytes that are not UTF-8 make the whole field unreadable: decoding them lossily
        // would map different bytes to the same text (U+FFFD), so a signature over one value
        // would verify another that is then forwarded.
        let mut texts = Vec::new();
        let mut first = None;
        for (i, v) in values.iter().enumerate() {
            let text = match v.to_str() {
                Ok(s) => trim_ows(s),
                Err(_) => std::str::from_utf8(trim_ows_bytes(v.as_bytes())).ok()?,
            };
            if i == 0 {
                first = Some(text);
            } else {
                texts.push(text);
            }
        }
        let first = first?;
        if texts.is_empty() {
            return Some(Cow::Borrowed(first));
        }
        join(std::iter::once(first).chain(texts).map(Cow::Borrowed))
    }

    fn present(&self, lowercase_name: &str) -> bool {
        self.contains_key(lowercase_name)
    }

    fn repeated(&self, lowercase_name: &str) -> bool {
        self.get_all(lowercase_name).iter().nth(1).is_some()
    }
}

impl HeaderLookup for [(&str, &str)] {
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        join(
            self.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(lowercase_name))
                .map(|(_, v)| Cow::Borrowed(trim_ows(v))),
        )
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().combined(lowercase_name)
    }
}

impl HeaderLookup for &[(&str, &str)] {
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        (**self).combined(lowercase_name)
    }
}

impl HeaderLookup for Vec<(&str, &str)> {
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().combined(lowercase_name)
    }
}

impl HeaderLookup for Vec<(String, String)> {
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        join(
            self.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(lowercase_name))
                .map(|(_, v)| Cow::Borrowed(trim_ows(v))),
        )
    }
}

/// A header view with one field replaced (or added). The signer uses it to
/// sign the `Content-Digest` it is about to send.
pub struct Overlay<'a> {
    pub inner: &'a dyn HeaderLookup,
    pub name: &'a str,
    pub value: &'a str,
}

impl HeaderLookup for Overlay<'_> {
    fn combined(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        if lowercase_name == self.name {
            Some(Cow::Borrowed(self.value))
        } else {
            self.inner.combined(lowercase_name)
        }
    }

    // The inner view's own answer: the default would report a field whose bytes are not text
    // as absent.
    fn present(&self, lowercase_name: &str) -> bool {
        lowercase_name == self.name || self.inner.present(lowercase_name)
    }

    fn repeated(&self, lowercase_name: &str) -> bool {
        lowercase_name != self.name && self.inner.repeated(lowercase_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_combines_and_trims() {
        let mut h = http::HeaderMap::new();
        h.append("x-a", " one ".parse().unwrap());
        h.append("x-a", "two\t".parse().unwrap());
        h.insert("x-b", "solo".parse().unwrap());
        assert_eq!(h.combined("x-a").as_deref(), Some("one, two"));
        assert_eq!(h.combined("x-b").as_deref(), Some("solo"));
        assert!(matches!(h.combined("x-b"), Some(Cow::Borrowed(_))));
        assert_eq!(h.combined("x-c"), None);
        assert_eq!(h.combined("bad name"), None);
    }

    #[test]
    fn a_field_with_bytes_that_are_not_utf8_is_unreadable() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-u",
            http::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        );
        h.append("x-bad", "ok".parse().unwrap());
        h.append("x-bad", http::HeaderValue::from_bytes(b"\xff").unwrap());
        h.insert(
            "x-replacement",
            http::HeaderValue::from_bytes("\u{fffd}".as_bytes()).unwrap(),
        );
        // UTF-8 beyond ASCII is text.
        assert_eq!(h.combined("x-u").as_deref(), Some("caf\u{e9}"));
        // 0xFF is not: the field is unreadable, not U+FFFD (which is what x-replacement says).
        assert_eq!(h.combined("x-bad"), None);
        assert!(h.present("x-bad"));
        assert_eq!(unreadable_field(&h, "x-bad"), "its value is not UTF-8 text");
        assert_eq!(
            unreadable_field(&h, "x-none"),
            "the request has no such header"
        );
        assert_eq!(h.combined("x-replacement").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn slices_combine_case_insensitively() {
        let h = [("X-A", "1"), ("x-a", " 2"), ("y", "")];
        assert_eq!(h.combined("x-a").as_deref(), Some("1, 2"));
        assert_eq!(h.combined("y").as_deref(), Some(""));
        assert_eq!(h[..].combined("z"), None);
        let v = vec![("x".to_string(), "v".to_string())];
        assert_eq!(v.combined("x").as_deref(), Some("v"));
    }
}
