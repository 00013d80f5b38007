//! The answer side of a call: a unary answer decoded and written as JSON (or raw, for
//! `google.api.HttpBody`), a server stream started, a status turned into its error.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use prost_reflect::{DynamicMessage, Kind};
use serde_json::Value;

use super::*;

impl Grpc {
    /// A server-streaming answer: each message written as it arrives, as an NDJSON line
    /// or a Server-Sent Event; a status that ends the stream with an error after the
    /// head is written as a last `{"error": ...}` line (or an `error` event).
    pub(super) async fn stream_answer(
        &self,
        rule: &Rule,
        resp: Response,
        sse: bool,
        request_id: &str,
    ) -> Result<Response, GatewayError> {
        let upstream = self.binding.cluster.name.to_string();
        let (head, body) = resp.into_parts();
        if head.status != StatusCode::OK {
            return Err(GatewayError::UpstreamProtocol {
                upstream,
                cause: format!("HTTP status {} from a gRPC upstream", head.status),
            });
        }
        let mut extra = HeaderMap::new();
        for name in &self.response_headers {
            for v in head.headers.get_all(name) {
                extra.append(name.clone(), v.clone());
            }
        }
        if let Some(code) = status_of(&head.headers) {
            // Trailers-only: no message, a status.
            if code != 0 {
                return Err(grpc_error(code, &head.headers, self, extra));
            }
        }
        let state = Streaming {
            body,
            buf: BytesMut::new(),
            desc: rule.grpc.output(),
            ser: self.ser.clone(),
            sse,
            max: self.max_message,
            done: status_of(&head.headers).is_some(),
            request_id: request_id.to_string(),
            upstream,
            pool: self.pool.clone(),
            raw: is_http_body(&rule.grpc.output()),
            content_type: None,
        };
        let mut state = state;
        // The head waits for the first message, so that a status before any message
        // is an ordinary error answer with its HTTP status.
        let first = match state.pull().await {
            Some(Err(e)) => return Err(e),
            Some(Ok(json)) => Some(state.chunk(json)),
            None => None,
        };
        // A stream of HttpBody messages is their bytes, with the first one's type.
        let raw_type = state.raw.then(|| {
            state
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into())
        });
        let head_chunk =
            futures_util::stream::iter(first.map(|b| -> Chunk { Ok(http_body::Frame::data(b)) }));
        let stream = futures_util::StreamExt::chain(
            head_chunk,
            futures_util::stream::unfold(state, Streaming::next),
        );
        let body = Body::Boxed(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(stream),
        ));
        let mut resp = http::Response::new(body);
        let h = resp.headers_mut();
        let content_type = match (&raw_type, sse) {
            (Some(t), _) => HeaderValue::from_str(t)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            (None, true) => HeaderValue::from_static("text/event-stream"),
            (None, false) => HeaderValue::from_static("application/x-ndjson"),
        };
        h.insert(CONTENT_TYPE, content_type);
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        h.extend(extra);
        Ok(resp)
    }

    /// The JSON answer (or error) for the upstream's response.
    pub(super) async fn answer(
        &self,
        rule: &Rule,
        resp: Response,
    ) -> Result<Response, GatewayError> {
        let upstream = self.binding.cluster.name.to_string();
        let (head, mut body) = resp.into_parts();
        let protocol = |cause: String| GatewayError::UpstreamProtocol {
            upstream: upstream.clone(),
            cause,
        };
        if head.status != StatusCode::OK {
            return Err(protocol(format!(
                "HTTP status {} from a gRPC upstream",
                head.status
            )));
        }
        // Trailers-only: the status is in the head.
        let mut trailers: Option<HeaderMap> = None;
        let mut data = BytesMut::new();
        if !head.headers.contains_key(&GRPC_STATUS) {
            use http_body_util::BodyExt;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| GatewayError::UpstreamReset {
                    upstream: upstream.clone(),
                    cause: e.to_string(),
                })?;
                match frame.into_data() {
                    Ok(d) => {
                        if (data.len() + d.len()) as u64 > self.max_message + 5 {
                            return Err(protocol(format!(
                                "a message over max_message ({} bytes)",
                                self.max_message
                            )));
                        }
                        data.extend_from_slice(&d);
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                }
            }
        }
        let meta = trailers.as_ref().unwrap_or(&head.headers);
        let code: u32 = meta
            .get(&GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| protocol("no grpc-status".into()))?;
        let mut extra = HeaderMap::new();
        for name in &self.response_headers {
            for v in head
                .headers
                .get_all(name)
                .iter()
                .chain(trailers.iter().flat_map(|t| t.get_all(name).iter()))
            {
                extra.append(name.clone(), v.clone());
            }
        }
        if code != 0 {
            return Err(grpc_error(code, meta, self, extra));
        }
        let mut data = data.freeze();
        if data.len() < 5 {
            return Err(protocol("no response message".into()));
        }
        let compressed = data.get_u8();
        let len = data.get_u32() as usize;
        if compressed != 0 {
            return Err(protocol("a compressed message (none was asked for)".into()));
        }
        if data.len() < len {
            return Err(protocol("a truncated message".into()));
        }
        let message = DynamicMessage::decode(rule.grpc.output(), data.slice(..len))
            .map_err(|e| protocol(format!("the response does not decode: {e}")))?;
        // A `google.api.HttpBody` answer (or `response_body` field) is sent as it is.
        let http_body = match &rule.response_body {
            None if is_http_body(&rule.grpc.output()) => Some(message.clone()),
            Some(f) => match (f.kind(), message.get_field(f).as_message()) {
                (Kind::Message(m), Some(v)) if is_http_body(&m) => Some(v.clone()),
                _ => None,
            },
            None => None,
        };
        if let Some(b) = http_body {
            let (content_type, bytes) = http_body_parts(&b);
            let mut resp = http::Response::new(Body::full(bytes));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_str(&content_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            );
            resp.headers_mut().extend(extra);
            return Ok(resp);
        }
        let mut out = Vec::with_capacity(len * 2 + 16);
        let mut ser = serde_json::Serializer::new(&mut out);
        let json = match &rule.response_body {
            None => message.serialize_with_options(&mut ser, &self.ser),
            Some(f) => {
                // The field as the whole message would write it.
                let mut v = Vec::new();
                let mut s = serde_json::Serializer::new(&mut v);
                let r = message.serialize_with_options(&mut s, &self.ser);
                if r.is_ok() {
                    let whole: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
                    let name = if self.proto_names {
                        f.name()
                    } else {
                        f.json_name()
                    };
                    out = serde_json::to_vec(whole.get(name).unwrap_or(&Value::Null))
                        .unwrap_or_default();
                }
                r
            }
        };
        json.map_err(|e| protocol(format!("the response has no JSON form: {e}")))?;
        let mut resp = http::Response::new(Body::full(Bytes::from(out)));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.headers_mut().extend(extra);
        Ok(resp)
    }
}
