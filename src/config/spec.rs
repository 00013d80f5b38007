//! The top of the configuration file: process settings, listeners, the admin listener,
//! the access log, and defaults shared by routes. Routes and upstreams have their own
//! files. Every struct denies unknown keys, so a typo is an error, not a silent default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::route::RouteSpec;
use super::units::{Dur, Size};
use super::upstream::{TimeoutsSpec, UpstreamSpec};
use crate::policies::PolicySpec;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerSpec,
    /// Where the gateway accepts client traffic. At least one.
    pub listeners: Vec<ListenerSpec>,
    /// The admin listener (metrics, health, config, reload). Off when absent.
    #[serde(default)]
    pub admin: Option<AdminSpec>,
    /// The JSON access log.
    #[serde(default)]
    pub access_log: AccessLogSpec,
    /// Defaults every route inherits.
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Policies shared by every route of some hosts.
    #[serde(default)]
    pub hosts: Vec<HostDefaultsSpec>,
    /// Named identities that authentication policies map credentials to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<super::consumers::ConsumerSpec>,
    /// The Redis connection shared by every Redis-backed feature (`store: redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<super::redis::RedisSpec>,
    /// Plans: the limits a consumer's plan adds to `rate_limit` with `plans: true`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub plans: super::redis::Plans,
    /// Named clusters of endpoints.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// The routes, in any order: priority comes from specificity, not position.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Message brokers, by name: the `publish` target and `subscriptions` use them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub brokers: BTreeMap<String, super::brokers::BrokerSpec>,
    /// Queues whose messages are delivered to HTTP services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<super::brokers::SubscriptionSpec>,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSpec {
    /// Worker threads; 0 means one per CPU core. 1 runs a single-threaded runtime.
    pub workers: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Dur,
    /// Networks whose `X-Forwarded-*` and `Forwarded` headers are believed.
    pub trusted_proxies: Vec<String>,
    /// The pseudonym added to `Via`; empty turns `Via` off.
    pub via: String,
    /// A request that already carries this many `Via` entries with our pseudonym is a loop (508).
    pub max_hops: usize,
    /// The header carrying the correlation id.
    pub request_id_header: String,
    /// Reload when the config file changes on disk.
    pub watch_config: bool,
    /// Request headers that only the gateway may set (identity it derives, client
    /// certificate details): removed from every client request before routing. A name
    /// ending in `*` is a prefix.
    pub internal_headers: Vec<String>,
    /// The headers that tell upstreams which consumer called.
    pub consumer_headers: super::consumers::ConsumerHeadersSpec,
}

/// Headers removed from client requests by default: those Kong, Envoy and this gateway's
/// own policies use to tell upstreams who the caller is.
pub const DEFAULT_INTERNAL_HEADERS: &[&str] = &[
    "x-forwarded-client-cert",
    "x-client-cert*",
    "x-consumer-*",
    "x-credential-*",
    "x-authenticated-*",
    "x-anonymous-consumer",
    "x-gateway-*",
    "x-turnpike-*",
    "x-envoy-*",
];

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            workers: 0,
            shutdown_grace: Dur::secs(30),
            trusted_proxies: Vec::new(),
            via: "turnpike".into(),
            max_hops: 4,
            request_id_header: "x-request-id".into(),
            watch_config: true,
            internal_headers: DEFAULT_INTERNAL_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            consumer_headers: Default::default(),
        }
    }
}

/// One listening socket for client traffic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// A unique name, used by routes and in metrics.
    pub name: String,
    /// `host:port` to bind, e.g. `0.0.0.0:8080` or `[::]:8080`.
    pub address: String,
    /// Policies run for every route served on this listener, before host and route policies.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// Size and count limits (edge-safe defaults).
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Client-side timeouts (edge-safe defaults).
    #[serde(default)]
    pub timeouts: ListenerTimeoutsSpec,
    /// Request acceptance and normalization rules.
    #[serde(default)]
    pub http: HttpRulesSpec,
    /// TLS termination: with it, the listener speaks HTTPS only.
    #[serde(default)]
    pub tls: Option<super::tls::ListenerTlsSpec>,
    /// Answer every request with a redirect to HTTPS (plain listeners only).
    #[serde(default)]
    pub redirect_https: Option<super::tls::RedirectHttpsSpec>,
}

