//! The request head, checked before pingora parses it, for what pingora
//! would refuse with its bare `400` (no JSON, no refusal metric; it has no
//! hook there): an unparsable head, one larger than pingora allows, two
//! `Host` fields or userinfo in one, an absolute-form target whose authority
//! differs from `Host`, a target that is not UTF-8, `Content-Length` that is
//! not one number, and `Transfer-Encoding` that does not end in `chunked` or
//! comes with HTTP/1.0. Each of these is refused here as `request_malformed`,
//! with the contract's JSON and metric (downstream.rs answers).
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

fn refuse(detail: impl Into<String>) -> Head {
    Head::Refuse(detail.into())
}

/// Judges the bytes read so far of a request head (and possibly more).
pub fn check(buf: &[u8]) -> Head {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(_)) => complete(&req),
        Ok(httparse::Status::Partial) => partial(buf),
        // pingora percent-encodes the target and parses again (for clients that
        // send, say, a space or `|` unescaped); its verdict on that stands,
        // except that a target that is not UTF-8 is refused either way.
        Err(httparse::Error::Token | httparse::Error::Version) => {
            if request_line_target(buf).is_some_and(|t| std::str::from_utf8(t).is_err()) {
                refuse("the request target is not UTF-8 text")
            } else if head_end(buf) {
                Head::Pass
            } else {
                partial(buf)
            }
        }
        Err(e) => refuse(format!("the request head is not valid HTTP/1.1: {e}")),
    }
}

fn partial(buf: &[u8]) -> Head {
    if buf.len() > MAX_HEAD {
        refuse(format!("the request head is larger than {MAX_HEAD} bytes"))
    } else {
        Head::Partial
    }
}

/// Whether the head's terminating empty line is in `buf` (httparse also
/// accepts bare LF line ends).
fn head_end(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// The bytes between the first and second space of the first line, once the
/// line is complete.
fn request_line_target(buf: &[u8]) -> Option<&[u8]> {
    let line = &buf[..buf.iter().position(|&b| b == b'\n')?];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (_method, target) = (parts.next()?, parts.next()?);
    Some(target)
}

fn complete(req: &httparse::Request<'_, '_>) -> Head {
    let target = req.path.unwrap_or("");
    // httparse hands the target over as text without checking it (it admits
    // bytes ≥ 0x80); pingora keeps the bytes and reads them lossily.
    let mut host = None;
    let mut te_last = None;
    let mut has_cl = false;
    for field in req.headers.iter() {
        if field.name.eq_ignore_ascii_case("host") {
            if host.replace(field.value).is_some() {
                return refuse("more than one Host field");
            }
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            te_last = Some(field.value);
        } else if field.name.eq_ignore_ascii_case("content-length") {
            has_cl = true;
        }
    }
    if std::str::from_utf8(target.as_bytes()).is_err() {
        return refuse("the request target is not UTF-8 text");
    }
    if host.is_some_and(|h| h.contains(&b'@')) {
        return refuse("userinfo in the Host field");
    }
    if let Some(authority) = absolute_form_authority(target.as_bytes()) {
        if authority.contains(&b'@') {
            return refuse("userinfo in the request target");
        }
        if host.is_some_and(|h| h != authority) {
            return refuse("the Host field differs from the request target's authority");
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
        None if has_cl && content_length(req.headers).is_none() => {
            refuse("Content-Length is not one decimal number")
        }
        None => Head::Pass,
    }
}

/// `scheme://authority[/?#…]`: the authority. Other forms have none here
/// (origin form, `*`, or what pingora and the decision judge themselves).
fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    if target.first().is_none_or(|&b| b == b'/' || b == b'*') {
        return None;
    }
    let sep = target.windows(3).position(|w| w == b"://")?;
    let rest = &target[sep + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// pingora's `is_chunked_encoding_from_headers`: the last token of the last
/// `Transfer-Encoding` line.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
    trim(last).eq_ignore_ascii_case(b"chunked")
}

/// pingora's `content_length_parse_all`: every line visible ASCII, every
/// comma-separated value digits only, all the same number.
fn content_length(fields: &[httparse::Header<'_>]) -> Option<u64> {
    let mut length = None;
    for field in fields {
        if !field.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if !field
            .value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return None;
        }
        for v in field.value.split(|&b| b == b',') {
            let n = digits(trim(v))?;
            match length {
                None => length = Some(n),
                Some(prev) if prev != n => return None,
                Some(_) => {}
            }
        }
    }
    length
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

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
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
    fn a_target_pingora_escapes_is_left_to_pingora_unless_it_is_not_utf8() {
        // httparse refuses the space; pingora percent-encodes it and parses again.
        let spaced = b"GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n";
        assert!(httparse::Request::new(&mut [httparse::EMPTY_HEADER; 4])
            .parse(spaced)
            .is_err());
        assert_eq!(check(spaced), Head::Pass);
        assert_eq!(check(&spaced[..20]), Head::Partial);
        for not_text in [
            &b"GET /a\xff HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
            b"GET /a\xc3 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ] {
            assert_eq!(refused(not_text), "the request target is not UTF-8 text");
        }
        // UTF-8 text is not refused here (the signature covers it as sent).
        assert_eq!(
            check("GET /caf\u{e9} HTTP/1.1\r\nHost: localhost\r\n\r\n".as_bytes()),
            Head::Pass
        );
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
        for fine in [
            head(&["GET http://a:8443/x?q HTTP/1.1", "Host: a:8443"]),
            head(&["GET http://a HTTP/1.1"]),
            head(&["GET /x HTTP/1.1", "Host: a"]),
            head(&["OPTIONS * HTTP/1.1", "Host: a"]),
            // No authority at all is the decision's to refuse (it knows the listener).
            head(&["GET /x HTTP/1.0"]),
        ] {
            assert_eq!(
                check(&fine),
                Head::Pass,
                "{}",
                String::from_utf8_lossy(&fine)
            );
        }
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
        for fine in [
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
        ] {
            assert_eq!(
                check(&fine),
                Head::Pass,
                "{}",
                String::from_utf8_lossy(&fine)
            );
        }
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
