//! `grpc`: REST/JSON to gRPC transcoding from `.proto` contracts.
//!
//! At load, the contracts are compiled (protox, no `protoc`) into a descriptor pool; the
//! `google.api.http` annotations of the listed services and the explicit `bindings`
//! become rules: an HTTP method, a path template, the gRPC method, and where the
//! request message's fields come from (the body, the path, the query). Every field path
//! is resolved then, so a binding that names a missing field is a config error.
//!
//! Per request: the rule is found by method and path; a JSON tree is made from the body,
//! the path variables and the query parameters (typed by their fields), checked for
//! depth, and turned into the request message by the proto3 JSON mapping (prost-reflect),
//! so bad input is a 400 naming the field and never reaches the service. The message is
//! sent as one gRPC frame through [`Forward`] (the upstream's balancer, breaker, retries
//! and timeouts apply; the remaining budget goes as `grpc-timeout`), the answer's frame
//! is decoded and written as JSON, and a non-zero `grpc-status` becomes the HTTP status
//! of the standard table with `grpc-message` and the `google.rpc.Status` details in the
//! JSON error. See docs/grpc.md.

pub mod path;
pub(crate) mod protos;
pub mod web;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, TE};
use http::{HeaderMap, Method, StatusCode, Uri};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, SerializeOptions,
};
use serde_json::Value;

use self::path::PathTemplate;
use super::{Binding, Forward};
use crate::config::grpc::{BindingSpec, EnumsAs, FieldNames, GrpcSpec, UnknownFields};
use crate::config::Problems;
use crate::http::{Body, GatewayError, Request, Response};
use crate::pipeline::RequestCtx;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Where a request message's body comes from.
#[derive(Debug, Clone)]
enum BodyRule {
    /// No body: the fields come from the path and the query.
    None,
    /// `body: "*"`: the body is the request message.
    Whole,
    /// `body: field`: the body is that field.
    Field(FieldDescriptor),
}

/// One HTTP binding of a gRPC method.
pub struct Rule {
    method: Method,
    template: PathTemplate,
    grpc: MethodDescriptor,
    target: Uri,
    body: BodyRule,
    response_body: Option<FieldDescriptor>,
    /// Each path variable's field path.
    vars: Vec<Vec<FieldDescriptor>>,
}

impl Rule {
    /// `GET /v1/orders/{id} -> api.OrderService/GetOrder`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} -> {}/{}",
            self.method,
            self.template.text(),
            self.grpc.parent_service().full_name(),
            self.grpc.name()
        )
    }
}

/// A compiled `grpc` target.
pub struct Grpc {
    rules: Vec<Rule>,
    binding: Binding,
    forward: Forward,
    pool: DescriptorPool,
    de: DeserializeOptions,
    ser: SerializeOptions,
    reject_unknown: bool,
    proto_names: bool,
    max_depth: u32,
    max_message: u64,
    sse: bool,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
}

