//! The request head, checked before pingora parses it, for what pingora
//! would refuse with its bare `400` (no JSON, no refusal metric; it has no
//! hook there): an unparsable head, one larger than pingora allows, two
//! `Host` fields or userinfo in one, an absolute-form target whose authority
//! differs from `Host`, a target that is not UTF-8, `Content-Length` that is
//! not one number, and `Transfer-Encoding` that does not end in `chunked` or
//! comes with HTTP/1.0. Each of these is refused here as `request_malformed`,
//! with the contract's JSON and metric (downstream.rs answers).
//!
//! One rule is stricter than pingora's: a request line httparse refuses (a
//! space, a control byte, DEL or a non-UTF-8 byte in the target, a bad method
//! or version) is refused here, where pingora would percent-encode the target
//! and parse it again. RFC 9112 §3 does not allow such a line, nginx refuses
//! it too, and a signed request's target is the bytes that were signed.
//!
//! The rules are pingora 0.9.1's (`HttpSession::read_request` and
//! `validate_request`, `validate_request_authority`, `content_length_parse_all`,
//! `is_chunked_encoding_from_headers`), restated: they are crate-private
//! there or need the `RequestHeader` pingora builds afterwards. What passes
//! here still goes through pingora's own parse and checks, so a rule missing
//! here leaves pingora's bare `400`, never a request through; the decision
//! checks the authority and the target again (decision.rs).
//!
//! Hand-written on the hot path: httparse is the parser pingora itself uses,
//! with the same configuration (its defaults), run once more over the head
//! with an uninitialised header array (no 8 KiB zeroing per request).

use std::mem::MaybeUninit;

use pingora_http::authority::{is_http_family_scheme, raw_target_authority, RawTargetAuthority};

/// pingora's limit on a request head (`MAX_HEADER_SIZE`): with more than
/// this read and the head still incomplete, pingora refuses.
pub const MAX_HEAD: usize = 1_048_575;

/// pingora's limit on header fields (`MAX_HEADERS`).
const MAX_FIELDS: usize = 256;

#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Not complete yet: read more.
    Partial,
    /// Complete, and nothing here that pingora would refuse.
    Pass,
    /// pingora would refuse it: `request_malformed` with this detail.
    Refuse(String),
}

impl Head {
    /// `None` while more is needed; once complete, `Some` of the refusal's
    /// detail, if any.
    pub fn done(self) -> Option<Option<String>> {
        match self {
            Head::Partial => None,
            Head::Pass => Some(None),
            Head::Refuse(detail) => Some(Some(detail)),
        }
    }
}

fn refuse(detail: impl Into<String>) -> Head {
    Head::Refuse(detail.into())
}

/// Judges the bytes read so far of a request head (and possibly more).
pub fn check(buf: &[u8]) -> Head {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut fields) {
        // pingora hands a buffer over this size to its parser only to refuse it.
        Ok(httparse::Status::Complete(_)) if buf.len() > MAX_HEAD => refuse(format!(
            "the request head (with what came in the same reads) is larger than {MAX_HEAD} bytes"
        )),
        Ok(httparse::Status::Complete(_)) => complete(&req),
        Ok(httparse::Status::Partial) => partial(buf),
        // A request line that is not HTTP/1.1's (RFC 9112 §3): a byte the target may not hold
        // (a space, a control byte or DEL, one that is not UTF-8) or a bad method or version. pingora would percent-encode such a target and parse it again; refused here
        // instead, as nginx does: a signed request's target is the bytes that were signed.
        Err(httparse::Error::Token | httparse::Error::Version) => {
            if request_line_target(buf).is_some_and(|t| std::str::from_utf8(t).is_err()) {
                refuse("the request target is not UTF-8 text")
            } else {
                refuse("the request line is not valid HTTP/1.1 (method, target or version)")
            }
        }
        Err(e) => refuse(format!("the request head is not valid HTTP/1.1: {e}")),
    }
}

/// A head judged as it comes in, piece by piece, without parsing it from the
/// start after every piece: that is O(n²) in a head trickled a byte per read
/// or per TLS record (pingora's own reader does it, up to 1 MiB). It is
/// parsed only when it may be complete (a blank line has come in after the
/// request line began, found by a scan that looks at each byte once), when it
/// has doubled since it was last parsed (so a malformed head is still refused
/// early, at no more than twice the work in all), or once it is over
/// [`MAX_HEAD`]. The verdict is [`check`]'s.
#[derive(Debug, Default)]
pub struct Incoming {
    /// The length last parsed; 0: never (the first piece is always parsed).
    parsed: usize,
    /// How far the blank-line scan has read, and where it stands there.
    scanned: usize,
    at: Scan,
    #[cfg(test)]
    parses: usize,
}

