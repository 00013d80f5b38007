//! Routes: what a request must look like (`match`), how its path is rewritten, and what
//! answers it: an upstream, a weighted split between upstreams, a static response, a
//! composition of several calls, a gRPC transcoding, or a message published to a broker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::Size;
use super::upstream::TimeoutsSpec;
use crate::policies::PolicySpec;

/// One route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// A unique name: in logs, metrics, `explain` and `${route}`.
    pub name: String,
    /// Listeners serving this route; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
    /// The conditions a request must meet.
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// How the path is changed before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteSpec>,
    /// The `Host` sent upstream: `preserve` (the client's), `upstream` (the endpoint's
    /// configured address), or a literal host name.
    #[serde(default = "preserve")]
    pub host_header: String,
    /// Target: forward to this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Target: split traffic between upstreams by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSpec>,
    /// Target: answer from the gateway itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondSpec>,
    /// Target: several upstream calls answered as one JSON document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose: Option<super::compose::ComposeSpec>,
    /// Target: REST/JSON transcoded to gRPC calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<super::grpc::GrpcSpec>,
    /// Target: the request published as a message to a broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<super::brokers::PublishSpec>,
    /// Timeouts for this route's upstream calls (override the upstream's).
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// Another copy of a slow idempotent request to another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<super::resilience::HedgeSpec>,
    /// What answers when the upstream cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<super::resilience::FallbackSpec>,
    /// Allow WebSocket upgrades on this route.
    #[serde(default)]
    pub websocket: bool,
    /// Translate browsers' gRPC-Web calls into native gRPC (the upstream must speak
    /// HTTP/2: `protocol: h2c` or `h2`).
    #[serde(default)]
    pub grpc_web: bool,
    /// The largest request body this route accepts (default: the listener's
    /// `limits.max_body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Size>,
    /// Policies of this route, after the inherited defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySpec>,
    /// Inherited default policies to leave out, by `name` or by `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_policies: Vec<String>,
}

fn preserve() -> String {
    "preserve".into()
}

/// The conditions of a route. All given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchSpec {
    /// Host names: exact (`api.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A path pattern matched whole: `/users`, `/users/{id}`, `/files/{*rest}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix matched on segment boundaries: `/api` matches `/api` and `/api/x`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Methods; empty means any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchSpec>,
    /// Query parameter conditions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatchSpec>,
}

/// A condition on one header or query parameter: give exactly one of `exact`, `regex`,
/// `present`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    /// The header or parameter name (headers: case-insensitive).
    pub name: String,
    /// The value must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value must match this regular expression (anchor it yourself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: must be present; `false`: must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A path rewrite: `path` alone, or `strip_prefix` and/or `add_prefix`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteSpec {
    /// Removes this prefix (on a segment boundary) from the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Puts this prefix in front of the (stripped) path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_prefix: Option<String>,
    /// Replaces the path with a template using the route's params: `/v2/users/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A weighted split between upstreams (canary releases, A/B tests).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Keeps one client on one side: `header:NAME`, `cookie:NAME` or `client_ip`.
    /// Without it each request is drawn at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// The upstreams and their weights.
    pub to: Vec<SplitTargetSpec>,
}

/// One side of a split.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTargetSpec {
    /// The upstream.
    pub upstream: String,
    /// Its relative weight; 0 sends it nothing.
    pub weight: u32,
}

/// A response produced by the gateway itself.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    /// The status code.
    #[serde(default = "ok")]
    pub status: u16,
    /// Response headers (values may use `${...}` variables).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A text body (may use `${...}` variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A JSON body; strings in it may use `${...}` variables. Sets `content-type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
}

fn ok() -> u16 {
    200
}
