//! The body of a server-streaming answer: gRPC frames read from the upstream, each
//! message written as an NDJSON line or a Server-Sent Event as it arrives, a status that
//! ends the stream with an error written as a last error line or event.

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use super::*;

/// The state of a server-streaming answer.
pub(super) struct Streaming {
    pub(super) body: Body,
    pub(super) buf: BytesMut,
    pub(super) desc: MessageDescriptor,
    pub(super) ser: SerializeOptions,
    pub(super) sse: bool,
    pub(super) max: u64,
    pub(super) done: bool,
    pub(super) request_id: String,
    pub(super) upstream: String,
    pub(super) pool: DescriptorPool,
    /// The messages are `google.api.HttpBody`: their bytes are the answer.
    pub(super) raw: bool,
    /// The first HttpBody message's content type.
    pub(super) content_type: Option<String>,
}

pub(super) type Chunk = Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

impl Streaming {
    /// The next chunk for the client: a message, a final error, or the end.
    pub(super) async fn next(mut self) -> Option<(Chunk, Self)> {
        let chunk = match self.pull().await? {
            Ok(json) => self.chunk(json),
            Err(e) if self.raw => {
                // Raw bytes cannot carry an error line: the body breaks off instead.
                self.done = true;
                let err: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
                return Some((Err(err), self));
            }
            Err(e) => {
                self.done = true;
                self.error_chunk(e)
            }
        };
        Some((Ok(http_body::Frame::data(chunk)), self))
    }

    /// The next message as JSON, the error that ends the stream, or its clean end.
    pub(super) async fn pull(&mut self) -> Option<Result<Vec<u8>, GatewayError>> {
        use http_body_util::BodyExt;
        if self.done {
            return None;
        }
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if self.buf[0] != 0 {
                    return Some(Err(self.fail("a compressed message (none was asked for)")));
                }
                if u64::from(len) > self.max {
                    return Some(Err(self.fail("a message over max_message")));
                }
                if self.buf.len() >= 5 + len as usize {
                    let frame = self.buf.split_to(5 + len as usize).freeze();
                    let Ok(m) = DynamicMessage::decode(self.desc.clone(), frame.slice(5..)) else {
                        return Some(Err(self.fail("a message that does not decode")));
                    };
                    if self.raw {
                        let (content_type, data) = http_body_parts(&m);
                        self.content_type.get_or_insert(content_type);
                        return Some(Ok(data.to_vec()));
                    }
                    let mut out = Vec::new();
                    let mut s = serde_json::Serializer::new(&mut out);
                    if m.serialize_with_options(&mut s, &self.ser).is_err() {
                        return Some(Err(self.fail("a message without a JSON form")));
                    }
                    return Some(Ok(out));
                }
            }
            match self.body.frame().await {
                None => return Some(Err(self.fail("the stream ended without grpc-status"))),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(GatewayError::UpstreamReset {
                        upstream: self.upstream.clone(),
                        cause: e.to_string(),
                    }));
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        if (self.buf.len() + d.len()) as u64 > self.max + 5 {
                            return Some(Err(self.fail("a message over max_message")));
                        }
                        self.buf.extend_from_slice(&d);
                    }
                    Err(f) => {
                        let Ok(trailers) = f.into_trailers() else {
                            continue;
                        };
                        self.done = true;
                        return match status_of(&trailers) {
                            Some(0) => None,
                            None => Some(Err(self.fail("no grpc-status"))),
                            Some(code) => Some(Err(status_error(
                                code,
                                &trailers,
                                &self.pool,
                                &self.ser,
                                HeaderMap::new(),
                            ))),
                        };
                    }
                },
            }
        }
    }

    /// A message as the client receives it: raw bytes, an NDJSON line or an event.
    pub(super) fn chunk(&self, json: Vec<u8>) -> Bytes {
        if self.raw {
            Bytes::from(json)
        } else {
            self.wrap(&json, false)
        }
    }

    pub(super) fn fail(&mut self, cause: &str) -> GatewayError {
        self.done = true;
        tracing::warn!(request_id = self.request_id, cause, "gRPC stream failed");
        GatewayError::UpstreamProtocol {
            upstream: self.upstream.clone(),
            cause: cause.to_string(),
        }
    }

    pub(super) fn error_chunk(&self, err: GatewayError) -> Bytes {
        let resp = err.into_response(&self.request_id);
        let body = match resp.into_body() {
            Body::Full(Some(b)) => b,
            _ => Bytes::new(),
        };
        self.wrap(&body, true)
    }

    /// One NDJSON line, or one event.
    pub(super) fn wrap(&self, json: &[u8], error: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(json.len() + 16);
        if self.sse {
            if error {
                out.extend_from_slice(b"event: error\n");
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(json);
            out.extend_from_slice(b"\n\n");
        } else {
            out.extend_from_slice(json);
            out.put_u8(b'\n');
        }
        out.freeze()
    }
}