/// Where the blank-line scan stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Before the request line: httparse skips empty lines there.
    #[default]
    Leading,
    LeadingCr,
    Line,
    LineCr,
    /// Just after a line's `\n`, then after a `\r`.
    Lf,
    LfCr,
}

impl Incoming {
    /// `already`: how much of the head [`check`] has judged `Partial` before.
    pub fn new(already: usize) -> Self {
        Incoming {
            parsed: already,
            ..Incoming::default()
        }
    }

    /// Judges `buf`, the head read so far (and possibly more).
    pub fn check(&mut self, buf: &[u8]) -> Head {
        let due = self.parsed == 0
            || buf.len() > MAX_HEAD
            || buf.len() >= self.parsed.saturating_mul(2)
            || self.blank_line(buf);
        if !due {
            return Head::Partial;
        }
        self.parsed = buf.len();
        #[cfg(test)]
        {
            self.parses += 1;
        }
        check(buf)
    }

    /// Whether what came since the last scan holds a blank line that ends a
    /// line of the head, or a `\r` not followed by `\n` (which httparse
    /// refuses wherever it is: the head is judged now, not when it doubles).
    fn blank_line(&mut self, buf: &[u8]) -> bool {
        let Some(new) = buf.get(self.scanned..) else {
            return false;
        };
        for (i, &b) in new.iter().enumerate() {
            let next = match (self.at, b) {
                (Scan::Leading, b'\r') => Some(Scan::LeadingCr),
                (Scan::Leading | Scan::LeadingCr, b'\n') => Some(Scan::Leading),
                (Scan::Line, b'\r') => Some(Scan::LineCr),
                (Scan::Line | Scan::LineCr, b'\n') => Some(Scan::Lf),
                (Scan::Lf, b'\r') => Some(Scan::LfCr),
                // A blank line, or a CR without its LF.
                (Scan::Lf | Scan::LfCr, b'\n')
                | (Scan::LeadingCr | Scan::LineCr | Scan::LfCr, _) => None,
                (Scan::Leading | Scan::Line | Scan::Lf, _) => Some(Scan::Line),
            };
            match next {
                Some(at) => self.at = at,
                None => {
                    self.scanned += i + 1;
                    self.at = Scan::Line;
                    return true;
                }
            }
        }
        self.scanned = buf.len();
        false
    }
}

fn partial(buf: &[u8]) -> Head {
    if buf.len() > MAX_HEAD {
        refuse(format!("the request head is larger than {MAX_HEAD} bytes"))
    } else {
        Head::Partial
    }
}

/// The bytes between the first and second space of the first line, as far
/// as they have come.
fn request_line_target(buf: &[u8]) -> Option<&[u8]> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (_method, target) = (parts.next()?, parts.next()?);
    Some(target)
}

fn complete(req: &httparse::Request<'_, '_>) -> Head {
    // httparse has checked the target: visible ASCII or UTF-8 text, no space.
    let target = req.path.unwrap_or("").as_bytes();
    let mut host = None;
    let mut te_last = None;
    let mut length = Length::Absent;
    for field in req.headers.iter() {
        // By length first: most fields are none of the three.
        match field.name.len() {
            4 if field.name.eq_ignore_ascii_case("host") => {
                let earlier = host.replace(field.value);
                if earlier.is_some() {
                    return refuse("more than one Host field");
                }
            }
            17 if field.name.eq_ignore_ascii_case("transfer-encoding") => {
                te_last = Some(field.value);
            }
            14 if field.name.eq_ignore_ascii_case("content-length") => {
                length = length.and(field.value);
            }
            _ => {}
        }
    }
    if host.is_some_and(|h| h.contains(&b'@')) {
        return refuse("userinfo in the Host field");
    }
    // CONNECT's targets are pingora's to judge (zen-proxy has no CONNECT route).
    if req.method != Some("CONNECT") {
        match raw_target_authority(target) {
            RawTargetAuthority::None => {}
            RawTargetAuthority::AmbiguousAuthority => {
                return refuse("the request target's authority is ambiguous");
            }
            RawTargetAuthority::Absolute {
                scheme, authority, ..
            } => {
                if is_http_family_scheme(scheme)
                    && http::uri::Authority::try_from(authority).is_err()
                {
                    return refuse("the request target's authority cannot be parsed");
                }
                if authority.contains(&b'@') {
                    return refuse("userinfo in the request target");
                }
                if host.is_some_and(|h| h != authority) {
                    return refuse("the Host field differs from the request target's authority");
                }
            }
        }
    }
    match te_last {
        Some(_) if req.version == Some(0) => {
            refuse("an HTTP/1.0 request cannot carry Transfer-Encoding")
        }
        Some(te) if !last_coding_is_chunked(te) => {
            refuse("the final Transfer-Encoding is not chunked")
        }
        // Transfer-Encoding frames the body; Content-Length is ignored.
        Some(_) => Head::Pass,
        None if length == Length::Invalid => refuse("Content-Length is not one decimal number"),
        None => Head::Pass,
    }
}

