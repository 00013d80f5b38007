//! `grpc`: a route target that translates REST/JSON requests into gRPC calls from
//! `.proto` contracts (compiled at load, no `protoc`), by `google.api.http` annotations
//! and explicit bindings. The structural checks are here; the contracts, the bindings and
//! their fields are checked when the route is compiled (`targets::grpc`). See
//! docs/grpc.md.

use serde::{Deserialize, Serialize};

use super::error::Problems;
use super::units::Size;

/// A route's `grpc` block.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSpec {
    /// The upstream serving the gRPC services (`protocol: h2c` or `h2`).
    pub upstream: String,
    /// `.proto` files compiled at load, relative to the config file's folder or an
    /// `include` path. `google/protobuf/*`, `google/api/{annotations,http,httpbody}` and
    /// `google/rpc/status` are bundled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protos: Vec<String>,
    /// Import paths, relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// A compiled `FileDescriptorSet` (with its imports), instead of `protos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_set: Option<String>,
    /// Services whose `google.api.http` annotated methods become bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Explicit bindings, for methods without annotations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<BindingSpec>,
    /// The JSON mapping's options.
    #[serde(default)]
    pub json: JsonSpec,
    /// The largest message accepted from the upstream (502 past it) and sent to it.
    #[serde(default = "four_mib")]
    pub max_message: Size,
    /// How server-streaming answers are written: `ndjson` (one JSON message per line,
    /// default) or `sse` (Server-Sent Events; also chosen per request by
    /// `Accept: text/event-stream`).
    #[serde(default)]
    pub stream: StreamAs,
    /// Client request headers sent as gRPC metadata (besides the request id and
    /// `traceparent`, always sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<String>,
    /// Response metadata (headers or trailers) returned as response headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<String>,
}

fn four_mib() -> Size {
    Size(4 << 20)
}

/// `grpc.json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonSpec {
    /// `reject` (400) or `ignore` an unknown field in a request body or query.
    pub unknown_fields: UnknownFields,
    /// Write fields that hold their default value (0, "", false, empty lists).
    pub emit_defaults: bool,
    /// Enum values as `names` (default) or `numbers`.
    pub enums_as: EnumsAs,
    /// Field names as `json` (lowerCamelCase, default) or `proto` (as declared).
    pub field_names: FieldNames,
    /// The deepest nesting accepted in a request body.
    pub max_depth: u32,
}

impl Default for JsonSpec {
    fn default() -> Self {
        Self {
            unknown_fields: UnknownFields::Reject,
            emit_defaults: false,
            enums_as: EnumsAs::Names,
            field_names: FieldNames::Json,
            max_depth: 64,
        }
    }
}

/// What an unknown field does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// 400 naming the field.
    Reject,
    /// Left out.
    Ignore,
}

/// How a server-streaming answer is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamAs {
    /// `application/x-ndjson`: one message per line.
    #[default]
    Ndjson,
    /// `text/event-stream`: one `data:` event per message.
    Sse,
}

/// How enum values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnumsAs {
    /// `"PAID"`.
    Names,
    /// `2`.
    Numbers,
}

/// How field names are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldNames {
    /// `orderId` (the proto3 JSON mapping).
    Json,
    /// `order_id`.
    Proto,
}

/// One explicit binding: exactly one of the method keys with its path template.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BindingSpec {
    /// `GET` this path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
    /// `POST` this path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    /// `PUT` this path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put: Option<String>,
    /// `PATCH` this path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// `DELETE` this path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
    /// The method: `package.Service/Method`.
    pub call: String,
    /// `*` (the body is the request message), a field name (the body is that field), or
    /// none (no body; fields come from the path and the query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A field of the response message sent as the body instead of the whole message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

impl BindingSpec {
    /// The method and path template.
    pub fn pattern(&self) -> Vec<(&'static str, &str)> {
        [
            ("GET", &self.get),
            ("POST", &self.post),
            ("PUT", &self.put),
            ("PATCH", &self.patch),
            ("DELETE", &self.delete),
        ]
        .into_iter()
        .filter_map(|(m, p)| p.as_deref().map(|p| (m, p)))
        .collect()
    }
}

/// Checks what can be checked without compiling the contracts.
pub fn check(path: &str, spec: &GrpcSpec, upstreams: &dyn Fn(&str) -> bool, p: &mut Problems) {
    if !upstreams(&spec.upstream) {
        p.push(
            format!("{path}.upstream"),
            format!("no upstream named `{}`", spec.upstream),
        );
    }
    match (spec.protos.is_empty(), &spec.descriptor_set) {
        (true, None) => p.push(
            path.to_string(),
            "give `protos` (files compiled at load) or `descriptor_set`",
        ),
        (false, Some(_)) => p.push(
            path.to_string(),
            "give `protos` or `descriptor_set`, not both",
        ),
        _ => {}
    }
    if spec.services.is_empty() && spec.bindings.is_empty() {
        p.push(
            path.to_string(),
            "give `services` (annotated methods) and/or `bindings`",
        );
    }
    for (i, b) in spec.bindings.iter().enumerate() {
        let at = format!("{path}.bindings[{i}]");
        if b.pattern().len() != 1 {
            p.push(
                at.clone(),
                "give exactly one of `get`, `post`, `put`, `patch`, `delete`",
            );
        }
        if b.call
            .split_once('/')
            .is_none_or(|(s, m)| s.is_empty() || m.is_empty())
        {
            p.push(format!("{at}.call"), "write `package.Service/Method`");
        }
    }
    if spec.json.max_depth == 0 || spec.json.max_depth > 100 {
        p.push(
            format!("{path}.json.max_depth"),
            "must be between 1 and 100",
        );
    }
    if spec.max_message.0 == 0 {
        p.push(format!("{path}.max_message"), "must be more than 0");
    }
    for (field, names) in [
        ("request_headers", &spec.request_headers),
        ("response_headers", &spec.response_headers),
    ] {
        for (i, n) in names.iter().enumerate() {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                p.push(format!("{path}.{field}[{i}]"), "not a valid header name");
            }
        }
    }
}
