//! Heads: an upstream response parsed and framed, a request encoded.

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::H1Error;

/// The most header fields a response head may have.
pub const MAX_HEADERS: usize = 128;
/// The largest response head.
pub const MAX_HEAD: usize = 64 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or a length of 0).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked coding.
    Chunked,
    /// Until the peer closes (responses only).
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The fields, as sent (framing fields included).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another exchange after this one.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf`, for a request whose method was
/// `method`. `Ok(None)`: the head is not complete yet. On success, the head's bytes are
/// taken from `buf`.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, H1Error> {
    // Left uninitialized: httparse writes only the fields it finds (4 KiB not cleared
    // per response).
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(H1Error::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(H1Error::Head(e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(H1Error::HeadTooLarge);
    }
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|_| (100..=599).contains(&code))
        .ok_or_else(|| H1Error::Head(format!("status {code}")))?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut lengths: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = version == Version::HTTP_10;
    // Names now, values as spans of the head (sliced from it, zero-copy, once it is
    // taken from the buffer).
    let mut spans = super::take_spans();
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| H1Error::Head(format!("field name {:?}", f.name)))?;
        if name == CONTENT_LENGTH {
            let n = content_length(f.value)?;
            if lengths.is_some_and(|l| l != n) {
                return Err(H1Error::Framing("two different Content-Length values"));
            }
            lengths = Some(n);
        } else if name == TRANSFER_ENCODING {
            te = true;
            chunked = codings(f.value, chunked).map_err(H1Error::Framing)?;
        } else if name == CONNECTION {
            close = connection_closes(f.value, version, close);
        }
        let start = f.value.as_ptr() as usize - base;
        spans.push((name, start, start + f.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // Room for the fields the gateway adds (forwarding, request id) without a regrowth.
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    for (name, start, end) in spans.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| H1Error::Head("field value".into()))?;
        headers.append(name, value);
    }
    super::give_spans(spans);
    if te && !chunked {
        return Err(H1Error::Framing("Transfer-Encoding without chunked"));
    }
    if te && lengths.is_some() {
        return Err(H1Error::Framing(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let framing = if status.is_informational() {
        if te || lengths.is_some() {
            return Err(H1Error::Framing("a body on a 1xx response"));
        }
        Framing::None
    } else if status == StatusCode::NO_CONTENT {
        if te || lengths.is_some_and(|n| n > 0) {
            return Err(H1Error::Framing("a body on a 204 response"));
        }
        Framing::None
    } else if status == StatusCode::NOT_MODIFIED {
        // A 304 may carry the representation's length; it never has a body.
        if te {
            return Err(H1Error::Framing("a body on a 304 response"));
        }
        Framing::None
    } else if method == Method::HEAD {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else {
        match lengths {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        keep_alive: !close && framing != Framing::Close,
        framing,
    }))
}

/// The transfer codings of one `Transfer-Encoding` value, after earlier lines that
/// ended in `chunked` (`chunked`): whether they end in `chunked`. Only `chunked`, once
/// and last, is accepted (names are case-insensitive, empty list items skipped).
pub(super) fn codings(value: &[u8], mut chunked: bool) -> Result<bool, &'static str> {
    for coding in value.split(|b| *b == b',') {
        let coding = coding.trim_ascii();
        if chunked {
            // Nothing may follow the final chunked, not even an empty element: hyper and
            // nginx refuse `chunked,`, and a proxy in front may read it another way.
            return Err("a transfer coding after chunked");
        }
        if coding.is_empty() {
            continue;
        }
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err("a transfer coding other than chunked");
        }
        chunked = true;
    }
    Ok(chunked)
}

/// Whether the connection closes after this message, given one `Connection` value and
/// what earlier ones said: `close` closes; `keep-alive` keeps an HTTP/1.0 one open.
pub(super) fn connection_closes(value: &[u8], version: Version, mut close: bool) -> bool {
    for token in value.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
            close = false;
        }
    }
    close
}

/// `1*DIGIT`, or a list of identical ones (`5, 5`), at most 19 digits.
fn content_length(v: &[u8]) -> Result<u64, H1Error> {
    let mut out: Option<u64> = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(H1Error::Framing("Content-Length is not a number"));
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if out.is_some_and(|o| o != n) {
            return Err(H1Error::Framing("two different Content-Length values"));
        }
        out = Some(n);
    }
    out.ok_or(H1Error::Framing("empty Content-Length"))
}

/// How a request's body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body, and no length field.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Appends the request head to `out`: `METHOD TARGET HTTP/1.1`, the fields except the
/// framing ones, and the one framing field that `framing` says.
pub fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            use std::io::Write as _;
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The framing of a request body whose size is `exact` (when known), for `method`: a
/// known length is sent as such (0 only for methods that carry a body, as hyper does),
/// an unknown one chunked.
pub fn request_framing(method: &Method, exact: Option<u64>, had_length: bool) -> RequestFraming {
    match exact {
        Some(0) => {
            let bodyless = matches!(
                *method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
            );
            if bodyless && !had_length {
                RequestFraming::None
            } else {
                RequestFraming::Length(0)
            }
        }
        Some(n) => RequestFraming::Length(n),
        None => RequestFraming::Chunked,
    }
}

/// A zero-copy view of the bytes left after a head, for tests.
#[cfg(test)]
fn rest(buf: &BytesMut) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> Result<Option<ResponseHead>, H1Error> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response(&mut buf, &method)
    }

    fn framing(text: &str) -> Result<Framing, H1Error> {
        parse(text, Method::GET).map(|h| h.expect("complete").framing)
    }

    #[test]
    fn framing_follows_rfc_9112_6_3() {
        let ok = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Framing::None,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Framing::Chunked,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::Close),
            ("HTTP/1.1 204 No Content\r\n\r\n", Framing::None),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
                Framing::None,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", Framing::None),
        ];
        for (text, want) in ok {
            assert_eq!(framing(text), Ok(want), "{text:?}");
        }
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::None, "HEAD has no body");
        assert!(head.keep_alive);
    }

    #[test]
    fn ambiguous_responses_are_errors() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
            "HTTP/1.1 999 Odd\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(framing(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn keep_alive_and_partial_heads() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        let h = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 without keep-alive");
        let h = parse("HTTP/1.1 200 OK\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "a close-delimited body ends the connection");
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none());
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(parse(&big, Method::GET).err(), Some(H1Error::HeadTooLarge));
    }

    #[test]
    fn the_head_is_taken_and_the_body_left() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"[..]);
        let h = parse_response(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(rest(&buf), bytes::Bytes::from_static(b"ok"));
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(h.status, StatusCode::OK);
    }

    #[test]
    fn request_heads_carry_one_framing_field() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("svc"));
        headers.insert("content-length", HeaderValue::from_static("99"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut out = Vec::new();
        encode_request(
            &Method::POST,
            "/a?b=c",
            &headers,
            RequestFraming::Length(3),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=c HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request(&Method::GET, "/", &headers, RequestFraming::None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: svc\r\n\r\n"
        );
        assert_eq!(
            request_framing(&Method::GET, Some(0), false),
            RequestFraming::None
        );
        assert_eq!(
            request_framing(&Method::POST, Some(0), false),
            RequestFraming::Length(0)
        );
        assert_eq!(
            request_framing(&Method::PUT, None, true),
            RequestFraming::Chunked
        );
    }
}