/// Limits of a listener; every one is on by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Request headers per request (431 past it).
    pub max_header_count: usize,
    /// The whole request head: request line and headers (431 past it).
    pub max_header_bytes: Size,
    /// One header line (431 past it).
    pub max_header_line: Size,
    /// The request target (414 past it).
    pub max_uri: Size,
    /// Request body size for routes that do not set their own (413 past it).
    pub max_body: Size,
    /// Open client connections; past it, new connections wait in the accept backlog.
    pub max_connections: usize,
    /// Requests on one connection, then `Connection: close` (HTTP/1.1) or GOAWAY (HTTP/2).
    pub max_requests_per_connection: usize,
    /// Concurrent HTTP/2 streams per connection (excess ones get REFUSED_STREAM).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 flow-control window of one stream.
    pub h2_stream_window: Size,
    /// HTTP/2 flow-control window of a connection.
    pub h2_connection_window: Size,
    /// Bytes an HTTP/2 connection may buffer for sending.
    pub h2_max_send_buffer: Size,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_header_count: 100,
            max_header_bytes: Size(64 * 1024),
            max_header_line: Size(16 * 1024),
            max_uri: Size(8 * 1024),
            max_body: Size(1024 * 1024),
            max_connections: 10_000,
            max_requests_per_connection: 1000,
            h2_max_concurrent_streams: 100,
            h2_stream_window: Size(64 * 1024),
            h2_connection_window: Size(1024 * 1024),
            h2_max_send_buffer: Size(256 * 1024),
        }
    }
}

/// Client-side timeouts of a listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerTimeoutsSpec {
    /// From the first byte of a request to the end of its head (the first request of a
    /// connection: from the accept); 408 past it on HTTP/1.1.
    pub header_read: Dur,
    /// A new connection that sends nothing for this long is closed.
    pub first_byte: Dur,
    /// The TLS handshake.
    pub handshake: Dur,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY;
    /// HTTP/1.1: the wait for the next request).
    pub keep_alive: Dur,
    /// Longest wait between two reads of a request body (408 past it, or the connection
    /// is closed when the response has started).
    pub body_idle: Dur,
    /// Longest a write to the client may stay pending (a client that stopped reading);
    /// past it, the connection is closed.
    pub write_idle: Dur,
}

impl Default for ListenerTimeoutsSpec {
    fn default() -> Self {
        Self {
            header_read: Dur::secs(10),
            first_byte: Dur::secs(10),
            handshake: Dur::secs(10),
            keep_alive: Dur::secs(60),
            body_idle: Dur::secs(30),
            write_idle: Dur::secs(60),
        }
    }
}

/// How strictly requests are accepted, and how their paths are normalized.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpRulesSpec {
    /// Serve HTTP/1.0 requests (refused with 505 by default, like Envoy's edge profile).
    pub accept_http10: bool,
    /// Header names with `_`: `reject` (400), `drop` (removed), or `allow`.
    pub underscores_in_headers: UnderscorePolicy,
    /// Merge `//` in paths into `/`.
    pub merge_slashes: bool,
    /// `%2F` and `%5C` in paths: `reject` (400) or `keep` (forwarded encoded).
    pub encoded_slashes: EncodedSlashPolicy,
    /// Accept `;` (matrix parameters) in paths.
    pub allow_semicolons: bool,
}

impl Default for HttpRulesSpec {
    fn default() -> Self {
        Self {
            accept_http10: false,
            underscores_in_headers: UnderscorePolicy::Reject,
            merge_slashes: true,
            encoded_slashes: EncodedSlashPolicy::Reject,
            allow_semicolons: false,
        }
    }
}

/// What to do with header names containing `_`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnderscorePolicy {
    /// 400: `X_Forwarded_For` must not slip past filters written for `X-Forwarded-For`.
    Reject,
    /// Remove such headers and go on.
    Drop,
    /// Forward them.
    Allow,
}

/// What to do with encoded slashes in paths.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashPolicy {
    /// 400.
    Reject,
    /// Forward them encoded.
    Keep,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// `host:port` to bind. Keep it on loopback or a private network.
    pub address: String,
}

/// The access log: one JSON line per request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogSpec {
    /// Whether to write it.
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub output: String,
}

impl Default for AccessLogSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            output: "stdout".into(),
        }
    }
}

/// Defaults every route inherits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsSpec {
    /// Policies run first on every route.
    pub policies: Vec<PolicySpec>,
    /// Timeouts of every upstream call, unless an upstream or route says otherwise.
    pub timeouts: TimeoutsSpec,
}

/// Policies shared by every route that matches one of some hosts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostDefaultsSpec {
    /// Host names, as in a route's `match.hosts` (exact or `*.example.com`).
    pub hosts: Vec<String>,
    /// Policies run after listener defaults and before the route's own.
    pub policies: Vec<PolicySpec>,
}
