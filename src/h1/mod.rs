//! turnpike's own HTTP/1.1 codec, sans I/O: heads parsed with `httparse` into the `http`
//! types, one framing function (RFC 9112 §6.3, nginx-strict), a strict chunked decoder,
//! and the head encoder. The upstream client ([`crate::upstream::h1`]) is built on it;
//! nothing here reads or writes a socket, so every rule is a table test.
//!
//! Strictness, as `../shared/reference/datapath.md` §5 asks: `Content-Length` and
//! `Transfer-Encoding` together, two different lengths, a length that is not digits, a
//! transfer coding other than one final `chunked`, `chunked` twice, a body on a 1xx or a
//! 204, obs-fold and whitespace before a colon are all errors, and every error means the
//! connection is not used again.

pub mod chunked;
pub mod head;
pub mod request;

pub use chunked::{ChunkedDecoder, Decoded};
pub use head::{
    encode_request, parse_response, request_framing, Framing, RequestFraming, ResponseHead,
};
pub use request::{parse_request, HeadLimits, Refusal, RequestHead};

/// A field's name and where its value is in the head.
type Span = (http::HeaderName, usize, usize);

thread_local! {
    /// The spans of the head being parsed, reused (no allocation per head).
    static SPANS: std::cell::RefCell<Vec<Span>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The thread's span list, empty (given back with [`give_spans`]).
fn take_spans() -> Vec<Span> {
    let mut v = SPANS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    v.clear();
    v
}

/// Gives the span list back for the next head (kept only when small).
fn give_spans(mut v: Vec<Span>) {
    if v.capacity() <= 256 {
        v.clear();
        SPANS.with(|s| *s.borrow_mut() = v);
    }
}

/// Why a message could not be framed or parsed. The text is for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H1Error {
    /// The head is not valid HTTP/1.1.
    Head(String),
    /// The head is larger than the limit.
    HeadTooLarge,
    /// The framing fields are ambiguous or invalid.
    Framing(&'static str),
    /// The chunked body is malformed.
    Chunk(&'static str),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Head(e) => write!(f, "invalid head: {e}"),
            Self::HeadTooLarge => f.write_str("head too large"),
            Self::Framing(e) => write!(f, "invalid framing: {e}"),
            Self::Chunk(e) => write!(f, "invalid chunked body: {e}"),
        }
    }
}

impl std::error::Error for H1Error {}