impl Grpc {
    /// Compiles a route's `grpc` block; `base` is the config file's folder.
    pub fn build(
        path: &str,
        spec: &GrpcSpec,
        base: Option<&std::path::Path>,
        binding: Binding,
        forward: Forward,
        p: &mut Problems,
    ) -> Option<Self> {
        let base = base.unwrap_or(std::path::Path::new("."));
        let pool = match protos::pool(spec, base) {
            Ok(pool) => pool,
            Err((field, e)) => {
                p.push(format!("{path}.{field}"), e);
                return None;
            }
        };
        let before = p.count();
        let mut rules: Vec<Rule> = Vec::new();
        let mut add = |at: String, rule: Result<Rule, String>, p: &mut Problems| match rule {
            Ok(r) => {
                if let Some(other) = rules
                    .iter()
                    .find(|o| o.method == r.method && o.template.text() == r.template.text())
                {
                    p.push(
                        at,
                        format!(
                            "two bindings for `{} {}`: {} and {}/{}",
                            r.method,
                            r.template.text(),
                            other.describe(),
                            r.grpc.parent_service().full_name(),
                            r.grpc.name()
                        ),
                    );
                } else {
                    rules.push(r);
                }
            }
            Err(e) => p.push(at, e),
        };
        let http_ext = pool.get_extension_by_name("google.api.http");
        for (i, name) in spec.services.iter().enumerate() {
            let at = format!("{path}.services[{i}]");
            let Some(service) = pool.get_service_by_name(name) else {
                p.push(at, format!("no service `{name}` in the contracts"));
                continue;
            };
            let mut annotated = 0;
            for method in service.methods() {
                let Some(ext) = &http_ext else { break };
                let options = method.options();
                if !options.has_extension(ext) {
                    continue;
                }
                let value = options.get_extension(ext);
                let Some(rule) = value.as_message() else {
                    continue;
                };
                let mut stack = vec![rule.clone()];
                while let Some(r) = stack.pop() {
                    if let Some(more) = r
                        .get_field_by_name("additional_bindings")
                        .and_then(|v| v.as_list().map(|l| l.to_vec()))
                    {
                        stack.extend(more.into_iter().filter_map(|v| v.as_message().cloned()));
                    }
                    annotated += 1;
                    let made = annotation(&r).and_then(|b| {
                        let (b, custom) = b;
                        let mut rule = make_rule(&method, &b)
                            .map_err(|e| format!("{}: {e}", method.full_name()))?;
                        if let Some(kind) = custom {
                            // Checked to be a method token when the annotation was read.
                            rule.method =
                                Method::from_bytes(kind.as_bytes()).unwrap_or(Method::GET);
                        }
                        Ok(rule)
                    });
                    add(at.clone(), made, p);
                }
            }
            if annotated == 0 && spec.bindings.is_empty() {
                p.push(
                    at,
                    format!(
                        "`{name}` has no method with a google.api.http annotation; add `bindings`"
                    ),
                );
            }
        }
        for (i, b) in spec.bindings.iter().enumerate() {
            let at = format!("{path}.bindings[{i}]");
            let Some((service, method)) = b.call.split_once('/') else {
                continue;
            };
            let Some(m) = pool
                .get_service_by_name(service)
                .and_then(|s| s.methods().find(|m| m.name() == method))
            else {
                p.push(
                    format!("{at}.call"),
                    format!("no method `{}` in the contracts", b.call),
                );
                continue;
            };
            add(at, make_rule(&m, b), p);
        }
        if p.count() > before {
            return None;
        }
        let j = &spec.json;
        Some(Self {
            rules,
            binding,
            forward,
            pool,
            de: DeserializeOptions::new()
                .deny_unknown_fields(j.unknown_fields == UnknownFields::Reject),
            ser: SerializeOptions::new()
                .skip_default_fields(!j.emit_defaults)
                .use_enum_numbers(j.enums_as == EnumsAs::Numbers)
                .use_proto_field_name(j.field_names == FieldNames::Proto)
                .stringify_64_bit_integers(true),
            reject_unknown: j.unknown_fields == UnknownFields::Reject,
            proto_names: j.field_names == FieldNames::Proto,
            max_depth: j.max_depth,
            max_message: spec.max_message.0,
            sse: spec.stream == crate::config::grpc::StreamAs::Sse,
            request_headers: names(&spec.request_headers),
            response_headers: names(&spec.response_headers),
        })
    }

    /// The bindings, for `GET /routes` and `explain`.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The upstream.
    pub fn upstream(&self) -> &str {
        &self.binding.cluster.name
    }

    /// The rule a request takes, or the methods that would match its path.
    pub fn find(&self, method: &Method, path: &str) -> Result<(&Rule, Vec<String>), Vec<&Method>> {
        let mut allowed = Vec::new();
        for r in &self.rules {
            if let Some(values) = r.template.matches(path) {
                if r.method == *method {
                    return Ok((r, values));
                }
                allowed.push(&r.method);
            }
        }
        Err(allowed)
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        format!(
            "grpc `{}` ({} bindings)",
            self.binding.cluster.name,
            self.rules.len()
        )
    }

