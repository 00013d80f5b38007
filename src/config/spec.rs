//! The top of the configuration file: process settings, listeners, the admin listener,
//! the access log, and defaults shared by routes. Routes and upstreams have their own
//! files. Every struct denies unknown keys, so a typo is an error, not a silent default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::route::RouteSpec;
use super::units::Dur;
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
    /// Named clusters of endpoints.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// The routes, in any order: priority comes from specificity, not position.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
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
}

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
