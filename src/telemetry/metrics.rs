//! Prometheus metrics, kept in atomics.
//!
//! The request path never takes a lock: each compiled route holds `Arc`s to its own
//! counters, looked up once per snapshot. The registries behind them (keyed by route and
//! upstream name) survive reloads, so counters keep counting when the config changes.
//! `/metrics` renders the text exposition format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::Method;

/// The method label values; anything else counts as `OTHER`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
/// The status class label values.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency histogram buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in microseconds, for the request path (no float arithmetic).
const BUCKETS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// The label index of a method.
pub fn method_index(m: &Method) -> usize {
    METHODS.iter().position(|n| *n == m.as_str()).unwrap_or(7)
}

/// The label index of a status.
pub fn class_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// One histogram (with its count) for one label set.
#[derive(Default)]
struct Cell {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// Request counters and latency of one (route, upstream) pair.
pub struct RouteStats {
    route: Arc<str>,
    upstream: Arc<str>,
    cells: [[OnceLock<Box<Cell>>; 5]; 8],
}

impl Cell {
    fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros() as u64;
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Writes the histogram `name` with `labels`; returns its count.
    fn render(&self, out: &mut String, name: &str, labels: &str) -> u64 {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        cumulative
    }
}

/// The outcomes of `turnpike_compose_calls_total`, in [`CallStats::record`] order.
pub const CALL_OUTCOMES: [&str; 4] = ["ok", "failed", "timeout", "skipped"];

/// Counters of one call of one `compose` route.
pub struct CallStats {
    route: Arc<str>,
    call: Arc<str>,
    upstream: Arc<str>,
    outcomes: [AtomicU64; 4],
    latency: Cell,
}

impl CallStats {
    /// Counts one call by outcome (an index into [`CALL_OUTCOMES`]); a call that was
    /// sent also counts its time.
    pub fn record(&self, outcome: usize, elapsed: Option<Duration>) {
        self.outcomes[outcome.min(3)].fetch_add(1, Relaxed);
        if let Some(e) = elapsed {
            self.latency.record(e);
        }
    }
}

impl RouteStats {
    fn new(route: Arc<str>, upstream: Arc<str>) -> Self {
        Self {
            route,
            upstream,
            cells: Default::default(),
        }
    }

    /// Counts one finished request. Lock-free; allocates only the first time a
    /// (method, status class) pair is seen.
    pub fn record(&self, method: usize, status: u16, elapsed: Duration) {
        let cell = self.cells[method.min(7)][class_index(status)].get_or_init(Box::default);
        cell.record(elapsed);
    }

    /// Requests counted so far for one method and status class.
    pub fn count(&self, method: usize, class: usize) -> u64 {
        self.cells[method][class]
            .get()
            .map_or(0, |c| c.buckets.iter().map(|b| b.load(Relaxed)).sum())
    }
}

/// Failure counters of one upstream.
#[derive(Default)]
pub struct UpstreamStats {
    /// Connections that could not be opened (refused, unreachable, connect timeout).
    pub connect_errors: AtomicU64,
    /// Requests that hit the request timeout.
    pub timeouts: AtomicU64,
    /// Connections reset or closed before a complete response head.
    pub resets: AtomicU64,
    /// Connections opened.
    pub connections_opened: AtomicU64,
    /// Pooled connections found closed when taken, and requests sent again on a new
    /// connection because the pooled one closed before answering.
    pub stale_retries: AtomicU64,
    /// Retries, by reason: connect_failure, reset, refused_stream, timeout, status.
    pub retries: [AtomicU64; 5],
    /// Retries not made because the retry budget was spent.
    pub budget_exhausted: AtomicU64,
    /// Hedged copies sent.
    pub hedges: AtomicU64,
    /// Endpoints ejected by outlier detection.
    pub ejections: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// The breaker's state now: 0 closed, 1 open, 2 half open.
    pub breaker_state: AtomicU64,
    /// Requests refused at once by `limits`.
    pub overloaded: AtomicU64,
    /// Endpoints now: total, failing active health checks, ejected.
    pub endpoints: [AtomicU64; 3],
}

/// The reasons of `turnpike_upstream_retries_total`, in [`UpstreamStats::retries`] order.
pub const RETRY_REASONS: [&str; 5] = [
    "connect_failure",
    "reset",
    "refused_stream",
    "timeout",
    "status",
];

/// Requests of one consumer, by status class. The consumers are the configuration's, so
/// the label's cardinality is bounded by the file; requests authenticated without a
/// consumer (a valid token whose subject is no consumer's) share the label `""`.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    by_class: [AtomicU64; 5],
}