    /// Transcodes one request.
    pub async fn call(&self, ctx: &mut RequestCtx, req: Request) -> Result<Response, GatewayError> {
        let (rule, values) = match self.find(&ctx.method, ctx.uri.path()) {
            Ok(found) => found,
            Err(allowed) if allowed.is_empty() => return Err(GatewayError::RouteNotFound),
            Err(allowed) => {
                let mut list: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
                list.sort_unstable();
                list.dedup();
                return Err(GatewayError::MethodNotAllowed {
                    allow: HeaderValue::from_str(&list.join(", "))
                        .unwrap_or(HeaderValue::from_static("")),
                });
            }
        };
        let (parts, body) = req.into_parts();
        let messages = if rule.grpc.is_client_streaming() {
            self.request_stream(rule, &values, body).await?
        } else {
            vec![self.request_message(rule, &values, &parts, body).await?]
        };
        let mut frame = BytesMut::new();
        for message in &messages {
            let encoded = message.encode_to_vec();
            if encoded.len() as u64 > self.max_message {
                return Err(GatewayError::PayloadTooLarge);
            }
            frame.put_u8(0);
            frame.put_u32(encoded.len() as u32);
            frame.extend_from_slice(&encoded);
        }
        let sse = rule.grpc.is_server_streaming()
            && (self.sse
                || parts
                    .headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("text/event-stream")));
        let mut headers = HeaderMap::with_capacity(8 + self.request_headers.len());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        for name in TRACE_HEADERS.iter().chain(&self.request_headers) {
            for v in parts.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let mut child = ctx.child(Method::POST, rule.target.clone());
        let mut up = http::Request::new(Body::full(frame.freeze()));
        *up.method_mut() = Method::POST;
        *up.uri_mut() = rule.target.clone();
        *up.headers_mut() = headers;
        let started = tokio::time::Instant::now();
        let result = self.forward.forward(&mut child, up, &self.binding).await;
        ctx.upstream = child.upstream.take();
        ctx.endpoint = child.endpoint;
        ctx.upstream_time = child.upstream_time;
        if child.stats.is_some() {
            ctx.stats = child.stats.take();
        }
        let resp = result?;
        let answered = if rule.grpc.is_server_streaming() {
            self.stream_answer(rule, resp, sse, ctx.request_id_str())
                .await
        } else {
            self.answer(rule, resp).await
        };
        // A service that honours `grpc-timeout` (tonic, grpc-go) ends the call with
        // CANCELLED when the budget we sent runs out: that is the deadline, a 504.
        match answered {
            Err(GatewayError::Grpc {
                code: 1,
                message,
                details,
                headers,
            }) if started.elapsed() + std::time::Duration::from_millis(5)
                >= self.binding.timeouts.request =>
            {
                Err(GatewayError::Grpc {
                    code: 4,
                    message,
                    details,
                    headers,
                })
            }
            other => other,
        }
    }

