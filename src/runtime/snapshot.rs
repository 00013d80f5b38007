//! `Snapshot`: one compiled configuration, immutable and shared by `Arc`. A request keeps
//! the snapshot it started with until it ends, whatever reloads happen meanwhile.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
}

/// The routes of one listener.
pub struct ListenerRoutes {
    /// The listener's name.
    pub name: Arc<str>,
    /// Its routing table.
    pub router: Router<RouteBinding>,
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
    /// Longest pause while reading a client's request body.
    pub body_idle: Duration,
}