/// pingora's `content_length_parse_all`, one line at a time: every line
/// visible ASCII, every comma-separated value digits only, all the same
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    Absent,
    Is(u64),
    Invalid,
}

impl Length {
    fn and(self, line: &[u8]) -> Length {
        if self == Length::Invalid
            || !line
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Length::Invalid;
        }
        line.split(|&b| b == b',')
            .fold(self, |seen, v| match (seen, digits(v.trim_ascii())) {
                (Length::Invalid, _) | (_, None) => Length::Invalid,
                (Length::Absent, Some(n)) => Length::Is(n),
                (Length::Is(prev), Some(n)) if prev == n => seen,
                (Length::Is(_), Some(_)) => Length::Invalid,
            })
    }
}

/// pingora's `is_chunked_encoding_from_headers`: the last token of the last
/// `Transfer-Encoding` line.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut out = lines.join("\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out
    }

    fn refused(buf: &[u8]) -> String {
        match check(buf) {
            Head::Refuse(detail) => detail,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn all_refused<B: AsRef<[u8]>>(heads: impl IntoIterator<Item = B>, detail: &str) {
        for buf in heads {
            let buf = buf.as_ref();
            assert_eq!(refused(buf), detail, "{}", String::from_utf8_lossy(buf));
            assert_eq!(trickled(buf), check(buf));
        }
    }

    fn all_pass<B: AsRef<[u8]>>(heads: impl IntoIterator<Item = B>) {
        for buf in heads {
            let buf = buf.as_ref();
            assert_eq!(check(buf), Head::Pass, "{}", String::from_utf8_lossy(buf));
            assert_eq!(trickled(buf), Head::Pass);
        }
    }

    /// `buf` given to [`Incoming`] a byte at a time: its first verdict, and
    /// that it came within a bounded number of parses.
    fn trickled(buf: &[u8]) -> Head {
        let mut incoming = Incoming::new(0);
        for end in 1..=buf.len() {
            let verdict = incoming.check(&buf[..end]);
            let bound = 2 + 3 + usize::BITS as usize - end.leading_zeros() as usize;
            assert!(
                incoming.parses <= bound,
                "{} parses for {end} bytes",
                incoming.parses
            );
            if verdict != Head::Partial {
                return verdict;
            }
        }
        Head::Partial
    }

    /// A head a byte per read costs a parse per doubling and one at its end,
    /// not one per byte, and gets [`check`]'s verdict; a malformed one is
    /// refused by the next doubling, before its end.
    #[test]
    fn a_trickled_head_is_parsed_a_few_times_not_once_per_byte() {
        let mut fields = Vec::new();
        for i in 0..200 {
            fields.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        fields.extend_from_slice(b"\r\n");
        // Empty lines before the request line, which httparse skips, do not end it.
        let big = [
            &b"\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n"[..],
            &fields,
        ]
        .concat();
        assert_eq!(check(&big), Head::Pass);
        let mut incoming = Incoming::new(0);
        let mut verdicts = Vec::new();
        for end in 1..=big.len() {
            let verdict = incoming.check(&big[..end]);
            if verdict != Head::Partial {
                verdicts.push((end, verdict));
            }
        }
        assert_eq!(verdicts, vec![(big.len(), Head::Pass)]);
        assert!(incoming.parses <= 16, "{} parses", incoming.parses);

        let bad = [&b"GET / HTTP/1.1\r\nbad name: v\r\n"[..], &fields].concat();
        let mut incoming = Incoming::new(0);
        let first = (1..=bad.len())
            .map(|end| (end, incoming.check(&bad[..end])))
            .find(|(_, v)| *v != Head::Partial)
            .unwrap();
        assert!(first.0 <= 64, "refused at byte {}", first.0);
        assert!(matches!(first.1, Head::Refuse(ref d) if d.contains("invalid header name")));

        // A CR without its LF is refused when it comes, not when the head doubles.
        for bad_end in [&b"x: v\r\r"[..], b"x: v\rx", b"x: v\r\n\r\r"] {
            let start = [&b"GET / HTTP/1.1\r\n"[..], &fields[..fields.len() - 2]].concat();
            let mut incoming = Incoming::new(0);
            for end in 1..=start.len() {
                assert_eq!(incoming.check(&start[..end]), Head::Partial);
            }
            let whole = [&start[..], bad_end].concat();
            assert!(
                matches!(incoming.check(&whole), Head::Refuse(_)),
                "{:?}",
                String::from_utf8_lossy(bad_end)
            );
        }

        // Over pingora's limit it is refused as at once, with no blank line to come.
        let mut huge = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        let mut incoming = Incoming::new(MAX_HEAD * 3 / 4);
        assert_eq!(incoming.check(&huge[..MAX_HEAD]), Head::Partial);
        assert!(matches!(incoming.check(&huge), Head::Refuse(ref d) if d.contains("larger than")));
    }

    #[test]
    fn an_ordinary_signed_request_passes() {
        let buf = head(&[
            "POST /agent/v1/heartbeat HTTP/1.1",
            "Host: localhost",
            "Content-Length: 12",
            "Content-Digest: sha-256=:AAAA:",
            "Signature-Input: sig1=(\"@method\");keyid=\"k\"",
            "Signature: sig1=:AAAA:",
        ]);
        assert_eq!(check(&buf), Head::Pass);
        // The body may follow in the same read.
        let mut with_body = buf.clone();
        with_body.extend_from_slice(b"{\"ok\":true}\n");
        assert_eq!(check(&with_body), Head::Pass);
    }

    #[test]
    fn an_incomplete_head_asks_for_more_up_to_pingoras_limit() {
        let full = head(&["GET / HTTP/1.1", "Host: localhost"]);
        for cut in [1, 5, 20, full.len() - 1] {
            assert_eq!(check(&full[..cut]), Head::Partial, "{cut}");
        }
        let mut huge = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        huge.resize(MAX_HEAD, b'a');
        assert_eq!(check(&huge), Head::Partial);
        huge.extend_from_slice(b"aa");
        assert!(refused(&huge).contains("larger than 1048575 bytes"));
    }

    #[test]
    fn unparsable_heads_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nbad name: v\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nx: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
        ] {
            assert!(
                refused(bad).starts_with("the request head is not valid HTTP/1.1"),
                "{bad:?}"
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_FIELDS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(refused(&many).contains("too many headers"));
    }

    #[test]
    fn a_request_line_httparse_refuses_is_refused_even_where_pingora_would_escape_it() {
        // pingora would percent-encode the space and parse again; RFC 9112 allows no such line.
        all_refused(
            [
                &b"GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
                b"GET /a b HTTP/1.1\r\nHost: a\n\r\n",
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
                // Refused as soon as the line shows it, without waiting for the rest of the head.
                b"GET /a b",
            ],
            "the request line is not valid HTTP/1.1 (method, target or version)",
        );
        all_refused(
            [
                &b"GET /a\xff HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
                b"GET /a\xc3 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            ],
            "the request target is not UTF-8 text",
        );
        // UTF-8 text is not refused here (the signature covers it as sent).
        assert_eq!(
            check("GET /caf\u{e9} HTTP/1.1\r\nHost: localhost\r\n\r\n".as_bytes()),
            Head::Pass
        );
    }

    #[test]
    fn a_complete_head_over_the_limit_with_what_came_along_is_refused() {
        // pingora refuses a prefix over its limit before it parses it, head complete or not.
        let mut buf = head(&["POST / HTTP/1.1", "Host: a", "Content-Length: 20000"]);
        assert_eq!(check(&buf), Head::Pass);
        buf.resize(MAX_HEAD + 1, b'x');
        assert!(refused(&buf).contains("larger than 1048575 bytes"));
    }

    #[test]
    fn the_authority_must_be_unambiguous() {
        let two = head(&["GET / HTTP/1.1", "Host: a", "host: b"]);
        assert_eq!(refused(&two), "more than one Host field");
        let same_twice = head(&["GET / HTTP/1.1", "Host: a", "Host: a"]);
        assert_eq!(refused(&same_twice), "more than one Host field");
        let userinfo = head(&["GET / HTTP/1.1", "Host: u@a"]);
        assert_eq!(refused(&userinfo), "userinfo in the Host field");
        let differs = head(&["GET http://a/x HTTP/1.1", "Host: b"]);
        assert_eq!(
            refused(&differs),
            "the Host field differs from the request target's authority"
        );
        let target_userinfo = head(&["GET http://u@a/x HTTP/1.1", "Host: u@a"]);
        assert_eq!(refused(&target_userinfo), "userinfo in the Host field");
        let target_userinfo = head(&["GET http://u@a/x HTTP/1.1"]);
        assert_eq!(refused(&target_userinfo), "userinfo in the request target");
        all_refused(
            [
                head(&["GET http:a/x HTTP/1.1", "Host: a"]),
                head(&["GET ://a/x HTTP/1.1", "Host: a"]),
                head(&["GET http://a\\b/x HTTP/1.1", "Host: a"]),
            ],
            "the request target's authority is ambiguous",
        );
        let unparsable = head(&["GET http://a:b:c/x HTTP/1.1", "Host: a:b:c"]);
        assert_eq!(
            refused(&unparsable),
            "the request target's authority cannot be parsed"
        );
        all_pass([
            head(&["GET http://a:8443/x?q HTTP/1.1", "Host: a:8443"]),
            head(&["GET http://a HTTP/1.1"]),
            head(&["GET /x HTTP/1.1", "Host: a"]),
            head(&["OPTIONS * HTTP/1.1", "Host: a"]),
            // No authority at all is the decision's to refuse (it knows the listener).
            head(&["GET /x HTTP/1.0"]),
            // pingora finds an authority only in `scheme://` at the target's start.
            head(&["GET foo:bar://b/ HTTP/1.1", "Host: a"]),
            head(&["GET urn:x?u=http://b HTTP/1.1", "Host: a"]),
            head(&["GET urn:x?u=http://u@b HTTP/1.1", "Host: a"]),
            // CONNECT targets are pingora's to judge.
            head(&["CONNECT http://a:80/ HTTP/1.1", "Host: a"]),
        ]);
    }

    #[test]
    fn content_length_must_be_one_number() {
        for bad in ["5, 6", "abc", "+5", "", "5 5", "-1", "99999999999999999999"] {
            let buf = head(&[
                "POST / HTTP/1.1",
                "Host: a",
                &format!("Content-Length: {bad}"),
            ]);
            assert_eq!(
                refused(&buf),
                "Content-Length is not one decimal number",
                "{bad:?}"
            );
        }
        let differing = head(&[
            "POST / HTTP/1.1",
            "Host: a",
            "Content-Length: 5",
            "Content-Length: 6",
        ]);
        assert_eq!(
            refused(&differing),
            "Content-Length is not one decimal number"
        );
        all_pass([
            head(&["POST / HTTP/1.1", "Host: a", "Content-Length: 5"]),
            head(&["POST / HTTP/1.1", "Host: a", "Content-Length: 5, 5"]),
            head(&[
                "POST / HTTP/1.1",
                "Host: a",
                "Content-Length: 5",
                "Content-Length: 05",
            ]),
            // Transfer-Encoding frames the body and Content-Length is ignored (pingora drops it).
            head(&[
                "POST / HTTP/1.1",
                "Host: a",
                "Transfer-Encoding: chunked",
                "Content-Length: x",
            ]),
        ]);
    }

    #[test]
    fn transfer_encoding_must_end_in_chunked_on_http11() {
        let gzip = head(&["POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip"]);
        assert_eq!(refused(&gzip), "the final Transfer-Encoding is not chunked");
        let last_line = head(&[
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
        ]);
        assert_eq!(
            refused(&last_line),
            "the final Transfer-Encoding is not chunked"
        );
        let old = head(&["POST / HTTP/1.0", "Host: a", "Transfer-Encoding: chunked"]);
        assert_eq!(
            refused(&old),
            "an HTTP/1.0 request cannot carry Transfer-Encoding"
        );
        for fine in ["chunked", "gzip, chunked", "gzip,Chunked ", "CHUNKED"] {
            let buf = head(&[
                "POST / HTTP/1.1",
                "Host: a",
                &format!("Transfer-Encoding: {fine}"),
            ]);
            assert_eq!(check(&buf), Head::Pass, "{fine}");
        }
    }
}
