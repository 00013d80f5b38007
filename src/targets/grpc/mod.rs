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

mod answer;
pub mod path;
pub(crate) mod protos;
mod request;
mod rules;
mod status;
mod stream;
pub mod web;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, TE};
use http::{HeaderMap, Method};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;

use super::{Binding, Forward};
use crate::config::grpc::{EnumsAs, FieldNames, GrpcSpec, UnknownFields};
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

pub use rules::Rule;
use rules::*;
use status::*;
use stream::*;

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
pub(crate) async fn read_all(mut body: Body, cap: u64) -> Result<Bytes, GatewayError> {
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