    /// The request message from the body, the path variables and the query.
    async fn request_message(
        &self,
        rule: &Rule,
        values: &[String],
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<DynamicMessage, GatewayError> {
        let mut root = Value::Object(serde_json::Map::new());
        // A `google.api.HttpBody` body is the raw bytes and their content type.
        let mut raw: Option<(Option<FieldDescriptor>, DynamicMessage)> = None;
        if !matches!(rule.body, BodyRule::None) {
            // The route's `max_body` bounds the body as it streams; this is a last guard.
            let bytes = read_all(body, 64 << 20).await?;
            let target = match &rule.body {
                BodyRule::Whole if is_http_body(&rule.grpc.input()) => {
                    Some((None, rule.grpc.input()))
                }
                BodyRule::Field(f) => match f.kind() {
                    Kind::Message(m) if is_http_body(&m) && !f.is_list() => {
                        Some((Some(f.clone()), m))
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some((field, desc)) = target {
                let mut m = DynamicMessage::new(desc);
                let content_type = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream");
                m.set_field_by_name(
                    "content_type",
                    prost_reflect::Value::String(content_type.into()),
                );
                m.set_field_by_name("data", prost_reflect::Value::Bytes(bytes.clone()));
                raw = Some((field, m));
            } else if !bytes.iter().all(u8::is_ascii_whitespace) {
                let v = parse_body(&bytes, self.max_depth)?;
                match &rule.body {
                    BodyRule::Whole => {
                        if !v.is_object() {
                            return Err(invalid("the body must be a JSON object".into()));
                        }
                        root = v;
                    }
                    BodyRule::Field(f) => {
                        root[f.json_name()] = v;
                    }
                    BodyRule::None => {}
                }
            }
        }
        for (fields, value) in rule.vars.iter().zip(values) {
            set(&mut root, fields, typed(fields, value), false);
        }
        if let Some(query) = parts.uri.query() {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let (k, v) = (
                    crate::targets::compose::template::decode_form(k),
                    crate::targets::compose::template::decode_form(v),
                );
                let Some(fields) = field_path(&rule.grpc.input(), &k) else {
                    if self.reject_unknown {
                        return Err(invalid(format!("unknown query parameter `{k}`")));
                    }
                    continue;
                };
                if rule.vars.iter().any(|p| same(p, &fields)) {
                    continue; // the path's value wins
                }
                let repeated = fields.last().is_some_and(|f| f.is_list());
                set(&mut root, &fields, typed(&fields, &v), repeated);
            }
        }
        match raw {
            Some((None, whole)) => Ok(whole),
            Some((Some(field), body)) => {
                let mut m = to_message(&rule.grpc.input(), root, &self.de)?;
                m.set_field(&field, prost_reflect::Value::Message(body));
                Ok(m)
            }
            None => to_message(&rule.grpc.input(), root, &self.de),
        }
    }

    /// The messages of a client-streaming call: an NDJSON body, one message per line
    /// (the path's variables set in each).
    async fn request_stream(
        &self,
        rule: &Rule,
        values: &[String],
        body: Body,
    ) -> Result<Vec<DynamicMessage>, GatewayError> {
        let bytes = read_all(body, 64 << 20).await?;
        let mut out = Vec::new();
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut v = parse_body(line, self.max_depth)
                .map_err(|e| invalid(format!("line {}: {}", n + 1, text_of(&e))))?;
            if !v.is_object() {
                return Err(invalid(format!(
                    "line {}: a message must be a JSON object",
                    n + 1
                )));
            }
            for (fields, value) in rule.vars.iter().zip(values) {
                set(&mut v, fields, typed(fields, value), false);
            }
            let m = to_message(&rule.grpc.input(), v, &self.de)
                .map_err(|e| invalid(format!("line {}: {}", n + 1, text_of(&e))))?;
            out.push(m);
        }
        Ok(out)
    }

    /// A server-streaming answer: each message written as it arrives, as an NDJSON line
    /// or a Server-Sent Event; a status that ends the stream with an error after the
    /// head is written as a last `{"error": ...}` line (or an `error` event).
    async fn stream_answer(
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
    async fn answer(&self, rule: &Rule, resp: Response) -> Result<Response, GatewayError> {
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

/// `google.rpc.Status` details as JSON: each `Any` decoded when its type is in the
/// contracts, otherwise only its `@type`.
fn details(pool: &DescriptorPool, ser: &SerializeOptions, b64: &[u8]) -> Option<Value> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(
            b64.strip_suffix(b"==")
                .or(b64.strip_suffix(b"="))
                .unwrap_or(b64),
        )
        .ok()?;
    let status = protos::Status::decode(raw.as_slice()).ok()?;
    let list = status
        .details
        .iter()
        .map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or("");
            let mut v = pool
                .get_message_by_name(name)
                .and_then(|d| DynamicMessage::decode(d, any.value.as_slice()).ok())
                .and_then(|m| {
                    let mut out = Vec::new();
                    let mut s = serde_json::Serializer::new(&mut out);
                    m.serialize_with_options(&mut s, ser).ok()?;
                    serde_json::from_slice::<Value>(&out).ok()
                })
                .filter(Value::is_object)
                .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
            v["@type"] = Value::from(any.type_url.clone());
            v
        })
        .collect();
    Some(Value::Array(list))
}

/// A request body as JSON: nesting checked on the bytes first (catalogue E66).
pub(crate) fn parse_body(bytes: &[u8], max_depth: u32) -> Result<Value, GatewayError> {
    if !crate::targets::compose::shape::depth_within(bytes, max_depth) {
        return Err(invalid(format!(
            "the body nests deeper than {max_depth} levels"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("the body is not valid JSON: {e}")))
}

/// A JSON tree as a message of `desc` by the proto3 JSON mapping; the error names the
/// failing value's place (`items[0].quantity: ...`).
pub(crate) fn to_message(
    desc: &MessageDescriptor,
    root: Value,
    options: &DeserializeOptions,
) -> Result<DynamicMessage, GatewayError> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(root, &mut track);
    DynamicMessage::deserialize_with_options(desc.clone(), de, options).map_err(|e| {
        let at = track.path().to_string();
        if at.is_empty() || at == "." {
            invalid(format!("invalid request: {e}"))
        } else {
            invalid(format!("invalid request: {at}: {e}"))
        }
    })
}

/// Whether a message type is `google.api.HttpBody` (a raw body and its content type).
fn is_http_body(desc: &MessageDescriptor) -> bool {
    desc.full_name() == "google.api.HttpBody"
}

/// The content type (default `application/octet-stream`) and bytes of an HttpBody.
fn http_body_parts(m: &DynamicMessage) -> (String, Bytes) {
    let content_type = m
        .get_field_by_name("content_type")
        .and_then(|v| v.as_str().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "application/octet-stream".into());
    let data = m
        .get_field_by_name("data")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    (content_type, data)
}

/// The `grpc-status` of a head or trailers.
fn status_of(meta: &HeaderMap) -> Option<u32> {
    meta.get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The error of a non-zero `grpc-status`, with its message and details.
fn grpc_error(code: u32, meta: &HeaderMap, grpc: &Grpc, headers: HeaderMap) -> GatewayError {
    status_error(code, meta, &grpc.pool, &grpc.ser, headers)
}

fn status_error(
    code: u32,
    meta: &HeaderMap,
    pool: &DescriptorPool,
    ser: &SerializeOptions,
    headers: HeaderMap,
) -> GatewayError {
    let message = meta
        .get(&GRPC_MESSAGE)
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let details = meta
        .get(&GRPC_DETAILS)
        .and_then(|v| details(pool, ser, v.as_bytes()));
    GatewayError::Grpc {
        code,
        message,
        details,
        headers: Box::new(headers),
    }
}

/// The state of a server-streaming answer.
struct Streaming {
    body: Body,
    buf: BytesMut,
    desc: MessageDescriptor,
    ser: SerializeOptions,
    sse: bool,
    max: u64,
    done: bool,
    request_id: String,
    upstream: String,
    pool: DescriptorPool,
    /// The messages are `google.api.HttpBody`: their bytes are the answer.
    raw: bool,
    /// The first HttpBody message's content type.
    content_type: Option<String>,
}

type Chunk = Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

impl Streaming {
    /// The next chunk for the client: a message, a final error, or the end.
    async fn next(mut self) -> Option<(Chunk, Self)> {
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
    async fn pull(&mut self) -> Option<Result<Vec<u8>, GatewayError>> {
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
    fn chunk(&self, json: Vec<u8>) -> Bytes {
        if self.raw {
            Bytes::from(json)
        } else {
            self.wrap(&json, false)
        }
    }

    fn fail(&mut self, cause: &str) -> GatewayError {
        self.done = true;
        tracing::warn!(request_id = self.request_id, cause, "gRPC stream failed");
        GatewayError::UpstreamProtocol {
            upstream: self.upstream.clone(),
            cause: cause.to_string(),
        }
    }

    fn error_chunk(&self, err: GatewayError) -> Bytes {
        let resp = err.into_response(&self.request_id);
        let body = match resp.into_body() {
            Body::Full(Some(b)) => b,
            _ => Bytes::new(),
        };
        self.wrap(&body, true)
    }

    /// One NDJSON line, or one event.
    fn wrap(&self, json: &[u8], error: bool) -> Bytes {
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

fn names(list: &[String]) -> Vec<HeaderName> {
    list.iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// The text of an `invalid_request` error (or its code for any other).
fn text_of(e: &GatewayError) -> String {
    match e {
        GatewayError::InvalidRequest(m) => m.clone(),
        other => other.code().to_string(),
    }
}

fn invalid(message: String) -> GatewayError {
    GatewayError::InvalidRequest(message)
}

/// Reads a request body up to `cap` bytes.
async fn read_all(mut body: Body, cap: u64) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.downcast_ref::<crate::http::BodyError>() {
            Some(crate::http::BodyError::TooLarge { .. }) => GatewayError::PayloadTooLarge,
            Some(crate::http::BodyError::Idle { .. }) => GatewayError::RequestTimeout,
            _ => GatewayError::BadRequest("request body could not be read"),
        })?;
        if let Ok(d) = frame.into_data() {
            if (buf.len() + d.len()) as u64 > cap {
                return Err(GatewayError::PayloadTooLarge);
            }
            buf.extend_from_slice(&d);
        }
    }
    Ok(buf.freeze())
}

fn same(a: &[FieldDescriptor], b: &[FieldDescriptor]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.full_name() == y.full_name())
}

/// A dotted field path (proto or JSON names) through nested singular messages.
fn field_path(desc: &MessageDescriptor, path: &str) -> Option<Vec<FieldDescriptor>> {
    let mut out = Vec::new();
    let mut at = desc.clone();
    let steps: Vec<&str> = path.split('.').collect();
    for (i, step) in steps.iter().enumerate() {
        let f = at
            .get_field_by_name(step)
            .or_else(|| at.get_field_by_json_name(step))?;
        if i + 1 < steps.len() {
            match f.kind() {
                Kind::Message(m) if !f.is_list() && !f.is_map() => at = m,
                _ => return None,
            }
        }
        out.push(f);
    }
    Some(out)
}

/// A text value as the JSON its field takes: booleans and numbers (of the kinds JSON
/// writes as numbers) unquoted when they parse, everything else a string (the proto3
/// JSON mapping reads 64-bit integers, enums, bytes, timestamps and durations from
/// strings).
fn typed(fields: &[FieldDescriptor], text: &str) -> Value {
    let Some(f) = fields.last() else {
        return Value::from(text);
    };
    match f.kind() {
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::from(text),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(text)),
        Kind::Float | Kind::Double => text
            .parse::<f64>()
            .ok()
            .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
            .unwrap_or_else(|| Value::from(text)),
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::from(text),
        },
        _ => Value::from(text),
    }
}

/// Sets (or, for a repeated field, appends) `value` at `fields` in the JSON tree.
fn set(root: &mut Value, fields: &[FieldDescriptor], value: Value, append: bool) {
    let mut at = root;
    for (i, f) in fields.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = at else { return };
        let slot = map.entry(f.json_name().to_string()).or_insert(Value::Null);
        if i + 1 == fields.len() {
            if append {
                match slot {
                    Value::Array(items) => items.push(value),
                    other => *other = Value::Array(vec![value]),
                }
            } else {
                *slot = value;
            }
            return;
        }
        at = slot;
    }
}

/// The binding a `google.api.http` rule describes.
fn annotation(rule: &DynamicMessage) -> Result<(BindingSpec, Option<String>), String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
    };
    let mut b = BindingSpec {
        get: text("get"),
        post: text("post"),
        put: text("put"),
        patch: text("patch"),
        delete: text("delete"),
        call: String::new(),
        body: text("body"),
        response_body: text("response_body"),
    };
    // `custom: {kind: "HEAD", path: ...}`: any method token.
    let mut custom = None;
    if b.pattern().is_empty() {
        if let Some(c) = rule
            .get_field_by_name("custom")
            .and_then(|v| v.as_message().cloned())
        {
            let field = |name: &str| {
                c.get_field_by_name(name)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .filter(|s| !s.is_empty())
            };
            let (Some(kind), Some(path)) = (field("kind"), field("path")) else {
                return Err("a `custom` pattern needs a `kind` and a `path`".into());
            };
            if Method::from_bytes(kind.as_bytes()).is_err() {
                return Err(format!("`custom` kind `{kind}` is not a method"));
            }
            b.get = Some(path);
            custom = Some(kind);
        }
    }
    if b.pattern().len() != 1 {
        return Err("the google.api.http annotation names no pattern".into());
    }
    Ok((b, custom))
}

