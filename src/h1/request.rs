//! Request heads from clients: parsed with httparse and framed by the rules of
//! `../shared/reference/bad-inputs.md` §A, each refusal with the status it is answered
//! with. The listener's HTTP/1.1 server ([`crate::server::h1`]) reads with it; the rules
//! are table-tested here. Field values and the target are slices of the head's bytes
//! (zero-copy).
//!
//! Choices where the catalogue leaves one: two equal `Content-Length`s are one length;
//! `Chunked`, `,chunked` and `chunked ` are chunked (forwarded as a canonical
//! `transfer-encoding: chunked`), `chunked,` is refused (nothing may follow the final
//! coding); a bare LF line end is accepted (the head is re-encoded
//! with CRLF upstream); a request is never delimited by the close.

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::head::{codings, connection_closes, RequestFraming};

/// The most header fields a request head can have at all (a listener's
/// `max_header_count` is at most this; past it, 431).
pub const MAX_FIELDS: usize = 1000;

/// A refused request head: the status to answer with, and why (for the log and the
/// error body's code). The connection is closed after the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 414, 417 or 431.
    pub status: StatusCode,
    /// What was wrong.
    pub reason: &'static str,
}

fn refuse(status: StatusCode, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

fn bad(reason: &'static str) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, reason)
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The request target (origin, absolute, authority or asterisk form).
    pub uri: http::Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The fields (framing fields included, as sent).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: RequestFraming,
    /// Whether the client allows another request on the connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// The limits a request head is parsed with.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// The whole head, request line included (431 past it).
    pub head: usize,
    /// The request target (414 past it).
    pub target: usize,
    /// Header fields (431 past it; at most [`MAX_FIELDS`]).
    pub fields: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            head: 64 * 1024,
            target: 8 * 1024,
            fields: 100,
        }
    }
}

/// Parses the request head at the start of `buf` (taken from it on success).
/// `Ok(None)`: not complete yet.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, Refusal> {
    let (max_head, max_target) = (limits.head, limits.target);
    // Left uninitialized: httparse writes only the fields it finds.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut r = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut r,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_head {
                return Err(too_large(buf, max_target));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ))
        }
        // HTTP/1.2, HTTP/2.0 on this port, HTTP/0.9: a bad request line (400, as the
        // catalogue's A18 asks); 505 is for a version that parses (HTTP/1.0 where it is
        // not served, see server::checks).
        Err(httparse::Error::Version) => return Err(bad("invalid HTTP version")),
        Err(_) => return Err(bad("invalid request head")),
    };
    if len > max_head {
        return Err(too_large(buf, max_target));
    }
    if r.headers.len() > limits.fields {
        return Err(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields",
        ));
    }
    let method =
        Method::from_bytes(r.method.unwrap_or("").as_bytes()).map_err(|_| bad("invalid method"))?;
    let target = r.path.unwrap_or("");
    if target.len() > max_target {
        return Err(refuse(StatusCode::URI_TOO_LONG, "request target too long"));
    }
    if target.contains('#') {
        return Err(bad("a fragment in the request target"));
    }
    let target_span = {
        let start = target.as_ptr() as usize - base;
        (start, start + target.len())
    };
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut length: Option<u64> = None;
    let mut te_lines = 0;
    let mut chunked = false;
    let mut close = version == Version::HTTP_10;
    let mut expect_continue = false;
    // Names now, values as spans of the head, sliced from it once it is taken from the
    // buffer.
    let mut spans = super::take_spans();
    for f in r.headers.iter() {
        let name =
            HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| bad("invalid field name"))?;
        if name == CONTENT_LENGTH {
            let n = content_length(f.value)?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("two different Content-Length values"));
            }
            length = Some(n);
        } else if name == TRANSFER_ENCODING {
            te_lines += 1;
            if te_lines > 1 {
                return Err(bad("more than one Transfer-Encoding field"));
            }
            chunked = codings(f.value, false).map_err(bad)?;
        } else if name == CONNECTION {
            close = connection_closes(f.value, version, close);
        } else if name == EXPECT {
            if f.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = version == Version::HTTP_11;
            } else {
                return Err(refuse(
                    StatusCode::EXPECTATION_FAILED,
                    "unsupported expectation",
                ));
            }
        }
        let start = f.value.as_ptr() as usize - base;
        spans.push((name, start, start + f.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // Room for the fields the gateway adds (forwarding, request id) without a regrowth.
    let mut headers = HeaderMap::with_capacity(spans.len() + 8);
    for (name, start, end) in spans.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| bad("invalid field value"))?;
        headers.append(name, value);
    }
    super::give_spans(spans);
    let uri = http::Uri::from_maybe_shared(head.slice(target_span.0..target_span.1))
        .map_err(|_| bad("invalid request target"))?;
    if te_lines > 0 {
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding on HTTP/1.0"));
        }
        if length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if !chunked {
            return Err(bad("Transfer-Encoding without chunked"));
        }
    }
    let framing = if chunked {
        RequestFraming::Chunked
    } else {
        match length {
            Some(0) | None => RequestFraming::None,
            Some(n) => RequestFraming::Length(n),
        }
    };
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive: !close,
        expect_continue,
    }))
}

/// What an over-long head is: its request line alone too long is 414, else 431.
fn too_large(buf: &[u8], max_target: usize) -> Refusal {
    let line_end = buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len());
    if line_end > max_target {
        refuse(StatusCode::URI_TOO_LONG, "request target too long")
    } else {
        refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        )
    }
}

/// `1*DIGIT` (leading zeros are decimal), at most 19 digits; a list is refused.
fn content_length(v: &[u8]) -> Result<u64, Refusal> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad("invalid Content-Length"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Option<RequestHead>, Refusal> {
        let mut buf = BytesMut::from(text);
        parse_request(&mut buf, HeadLimits::default())
    }

    fn status(text: &[u8]) -> u16 {
        match parse(text) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(r) => r.status.as_u16(),
        }
    }

    #[test]
    fn the_catalogue_a_items() {
        let cases: &[(&[u8], u16)] = &[
            // A1: CL and TE, with a smuggled request after the last chunk.
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n", 400),
            // A2, A3, A4: lengths.
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 010\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            // A5: TE not ending in chunked.
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            // Found by the h1_stream differential fuzz target: an empty element after chunked.
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", 400),
            // A6: obfuscations accepted as chunked.
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \tchunked\r\n\r\n", 200),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n", 200),
            // A7: controls in TE.
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chun\x0bked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x00\r\n\r\n", 400),
            // A8: several TE lines.
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            // A9: TE on HTTP/1.0.
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            // A10, A11: obs-fold, whitespace before the colon, bad names.
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX A: 1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-\xe9: 1\r\n\r\n", 400),
            // A13: controls in values.
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
            // A14: bare LF accepted.
            (b"GET / HTTP/1.1\nHost: a\n\n", 200),
            // Fragments, versions, partial heads.
            (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", 0),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
        ];
        for (text, want) in cases {
            assert_eq!(status(text), *want, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn framing_keep_alive_and_limits() {
        let h = parse(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, RequestFraming::Length(5));
        assert!(h.keep_alive);
        let h = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, RequestFraming::Chunked);
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 without keep-alive");
        assert_eq!(
            h.framing,
            RequestFraming::None,
            "requests are never close-delimited"
        );
        let h = parse(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.expect_continue);
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(status(long.as_bytes()), 414);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(status(many.as_bytes()), 431);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        );
        assert_eq!(status(big.as_bytes()), 431);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next"[..]);
        parse_request(&mut buf, HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            &buf[..],
            b"GET /next",
            "a pipelined request is left in the buffer"
        );
    }
}
