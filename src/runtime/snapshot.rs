//! `Snapshot`: one compiled configuration, immutable and shared by `Arc`. A request keeps
//! the snapshot it started with until it ends, whatever reloads happen meanwhile.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::config::UnderscorePolicy;
use crate::server::normalize::PathRules;

use crate::config::LoadedConfig;
use crate::pipeline::Pipeline;
use crate::router::Router;
use crate::targets::ProxySettings;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::RouteStats;
use crate::upstream::Cluster;

/// What the router hands back for a matched route.
pub struct RouteBinding {
    /// The route's pipeline (policies and target) for this listener and host.
    pub pipeline: Arc<Pipeline>,
    /// The route's counters for answers that reach no upstream.
    pub stats: Arc<RouteStats>,
    /// The largest request body the route accepts on this listener.
    pub max_body: u64,
}

/// The routes of one listener.
pub struct ListenerRoutes {
    /// The listener's name.
    pub name: Arc<str>,
    /// Its routing table.
    pub router: Router<RouteBinding>,
    /// Its limits, timeouts and acceptance rules.
    pub settings: Arc<ListenerSettings>,
}

/// A listener's limits, timeouts and acceptance rules, compiled.
pub struct ListenerSettings {
    /// Serve HTTP/1.0.
    pub accept_http10: bool,
    /// Longest request target.
    pub max_uri: usize,
    /// Most request headers.
    pub max_header_count: usize,
    /// Longest header line.
    pub max_header_line: usize,
    /// Open connections at most.
    pub max_connections: usize,
    /// Requests per connection at most.
    pub max_requests_per_connection: u64,
    /// Header names with `_`.
    pub underscores: UnderscorePolicy,
    /// Path normalization.
    pub path_rules: PathRules,
    /// Silence allowed after accepting a connection.
    pub first_byte: Duration,
    /// Idle time allowed on a connection between requests.
    pub keep_alive: Duration,
    /// The TLS handshake timeout.
    pub handshake: Duration,
    /// Longest pause between reads of a request body.
    pub body_idle: Duration,
    /// Longest a write to the client may stay pending.
    pub write_idle: Duration,
    /// TLS termination, when the listener is HTTPS.
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
    /// Redirect every request to HTTPS on this port, with this status.
    pub redirect_https: Option<(u16, http::StatusCode)>,
    /// The whole request head at most.
    pub max_header_bytes: usize,
    /// The HTTP/2 connection settings (h2 by ALPN, h2c with prior knowledge).
    pub builder_h2: Arc<auto::Builder<TokioExecutor>>,
    /// Time for the first request head of a connection.
    pub header_read: Duration,
}

/// A summary of one route, for `GET /routes` and `explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteSummary {
    /// The name.
    pub name: String,
    /// Listeners serving it.
    pub listeners: Vec<String>,
    /// Hosts (empty: any).
    pub hosts: Vec<String>,
    /// `path /users/{id}` or `prefix /api`.
    pub path: String,
    /// Methods (empty: any).
    pub methods: Vec<String>,
    /// Header and query conditions, described.
    pub conditions: Vec<String>,
    /// The policies, in request order (`type` or `type:name`), for the any-host pipeline
    /// of the first listener.
    pub policies: Vec<String>,
    /// What answers it.
    pub target: String,
    /// The generated bindings of a `grpc` target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<String>,
}

/// A compiled configuration.
pub struct Snapshot {
    /// Increases by one with every successful (re)load.
    pub generation: u64,
    /// The configuration it was compiled from.
    pub config: Arc<LoadedConfig>,
    /// Per listener, in the order of `listeners`.
    pub listeners: Vec<ListenerRoutes>,
    /// Route summaries in file order.
    pub routes: Vec<RouteSummary>,
    /// Every cluster in use.
    pub clusters: Vec<Arc<Cluster>>,
    /// Proxy settings shared by all routes.
    pub settings: Arc<ProxySettings>,
    /// The access log, when on (set once, when the snapshot is activated).
    pub access_log: OnceLock<Arc<AccessLog>>,
    /// Counters of requests that matched no route.
    pub unmatched: Arc<RouteStats>,
    /// Key files policies read (JWKS and PEM files): a change reloads the configuration.
    pub key_files: Vec<std::path::PathBuf>,
    /// The broker connections (started when the snapshot is activated).
    pub brokers: Vec<crate::brokers::Link>,
    /// The outboxes of publish routes (opened when the snapshot is activated).
    pub outboxes: Vec<Arc<crate::targets::publish::OutboxSlot>>,
    /// The subscriptions (consuming from activation until the snapshot is dropped).
    pub subscriptions: Vec<Arc<crate::brokers::subscribe::Subscription>>,
}