impl ConsumerStats {
    /// Counts one answered request.
    pub fn record(&self, status: u16) {
        self.by_class[class_index(status)].fetch_add(1, Relaxed);
    }
}

/// (route, upstream).
type RouteKey = (Arc<str>, Arc<str>);
/// (route, call, upstream).
type CallKey = (Arc<str>, Arc<str>, Arc<str>);

/// Every metric of the process.
#[derive(Default)]
pub struct Metrics {
    /// Requests being handled now.
    pub in_flight: AtomicI64,
    /// Client connections open now.
    pub connections_active: AtomicI64,
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    /// Successful reloads.
    pub reloads_success: AtomicU64,
    /// Rejected reloads.
    pub reloads_failure: AtomicU64,
    /// File change events after which the configuration text was unchanged (no reload).
    pub reloads_unchanged: AtomicU64,
    /// Unix time of the last successful (re)load.
    pub last_reload_success: AtomicU64,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// Requests whose client went away (or reset the stream) before a response.
    pub premature_resets: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_errors: AtomicU64,
    /// HTTP/1.1 request heads refused by hyper's parser itself (see server::refusals).
    pub http1_parse_errors: AtomicU64,
    /// Authenticated requests whose credential names no consumer.
    pub no_consumer: ConsumerStats,
    /// The shared Redis connection.
    pub redis: RedisStats,
    /// Message brokers and subscriptions.
    pub brokers: super::broker_metrics::BrokerMetrics,
    routes: Mutex<HashMap<RouteKey, Arc<RouteStats>>>,
    upstreams: Mutex<HashMap<Arc<str>, Arc<UpstreamStats>>>,
    consumers: Mutex<HashMap<Arc<str>, Arc<ConsumerStats>>>,
    calls: Mutex<HashMap<CallKey, Arc<CallStats>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of the shared Redis connection and of the decisions it could not make.
#[derive(Default)]
pub struct RedisStats {
    /// Decisions not asked of Redis because its breaker was open.
    pub failure_breaker_open: AtomicU64,
    /// Decisions past `redis.timeout`.
    pub failure_timeout: AtomicU64,
    /// Decisions that failed to reach Redis (refused, reset, not connected).
    pub failure_unreachable: AtomicU64,
    /// Decisions Redis answered with an error (a wrong-type value at the key, ...).
    pub failure_error: AtomicU64,
    /// 1 while the breaker is open (Redis is not asked).
    pub breaker_open: AtomicI64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Calls made to Redis (scripts run), answered or not.
    pub calls: AtomicU64,
}

impl RedisStats {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP turnpike_ratelimit_store_failures_total Rate-limit decisions the shared store (Redis) could not make, by reason; each followed on_store_failure.\n# TYPE turnpike_ratelimit_store_failures_total counter"
        );
        for (reason, v) in [
            ("breaker_open", &self.failure_breaker_open),
            ("timeout", &self.failure_timeout),
            ("unreachable", &self.failure_unreachable),
            ("error", &self.failure_error),
        ] {
            let _ = writeln!(
                out,
                "turnpike_ratelimit_store_failures_total{{reason=\"{reason}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP turnpike_redis_breaker_open 1 while Redis is given up on (its breaker is open).\n# TYPE turnpike_redis_breaker_open gauge\nturnpike_redis_breaker_open {}",
            self.breaker_open.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP turnpike_redis_breaker_opened_total Times the Redis breaker opened.\n# TYPE turnpike_redis_breaker_opened_total counter\nturnpike_redis_breaker_opened_total {}",
            self.breaker_opened.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP turnpike_redis_calls_total Calls made to Redis (one per decision, one per lease with batching).\n# TYPE turnpike_redis_calls_total counter\nturnpike_redis_calls_total {}",
            self.calls.load(Relaxed)
        );
    }
}

impl Metrics {
    /// The counters of `route` when answered by `upstream` (empty for local answers).
    /// Called when a snapshot is compiled, never per request.
    pub fn route(&self, route: &str, upstream: &str) -> Arc<RouteStats> {
        let mut map = lock(&self.routes);
        map.entry((Arc::from(route), Arc::from(upstream)))
            .or_insert_with(|| Arc::new(RouteStats::new(Arc::from(route), Arc::from(upstream))))
            .clone()
    }