/// A rule for `method` bound as `b` says.
fn make_rule(method: &MethodDescriptor, b: &BindingSpec) -> Result<Rule, String> {
    let Some(&(verb, text)) = b.pattern().first() else {
        return Err("no method and path".into());
    };
    let template = PathTemplate::parse(text)?;
    let input = method.input();
    let mut vars = Vec::new();
    for v in template.vars() {
        let name = v.field.join(".");
        let fields = field_path(&input, &name).ok_or_else(|| {
            format!(
                "`{{{name}}}` in `{text}`: `{}` has no field `{name}`",
                input.full_name()
            )
        })?;
        let last = fields.last().expect("a field path has one step at least");
        if last.is_list() || last.is_map() || matches!(last.kind(), Kind::Message(_)) {
            return Err(format!(
                "`{{{name}}}` in `{text}` must name a singular scalar field"
            ));
        }
        vars.push(fields);
    }
    let body =
        match b.body.as_deref() {
            None | Some("") => BodyRule::None,
            Some("*") => BodyRule::Whole,
            Some(f) => BodyRule::Field(input.get_field_by_name(f).ok_or_else(|| {
                format!("body `{f}`: `{}` has no field `{f}`", input.full_name())
            })?),
        };
    let response_body = match b.response_body.as_deref() {
        None | Some("") => None,
        Some(f) => Some(method.output().get_field_by_name(f).ok_or_else(|| {
            format!(
                "response_body `{f}`: `{}` has no field `{f}`",
                method.output().full_name()
            )
        })?),
    };
    let target: Uri = format!("/{}/{}", method.parent_service().full_name(), method.name())
        .parse()
        .map_err(|_| "the method's name is not a valid path".to_string())?;
    Ok(Rule {
        method: Method::from_bytes(verb.as_bytes()).map_err(|_| "bad method".to_string())?,
        template,
        grpc: method.clone(),
        target,
        body,
        response_body,
        vars,
    })
}
