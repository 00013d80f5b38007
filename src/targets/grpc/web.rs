//! gRPC-Web: browsers' gRPC-Web calls (binary `application/grpc-web[+proto]` and text
//! `application/grpc-web-text[+proto]`) translated to native gRPC on the same upstream
//! (`grpc_web: true` on a route that forwards to an `h2c` or `h2` upstream), and the
//! answers back: the status trailers become a last frame of the body (flag `0x80`,
//! `name:value\r\n` lines), and in text mode every chunk is base64. CORS is left to the
//! CORS policy.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::HeaderMap;

use crate::http::{Body, GatewayError, Response};

/// The gRPC-Web flavour of a request, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/grpc-web`, `application/grpc-web+proto`.
    Binary,
    /// `application/grpc-web-text`, `application/grpc-web-text+proto`: base64 bodies.
    Text,
}

/// The gRPC-Web mode of a request, if it is one.
pub fn mode(headers: &HeaderMap) -> Option<Mode> {
    let ct = headers.get(CONTENT_TYPE)?.as_bytes();
    if ct.starts_with(b"application/grpc-web-text") {
        Some(Mode::Text)
    } else if ct.starts_with(b"application/grpc-web") {
        Some(Mode::Binary)
    } else {
        None
    }
}

/// Turns a gRPC-Web request into a native one: content type, `te: trailers`, and the
/// body (base64-decoded in text mode).
pub async fn request(
    parts: &mut http::request::Parts,
    body: Body,
    mode: Mode,
) -> Result<Body, GatewayError> {
    let suffix = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('+').map(|(_, s)| s.to_string()));
    let native = match suffix {
        Some(s) => HeaderValue::from_str(&format!("application/grpc+{s}"))
            .unwrap_or(HeaderValue::from_static("application/grpc")),
        None => HeaderValue::from_static("application/grpc"),
    };
    parts.headers.insert(CONTENT_TYPE, native);
    parts
        .headers
        .insert(TE, HeaderValue::from_static("trailers"));
    parts.headers.remove(http::header::ACCEPT);
    if mode == Mode::Binary {
        return Ok(body);
    }
    use http_body_util::BodyExt;
    let text = body
        .collect()
        .await
        .map_err(|_| GatewayError::BadRequest("request body could not be read"))?
        .to_bytes();
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    // Concatenated padded chunks are allowed: decode each 4-byte-aligned run that ends
    // at a padding character separately.
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in split_padded(&clean) {
        let d = base64::engine::general_purpose::STANDARD
            .decode(chunk)
            .map_err(|_| GatewayError::BadRequest("grpc-web-text body is not base64"))?;
        out.extend_from_slice(&d);
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Body::full(Bytes::from(out)))
}

fn split_padded(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let mut end = i;
            while end < b.len() && b[end] == b'=' {
                end += 1;
            }
            out.push(&b[start..end]);
            start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    if start < b.len() {
        out.push(&b[start..]);
    }
    out
}

/// Turns a native gRPC answer into a gRPC-Web one.
pub fn response(resp: Response, mode: Mode) -> Response {
    let (mut head, body) = resp.into_parts();
    let is_grpc = head
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return http::Response::from_parts(head, body);
    }
    head.headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(match mode {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text+proto",
        }),
    );
    head.headers.remove(CONTENT_LENGTH);
    let stream = futures_util::stream::unfold(Some(body), move |state| async move {
        use http_body_util::BodyExt;
        let mut body = state?;
        loop {
            let frame = match body.frame().await {
                None => return None,
                Some(Err(e)) => {
                    let err: Box<dyn std::error::Error + Send + Sync> = e;
                    return Some((Err(err), None));
                }
                Some(Ok(f)) => f,
            };
            let bytes = match frame.into_data() {
                Ok(d) => d,
                Err(f) => match f.into_trailers() {
                    Ok(t) => {
                        let framed = trailer_frame(&t);
                        return Some((Ok(http_body::Frame::data(encode(framed, mode))), None));
                    }
                    Err(_) => continue,
                },
            };
            if bytes.is_empty() {
                continue;
            }
            return Some((Ok(http_body::Frame::data(encode(bytes, mode))), Some(body)));
        }
    });
    let body = Body::Boxed(http_body_util::BodyExt::boxed(
        http_body_util::StreamBody::new(stream),
    ));
    http::Response::from_parts(head, body)
}

fn encode(b: Bytes, mode: Mode) -> Bytes {
    match mode {
        Mode::Binary => b,
        Mode::Text => Bytes::from(base64::engine::general_purpose::STANDARD.encode(&b)),
    }
}

/// The trailers as gRPC-Web's last frame: flag `0x80`, then `name:value\r\n` lines.
fn trailer_frame(t: &HeaderMap) -> Bytes {
    let mut lines = Vec::new();
    for (name, value) in t {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.push(b':');
        lines.extend_from_slice(value.as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + lines.len());
    out.put_u8(0x80);
    out.put_u32(lines.len() as u32);
    out.extend_from_slice(&lines);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_padded_chunks() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web-text+proto"),
        );
        assert_eq!(mode(&h), Some(Mode::Text));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web"),
        );
        assert_eq!(mode(&h), Some(Mode::Binary));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        assert_eq!(mode(&h), None);
        assert_eq!(split_padded(b"QQ==QkM="), vec![&b"QQ=="[..], &b"QkM="[..]]);
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(
            &trailer_frame(&t)[..],
            b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n"
        );
    }
}