    /// The failure counters of `upstream`.
    pub fn upstream(&self, upstream: &str) -> Arc<UpstreamStats> {
        lock(&self.upstreams)
            .entry(Arc::from(upstream))
            .or_default()
            .clone()
    }

    /// The counters of consumer `name`. Called when a snapshot is compiled.
    pub fn consumer(&self, name: &str) -> Arc<ConsumerStats> {
        lock(&self.consumers)
            .entry(Arc::from(name))
            .or_default()
            .clone()
    }

    /// The counters of call `call` of `compose` route `route` to `upstream`. Called
    /// when a snapshot is compiled.
    pub fn compose_call(&self, route: &str, call: &str, upstream: &str) -> Arc<CallStats> {
        let key: CallKey = (Arc::from(route), Arc::from(call), Arc::from(upstream));
        lock(&self.calls)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(CallStats {
                    route: key.0,
                    call: key.1,
                    upstream: key.2,
                    outcomes: Default::default(),
                    latency: Cell::default(),
                })
            })
            .clone()
    }

    /// Forgets counters that no live snapshot uses any more (after a reload).
    pub fn prune(&self) {
        lock(&self.calls).retain(|_, v| Arc::strong_count(v) > 1);
        lock(&self.routes).retain(|_, v| Arc::strong_count(v) > 1);
        lock(&self.upstreams).retain(|_, v| Arc::strong_count(v) > 1);
        lock(&self.consumers).retain(|_, v| Arc::strong_count(v) > 1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_requests(&mut out);
        self.render_upstreams(&mut out);
        self.render_consumers(&mut out);
        self.render_calls(&mut out);
        self.brokers.render(&mut out);
        let gauges: [Series; 11] = [
            (
                "turnpike_requests_in_flight",
                "gauge",
                "Requests being handled.",
                self.in_flight.load(Relaxed),
            ),
            (
                "turnpike_connections_active",
                "gauge",
                "Open client connections.",
                self.connections_active.load(Relaxed),
            ),
            (
                "turnpike_connections_total",
                "counter",
                "Client connections accepted.",
                self.connections_total.load(Relaxed) as i64,
            ),
            (
                "turnpike_config_reloads_total{result=\"success\"}",
                "counter",
                "Configuration reloads by result.",
                self.reloads_success.load(Relaxed) as i64,
            ),
            (
                "turnpike_config_reloads_total{result=\"failure\"}",
                "",
                "",
                self.reloads_failure.load(Relaxed) as i64,
            ),
            (
                "turnpike_config_unchanged_total",
                "counter",
                "Configuration file events that left its text unchanged, so nothing was reloaded.",
                self.reloads_unchanged.load(Relaxed) as i64,
            ),
            (
                "turnpike_config_last_reload_success_timestamp_seconds",
                "gauge",
                "Unix time of the last successful configuration load.",
                self.last_reload_success.load(Relaxed) as i64,
            ),
            (
                "turnpike_access_log_dropped_total",
                "counter",
                "Access log lines dropped because the writer fell behind.",
                self.access_log_dropped.load(Relaxed) as i64,
            ),
            (
                "turnpike_premature_resets_total",
                "counter",
                "Requests abandoned by their client before a response (HTTP/2 resets included).",
                self.premature_resets.load(Relaxed) as i64,
            ),
            (
                "turnpike_tls_handshake_errors_total",
                "counter",
                "Client TLS handshakes that failed or timed out.",
                self.tls_handshake_errors.load(Relaxed) as i64,
            ),
            (
                "turnpike_http1_parse_errors_total",
                "counter",
                "HTTP/1.1 request heads refused by the parser before routing (empty-body 400, 414, 431).",
                self.http1_parse_errors.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let base = name.split('{').next().unwrap_or(name);
            if !kind.is_empty() {
                let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} {kind}");
            }
            let _ = writeln!(out, "{name} {value}");
        }
        self.redis.render(&mut out);
        super::process::render(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let routes: Vec<Arc<RouteStats>> = {
            let mut v: Vec<_> = lock(&self.routes).values().cloned().collect();
            v.sort_by(|a, b| (&a.route, &a.upstream).cmp(&(&b.route, &b.upstream)));
            v
        };
        out.push_str("# HELP turnpike_requests_total Requests answered, by route, method, status class and upstream.\n# TYPE turnpike_requests_total counter\n");
        let mut hist = String::new();
        hist.push_str("# HELP turnpike_request_duration_seconds Time from request to the end of the response.\n# TYPE turnpike_request_duration_seconds histogram\n");
        for stats in &routes {
            for (m, row) in stats.cells.iter().enumerate() {
                for (c, cell) in row.iter().enumerate() {
                    let Some(cell) = cell.get() else { continue };
                    let labels = format!(
                        "route=\"{}\",method=\"{}\",status_class=\"{}\",upstream=\"{}\"",
                        escape(&stats.route),
                        METHODS[m],
                        CLASSES[c],
                        escape(&stats.upstream)
                    );
                    let cumulative =
                        cell.render(&mut hist, "turnpike_request_duration_seconds", &labels);
                    let _ = writeln!(out, "turnpike_requests_total{{{labels}}} {cumulative}");
                }
            }
        }
        out.push_str(&hist);
    }

    fn render_calls(&self, out: &mut String) {
        let mut calls: Vec<Arc<CallStats>> = lock(&self.calls).values().cloned().collect();
        if calls.is_empty() {
            return;
        }
        calls.sort_by(|a, b| {
            (&a.route, &a.call, &a.upstream).cmp(&(&b.route, &b.call, &b.upstream))
        });
        out.push_str("# HELP turnpike_compose_calls_total Calls made by compose routes, by route, call, upstream and outcome (ok, failed, timeout, skipped).\n# TYPE turnpike_compose_calls_total counter\n");
        let mut hist = String::from("# HELP turnpike_compose_call_duration_seconds Time of one compose call, from its start to its parsed answer.\n# TYPE turnpike_compose_call_duration_seconds histogram\n");
        for c in &calls {
            let labels = format!(
                "route=\"{}\",call=\"{}\",upstream=\"{}\"",
                escape(&c.route),
                escape(&c.call),
                escape(&c.upstream)
            );
            for (i, outcome) in CALL_OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "turnpike_compose_calls_total{{{labels},outcome=\"{outcome}\"}} {}",
                    c.outcomes[i].load(Relaxed)
                );
            }
            c.latency
                .render(&mut hist, "turnpike_compose_call_duration_seconds", &labels);
        }
        out.push_str(&hist);
    }

    fn render_consumers(&self, out: &mut String) {
        let mut list: Vec<(Arc<str>, Arc<ConsumerStats>)> = lock(&self.consumers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP turnpike_consumer_requests_total Authenticated requests answered, by consumer and status class (consumer \"\": authenticated without a consumer).\n# TYPE turnpike_consumer_requests_total counter\n");
        let rows = list
            .iter()
            .map(|(n, s)| (escape(n), &**s))
            .chain(std::iter::once((String::new(), &self.no_consumer)));
        for (name, stats) in rows {
            for (i, class) in CLASSES.iter().enumerate() {
                let n = stats.by_class[i].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "turnpike_consumer_requests_total{{consumer=\"{name}\",status_class=\"{class}\"}} {n}");
                }
            }
        }
    }

    fn render_upstreams(&self, out: &mut String) {
        let mut ups: Vec<(Arc<str>, Arc<UpstreamStats>)> = lock(&self.upstreams)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ups.sort_by(|a, b| a.0.cmp(&b.0));
        let series: [UpstreamSeries; 5] = [
            (
                "turnpike_upstream_connect_errors_total",
                "Upstream connections that could not be opened.",
                |s| s.connect_errors.load(Relaxed),
            ),
            (
                "turnpike_upstream_timeouts_total",
                "Upstream requests that hit the request timeout.",
                |s| s.timeouts.load(Relaxed),
            ),
            (
                "turnpike_upstream_resets_total",
                "Upstream connections closed before a complete response head.",
                |s| s.resets.load(Relaxed),
            ),
            (
                "turnpike_upstream_connections_opened_total",
                "Upstream connections opened.",
                |s| s.connections_opened.load(Relaxed),
            ),
            (
                "turnpike_upstream_stale_retries_total",
                "Pooled connections found closed when taken, and requests sent again on a new connection after their pooled one closed before answering.",
                |s| s.stale_retries.load(Relaxed),
            ),
        ];
        let resilience: [UpstreamSeries; 5] = [
            (
                "turnpike_upstream_retry_budget_exhausted_total",
                "Retries and hedges not sent because the upstream's retry budget was spent.",
                |s| s.budget_exhausted.load(Relaxed),
            ),
            (
                "turnpike_upstream_hedges_total",
                "Hedged copies of slow requests sent.",
                |s| s.hedges.load(Relaxed),
            ),
            (
                "turnpike_upstream_ejections_total",
                "Endpoints ejected by outlier detection (passive health).",
                |s| s.ejections.load(Relaxed),
            ),
            (
                "turnpike_upstream_circuit_opened_total",
                "Times the upstream's circuit breaker opened.",
                |s| s.breaker_opened.load(Relaxed),
            ),
            (
                "turnpike_upstream_overloaded_total",
                "Requests refused at once because the upstream's limits were reached.",
                |s| s.overloaded.load(Relaxed),
            ),
        ];
        for (name, help, get) in series.into_iter().chain(resilience) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (up, stats) in &ups {
                let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", escape(up), get(stats));
            }
        }
        let _ = writeln!(out, "# HELP turnpike_upstream_retries_total Retries sent, by reason.\n# TYPE turnpike_upstream_retries_total counter");
        for (up, stats) in &ups {
            for (i, reason) in RETRY_REASONS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "turnpike_upstream_retries_total{{upstream=\"{}\",reason=\"{reason}\"}} {}",
                    escape(up),
                    stats.retries[i].load(Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP turnpike_upstream_circuit_state The circuit breaker's state: 0 closed, 1 open, 2 half open.\n# TYPE turnpike_upstream_circuit_state gauge");
        for (up, stats) in &ups {
            let _ = writeln!(
                out,
                "turnpike_upstream_circuit_state{{upstream=\"{}\"}} {}",
                escape(up),
                stats.breaker_state.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP turnpike_upstream_endpoints Endpoints of the upstream: all of them, those failing active health checks, and those ejected.\n# TYPE turnpike_upstream_endpoints gauge");
        for (up, stats) in &ups {
            for (i, state) in ["total", "unhealthy", "ejected"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "turnpike_upstream_endpoints{{upstream=\"{}\",state=\"{state}\"}} {}",
                    escape(up),
                    stats.endpoints[i].load(Relaxed)
                );
            }
        }
    }
}

/// A single-value series: name (with labels), type, help, value.
type Series = (&'static str, &'static str, &'static str, i64);
/// A per-upstream counter: name, help, reader.
type UpstreamSeries = (&'static str, &'static str, fn(&UpstreamStats) -> u64);

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders_histograms() {
        let m = Metrics::default();
        let r = m.route("users", "users-v1");
        r.record(method_index(&Method::GET), 200, Duration::from_millis(3));
        r.record(method_index(&Method::GET), 204, Duration::from_millis(30));
        r.record(method_index(&Method::POST), 503, Duration::from_secs(20));
        assert_eq!(r.count(0, 1), 2);
        let text = m.render();
        assert!(text.contains("turnpike_requests_total{route=\"users\",method=\"GET\",status_class=\"2xx\",upstream=\"users-v1\"} 2"), "{text}");
        assert!(text.contains("turnpike_request_duration_seconds_bucket{route=\"users\",method=\"GET\",status_class=\"2xx\",upstream=\"users-v1\",le=\"0.005\"} 1"));
        assert!(text.contains("turnpike_request_duration_seconds_bucket{route=\"users\",method=\"POST\",status_class=\"5xx\",upstream=\"users-v1\",le=\"10\"} 0"));
        assert!(text.contains("turnpike_request_duration_seconds_bucket{route=\"users\",method=\"POST\",status_class=\"5xx\",upstream=\"users-v1\",le=\"+Inf\"} 1"));
        assert!(text.contains("turnpike_config_reloads_total{result=\"failure\"} 0"));
    }

    #[test]
    fn registries_survive_until_pruned() {
        let m = Metrics::default();
        let a = m.route("r", "u");
        a.record(0, 200, Duration::ZERO);
        assert_eq!(
            m.route("r", "u").count(0, 1),
            1,
            "same counters for the same key"
        );
        drop(a);
        m.prune();
        assert_eq!(m.route("r", "u").count(0, 1), 0, "pruned once unused");
    }

    #[test]
    fn label_indexes() {
        assert_eq!(method_index(&Method::from_bytes(b"PURGE").unwrap()), 7);
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(599), 4);
        assert_eq!(class_index(42), 0);
    }
}
