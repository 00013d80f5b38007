//! A strict decoder of the chunked transfer coding (RFC 9112 §7.1), modelled on hyper's
//! `decode.rs` rather than `httparse::parse_chunk_size` (which reads a line without a hex
//! digit as size 0 and accepts LF inside an extension):
//!
//! - a size is 1 to 16 hex digits (no sign, no `0x`, no overflow);
//! - after it only optional whitespace and `;extensions`, which are ignored, must not
//!   hold CR, LF or NUL, and are at most 4 KiB per line;
//! - every line ends with CRLF (a bare LF is an error: the Garden's transducer bug T13);
//! - chunk data is followed by exactly CRLF;
//! - trailers are field lines (parsed by httparse), at most 16 KiB and 100 fields in all
//!   (hyper's limits: a trailer section hyper refuses is refused here too).
//!
//! The decoder works on the caller's read buffer and hands out data as zero-copy
//! `Bytes` split from it.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::H1Error;

const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// The most trailer fields (as many as a head may have by default).
const MAX_TRAILER_FIELDS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// More input is needed.
    NeedMore,
    /// The last chunk and the trailers (empty when none) were read.
    End(HeaderMap),
}

/// The state of one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
    trailers: HeaderMap,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size,
            trailer_bytes: 0,
            trailers: HeaderMap::new(),
        }
    }

    /// Whether the whole body was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes what `buf` holds, consuming it; call again after more bytes arrive when
    /// it says [`Decoded::NeedMore`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(H1Error::Chunk("chunk data not followed by CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(Decoded::End(std::mem::take(&mut self.trailers)));
                    }
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(H1Error::Chunk("trailers too large"));
                    }
                    self.trailer(&line)?;
                }
                State::Done => return Ok(Decoded::End(HeaderMap::new())),
            }
        }
    }

    fn trailer(&mut self, line: &[u8]) -> Result<(), H1Error> {
        let mut text = Vec::with_capacity(line.len() + 4);
        text.extend_from_slice(line);
        text.extend_from_slice(b"\r\n\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 1];
        match httparse::parse_headers(&text, &mut fields) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(H1Error::Chunk("invalid trailer field")),
        }
        let f = fields[0];
        let name = http::HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| H1Error::Chunk("invalid trailer name"))?;
        let value = http::HeaderValue::from_bytes(f.value)
            .map_err(|_| H1Error::Chunk("invalid trailer value"))?;
        if self.trailers.len() >= MAX_TRAILER_FIELDS {
            return Err(H1Error::Chunk("too many trailer fields"));
        }
        self.trailers.append(name, value);
        Ok(())
    }
}

/// Takes one CRLF-terminated line (without the CRLF) from `buf`, or `None` when the line
/// is not complete yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, H1Error> {
    let Some(lf) = buf.iter().position(|b| *b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(H1Error::Chunk("chunk line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(H1Error::Chunk("bare LF in a chunk line"));
    }
    if lf > MAX_LINE {
        return Err(H1Error::Chunk("chunk line too long"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

fn parse_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(H1Error::Chunk("chunk size without a hex digit"));
    }
    if digits > 16 {
        return Err(H1Error::Chunk("chunk size too large"));
    }
    let mut size = 0u64;
    for b in &line[..digits] {
        let d = (*b as char).to_digit(16).unwrap_or(0) as u64;
        size = (size << 4) | d;
    }
    let rest = &line[digits..];
    // Only SP and HTAB (BWS, RFC 9112 §7.1.1) may sit between the size and `;`: not a
    // form feed or another byte `trim_ascii` would skip (found by the h1_stream fuzz
    // target: hyper refuses `0\x0c\r\n`).
    let ext = &rest[rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    if !ext.is_empty() && ext[0] != b';' {
        return Err(H1Error::Chunk("invalid bytes after the chunk size"));
    }
    if rest.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(H1Error::Chunk("CR, LF or NUL in a chunk extension"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes all of `input` at once, then byte by byte: both must give `body`.
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, HeaderMap), H1Error> {
        let whole = run(input, input.len())?;
        let split = run(input, 1)?;
        assert_eq!(whole.0, split.0, "split input decodes differently");
        Ok(whole)
    }

    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, HeaderMap), H1Error> {
        let mut d = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::End(t) => return Ok((body, t)),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(H1Error::Chunk("incomplete"));
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn valid_bodies() {
        let (b, t) = decode_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(b, b"hello world");
        assert!(t.is_empty());
        let (b, t) = decode_all(b"A\r\n0123456789\r\n000\r\nx-sum: 9\r\n\r\n").unwrap();
        assert_eq!(b, b"0123456789");
        assert_eq!(t["x-sum"], "9");
        assert_eq!(decode_all(b"0\r\n\r\n").unwrap().0, b"");
        assert_eq!(decode_all(b"3 ;a\r\nabc\r\n0\r\n\r\n").unwrap().0, b"abc");
    }

    #[test]
    fn hostile_bodies_are_errors() {
        let fields: String = (0..101).map(|i| format!("t{i}: v\r\n")).collect();
        let many_trailers = format!("1\r\na\r\n0\r\n{fields}\r\n");
        for bad in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],    // no hex digit (httparse reads 0)
            b"+5\r\nhello\r\n0\r\n\r\n",       // sign
            b"0x5\r\nhello\r\n0\r\n\r\n",      // 0x
            b"5\nhello\r\n0\r\n\r\n",          // bare LF
            b"5\r\nhello\n0\r\n\r\n",          // data not followed by CRLF
            b"5\r\nhelloXX0\r\n\r\n",          // data not followed by CRLF
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n", // NUL in extension
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",   // CR in extension
            b"5 x\r\nhello\r\n0\r\n\r\n",      // junk after size
            b"5\x0c\r\nhello\r\n0\r\n\r\n",    // a form feed after the size
            b"11111111111111111\r\n",          // 17 hex digits: overflow
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", // trailer without a colon
            many_trailers.as_bytes(),          // more trailer fields than a head may have
            b"5\r\nhello\r\n0\r\n\r",          // incomplete
        ] {
            assert!(
                decode_all(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_long_line_is_refused_before_it_ends() {
        let mut d = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&[b'1'; 5000][..]);
        assert!(d.decode(&mut buf).is_err());
    }
}
