//! Endpoint health: active probes and passive outlier ejection.
//!
//! An endpoint is *available* when its active checks pass (or none are configured) and
//! it is not ejected. Endpoints start healthy, so a restart does not refuse traffic
//! until the first probes pass; a dead endpoint is found by `unhealthy_after` failed
//! probes or, sooner, by outlier ejection.
//!
//! - Active: one task per endpoint, whatever the routes, probing every `interval`
//!   (jittered by up to ±10%) over HTTP (through the endpoint's own pool, so TLS and h2
//!   are probed as traffic uses them), TCP, or the gRPC health protocol.
//!   `unhealthy_after` failures in a row mark it unhealthy, `healthy_after` passes mark
//!   it healthy again.
//! - Passive: `consecutive_failures` failed requests in a row (connect failures,
//!   resets, timeouts, 5xx) eject an endpoint for `eject_for` × n, n counting its
//!   ejections in a row (reset after `max_eject_for` without one), at most
//!   `max_eject_for`; never more than `max_ejected` of the upstream at once. An ejected
//!   endpoint comes back by itself when its time is up (checked lazily when endpoints
//!   are picked, no timer).
//!
//! Each cluster counts its unavailable endpoints, so that picking stays on the plain
//! fast path while everything is healthy.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::breaker::clock;
use super::{Endpoint, InFlight};
use crate::config::{ActiveHealthSpec, PassiveHealthSpec, ProbeKind, StatusRange};
use crate::http::Body;
use crate::telemetry::metrics::UpstreamStats;

/// Counts of a cluster's endpoints that are not available, mirrored in the upstream's
/// `turnpike_upstream_endpoints` gauges.
pub struct Census {
    /// Endpoints failing active checks.
    pub unhealthy: AtomicUsize,
    /// Endpoints ejected now (or until the next pick notices their time is up).
    pub ejected: AtomicUsize,
    /// All endpoints.
    pub total: AtomicUsize,
    stats: Arc<UpstreamStats>,
}

impl Census {
    /// Empty counts that report to `stats`.
    pub fn new(stats: Arc<UpstreamStats>) -> Self {
        Self {
            unhealthy: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            stats,
        }
    }

    /// Whether some endpoint may be unavailable.
    pub fn degraded(&self) -> bool {
        self.unhealthy.load(Relaxed) + self.ejected.load(Relaxed) > 0
    }

    fn change(&self, counter: &AtomicUsize, up: bool) {
        if up {
            counter.fetch_add(1, Relaxed);
        } else {
            let _ = counter.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
        self.publish();
    }

    /// Copies the counts into the gauges.
    pub fn publish(&self) {
        let g = &self.stats.endpoints;
        g[0].store(self.total.load(Relaxed) as u64, Relaxed);
        g[1].store(self.unhealthy.load(Relaxed) as u64, Relaxed);
        g[2].store(self.ejected.load(Relaxed) as u64, Relaxed);
    }
}

/// The health of one endpoint.
pub struct Health {
    /// Set when the endpoint left its cluster: its counts are no longer in the census.
    left: AtomicBool,
    healthy: AtomicBool,
    ejected_until: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    last_ejection_end: AtomicU64,
    census: Arc<Census>,
}

/// What one endpoint looks like now, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    /// Passes active checks (true when none are configured).
    pub healthy: bool,
    /// Milliseconds of ejection left (0: not ejected).
    pub ejected_for_ms: u64,
    /// Ejections in a row.
    pub ejections: u32,
    /// Failed requests in a row.
    pub consecutive_failures: u32,
}

impl Health {
    /// A healthy, not ejected endpoint of a cluster with `census`.
    pub fn new(census: Arc<Census>) -> Self {
        Self {
            left: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            last_ejection_end: AtomicU64::new(0),
            census,
        }
    }

    /// Whether the endpoint takes traffic at `now`; an ejection whose time is up ends.
    pub fn available(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Relaxed);
        if until != 0 {
            if now < until {
                return false;
            }
            if self
                .ejected_until
                .compare_exchange(until, 0, Relaxed, Relaxed)
                .is_ok()
                && !self.left.load(Relaxed)
            {
                self.census.change(&self.census.ejected, false);
                self.failures.store(0, Relaxed);
            }
        }
        self.healthy.load(Relaxed)
    }

    /// Whether active checks pass.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Sets the active-check verdict; true when it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        if self.left.load(Relaxed) {
            return false;
        }
        let changed = self.healthy.swap(healthy, Relaxed) != healthy;
        if changed {
            self.census.change(&self.census.unhealthy, !healthy);
        }
        changed
    }

    /// The state now.
    pub fn view(&self, now: u64) -> HealthView {
        HealthView {
            healthy: self.healthy(),
            ejected_for_ms: self.ejected_until.load(Relaxed).saturating_sub(now),
            ejections: self.ejections.load(Relaxed),
            consecutive_failures: self.failures.load(Relaxed),
        }
    }

    /// Reports one request's outcome to outlier detection; true when it ejected the
    /// endpoint.
    pub fn report(&self, passive: &PassiveHealthSpec, now: u64, failed: bool) -> bool {
        if !failed {
            if self.failures.load(Relaxed) != 0 {
                self.failures.store(0, Relaxed);
            }
            return false;
        }
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n < passive.consecutive_failures
            || self.ejected_until.load(Relaxed) != 0
            || self.left.load(Relaxed)
        {
            return false;
        }
        let total = self.census.total.load(Relaxed);
        let cap = (total as u64 * u64::from(passive.max_ejected.0) / 10_000) as usize;
        // The slot under the cap is taken first, so that concurrent ejections cannot
        // pass it together.
        if self
            .census
            .ejected
            .fetch_update(Relaxed, Relaxed, |e| (e < cap).then_some(e + 1))
            .is_err()
        {
            return false;
        }
        let max = passive.max_eject_for.0.as_millis() as u64;
        let in_a_row = if now.saturating_sub(self.last_ejection_end.load(Relaxed)) > max {
            1
        } else {
            self.ejections.load(Relaxed) + 1
        };
        let for_ms = (passive.eject_for.0.as_millis() as u64)
            .saturating_mul(u64::from(in_a_row))
            .min(max);
        if self
            .ejected_until
            .compare_exchange(0, now + for_ms, Relaxed, Relaxed)
            .is_err()
        {
            self.census.change(&self.census.ejected, false);
            return false;
        }
        self.census.publish();
        self.ejections.store(in_a_row, Relaxed);
        self.last_ejection_end.store(now + for_ms, Relaxed);
        self.failures.store(0, Relaxed);
        true
    }

    /// Gives back this endpoint's counts when it leaves its cluster.
    pub fn leave(&self) {
        if self.left.swap(true, Relaxed) {
            return;
        }
        if !self.healthy.swap(true, Relaxed) {
            self.census.change(&self.census.unhealthy, false);
        }
        if self.ejected_until.swap(0, Relaxed) != 0 {
            self.census.change(&self.census.ejected, false);
        }
    }
}

/// A compiled active check.
pub struct Probe {
    spec: ActiveHealthSpec,
    method: http::Method,
    headers: http::HeaderMap,
}

impl Probe {
    /// Compiles `spec`.
    pub fn new(spec: &ActiveHealthSpec) -> Arc<Self> {
        let mut headers = http::HeaderMap::new();
        for (k, v) in &spec.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("turnpike-health-check"),
        );
        Arc::new(Self {
            method: http::Method::from_bytes(spec.method.as_bytes()).unwrap_or(http::Method::GET),
            spec: spec.clone(),
            headers,
        })
    }

    /// A probe's time limit: `timeout`, at most `interval`.
    fn timeout(&self) -> Duration {
        self.spec.timeout.0.min(self.spec.interval.0)
    }

    fn jittered(&self, d: Duration) -> Duration {
        let tenth = d / 10;
        d - tenth + Duration::from_micros(fastrand::u64(..=(2 * tenth).as_micros() as u64))
    }

    /// Runs checks of `endpoint` until it is dropped.
    pub async fn run(self: Arc<Self>, endpoint: Weak<Endpoint>, upstream: Arc<str>) {
        let interval = self.spec.interval.0;
        // The first probe soon, spread so that endpoints are not probed in lockstep.
        tokio::time::sleep(Duration::from_micros(fastrand::u64(
            ..=(interval / 10).as_micros() as u64,
        )))
        .await;
        let (mut passes, mut fails) = (0u32, 0u32);
        loop {
            let Some(ep) = endpoint.upgrade() else { return };
            let result = tokio::time::timeout(self.timeout(), self.check(&ep)).await;
            let verdict = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    self.spec.timeout.0.as_millis()
                )),
            };
            match verdict {
                Ok(()) => {
                    fails = 0;
                    passes = passes.saturating_add(1);
                    if passes >= self.spec.healthy_after && ep.health.set_healthy(true) {
                        tracing::info!(upstream = %upstream, endpoint = %ep.addr, "endpoint healthy again: its health checks pass");
                    }
                }
                Err(why) => {
                    passes = 0;
                    fails = fails.saturating_add(1);
                    if fails >= self.spec.unhealthy_after && ep.health.set_healthy(false) {
                        tracing::warn!(upstream = %upstream, endpoint = %ep.addr, reason = %why, "endpoint unhealthy: its health checks fail");
                    }
                }
            }
            drop(ep);
            tokio::time::sleep(self.jittered(interval)).await;
        }
    }

    async fn check(&self, ep: &Arc<Endpoint>) -> Result<(), String> {
        match self.spec.kind {
            ProbeKind::Tcp => tokio::net::TcpStream::connect(ep.addr)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            ProbeKind::Http => {
                let (status, _, _) = self.exchange(ep, self.http_request(ep)?).await?;
                if self
                    .spec
                    .expect
                    .iter()
                    .any(|r: &StatusRange| r.contains(status))
                {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
            ProbeKind::Grpc => {
                let (status, body, trailers) = self.exchange(ep, self.grpc_request(ep)?).await?;
                grpc_verdict(status, &body, trailers.as_ref())
            }
        }
    }

    fn host(&self, ep: &Endpoint) -> String {
        self.spec
            .host
            .clone()
            .unwrap_or_else(|| ep.host.to_string())
    }

    fn h2(ep: &Endpoint) -> bool {
        ep.pool.is_h2()
    }

    fn uri(&self, ep: &Endpoint, path: &str) -> Result<http::Uri, String> {
        let text = if Self::h2(ep) {
            format!(
                "{}://{}{path}",
                if ep.pool.is_tls() { "https" } else { "http" },
                self.host(ep)
            )
        } else {
            path.to_string()
        };
        text.parse().map_err(|e| format!("probe target: {e}"))
    }

    fn http_request(&self, ep: &Endpoint) -> Result<http::Request<Body>, String> {
        let mut req = http::Request::new(Body::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri(ep, &self.spec.path)?;
        *req.headers_mut() = self.headers.clone();
        if !Self::h2(ep) {
            let host = http::HeaderValue::from_str(&self.host(ep)).map_err(|e| e.to_string())?;
            req.headers_mut().insert(http::header::HOST, host);
        }
        Ok(req)
    }

    fn grpc_request(&self, ep: &Endpoint) -> Result<http::Request<Body>, String> {
        // grpc.health.v1.HealthCheckRequest { string service = 1; }, length-prefixed.
        let service = self.spec.service.as_bytes();
        let mut msg = Vec::with_capacity(service.len() + 8);
        if !service.is_empty() {
            msg.push(0x0a);
            push_varint(&mut msg, service.len() as u64);
            msg.extend_from_slice(service);
        }
        let mut frame = Vec::with_capacity(msg.len() + 5);
        frame.push(0);
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        let mut req = http::Request::new(Body::full(frame));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri(ep, "/grpc.health.v1.Health/Check")?;
        *req.version_mut() = http::Version::HTTP_2;
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        h.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("turnpike-health-check"),
        );
        Ok(req)
    }

    async fn exchange(
        &self,
        ep: &Arc<Endpoint>,
        req: http::Request<Body>,
    ) -> Result<(u16, Bytes, Option<http::HeaderMap>), String> {
        let sent = ep
            .pool
            .send(req, self.timeout())
            .await
            .map_err(|e| format!("{e:?}"))?;
        ep.in_flight.fetch_add(1, Relaxed);
        let lease = super::Lease {
            in_flight: InFlight(ep.clone()),
            permit: None,
        };
        let (status, body) = match sent {
            super::pool::Sent::Own(parts, body) => (
                parts.status.as_u16(),
                Body::upstream_h1(body, self.timeout(), lease),
            ),
            super::pool::Sent::Hyper(resp) => {
                let status = resp.status().as_u16();
                let body = resp.into_body();
                (
                    status,
                    Body::stream_with_lease(
                        body,
                        crate::http::body::Side::Upstream,
                        self.spec.timeout.0,
                        lease,
                    ),
                )
            }
        };
        // Read whole (so that an HTTP/1.1 connection goes back to the pool), up to a cap.
        let mut limited = body;
        if let Some(s) = limited.as_stream_mut() {
            s.limit(64 << 10);
        }
        let collected = match limited.collect().await {
            Ok(c) => c,
            // An HTTP verdict is the status: a body too large or cut short only keeps its
            // connection out of the pool.
            Err(_) if self.spec.kind == ProbeKind::Http => return Ok((status, Bytes::new(), None)),
            Err(e) => return Err(e.to_string()),
        };
        let trailers = collected.trailers().cloned();
        Ok((status, collected.to_bytes(), trailers))
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The verdict of a gRPC health answer: HTTP 200, `grpc-status` 0, and a
/// `HealthCheckResponse` whose `status` (field 1) is `SERVING` (1).
fn grpc_verdict(
    status: u16,
    body: &[u8],
    trailers: Option<&http::HeaderMap>,
) -> Result<(), String> {
    if status != 200 {
        return Err(format!("HTTP status {status}"));
    }
    let grpc_status = trailers
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if grpc_status != "0" {
        return Err(format!("grpc-status `{grpc_status}`"));
    }
    let msg = body.get(5..).ok_or("no HealthCheckResponse message")?;
    // Field 1, varint: tag 0x08. proto3 omits a zero (UNKNOWN).
    let mut i = 0;
    while i < msg.len() {
        let tag = msg[i];
        i += 1;
        if tag == 0x08 {
            return match msg.get(i) {
                Some(1) => Ok(()),
                Some(s) => Err(format!("serving status {s}")),
                None => Err("truncated HealthCheckResponse".into()),
            };
        }
        // Skip an unknown varint field; anything else is not expected here.
        if tag & 7 != 0 {
            return Err("unexpected HealthCheckResponse field".into());
        }
        while msg.get(i).is_some_and(|b| b & 0x80 != 0) {
            i += 1;
        }
        i += 1;
    }
    Err("serving status UNKNOWN".into())
}

/// Milliseconds now, on the resilience clock.
pub fn now() -> u64 {
    clock::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Percent};

    fn passive() -> PassiveHealthSpec {
        PassiveHealthSpec {
            consecutive_failures: 3,
            eject_for: Dur::secs(30),
            max_eject_for: Dur::secs(300),
            max_ejected: Percent(5000),
        }
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times_within_the_cap() {
        let census = Arc::new(Census::new(Default::default()));
        census.total.store(4, Relaxed);
        let a = Health::new(census.clone());
        let b = Health::new(census.clone());
        let c = Health::new(census.clone());
        let p = passive();
        assert!(!a.report(&p, 10, true));
        assert!(!a.report(&p, 10, false), "a success resets the count");
        for _ in 0..2 {
            assert!(!a.report(&p, 10, true));
        }
        assert!(a.report(&p, 10, true), "the third failure in a row ejects");
        assert!(!a.available(11));
        assert_eq!(a.view(10).ejected_for_ms, 30_000);
        assert!(census.degraded());
        for _ in 0..3 {
            b.report(&p, 10, true);
        }
        assert!(!b.available(11));
        for _ in 0..3 {
            c.report(&p, 10, true);
        }
        assert!(c.available(11), "at most 50% of 4 endpoints are ejected");
        // Back by itself.
        assert!(a.available(30_010));
        assert_eq!(census.ejected.load(Relaxed), 1);
        // Ejected again soon: twice as long.
        for _ in 0..3 {
            a.report(&p, 31_000, true);
        }
        assert_eq!(a.view(31_000).ejected_for_ms, 60_000);
    }

    #[test]
    fn an_endpoint_that_left_gives_its_counts_back_once_and_reports_nothing() {
        let census = Arc::new(Census::new(Default::default()));
        census.total.store(2, Relaxed);
        let a = Health::new(census.clone());
        let p = PassiveHealthSpec {
            consecutive_failures: 1,
            max_ejected: Percent(10_000),
            ..passive()
        };
        assert!(a.report(&p, 1, true));
        assert!(a.set_healthy(false));
        assert_eq!(
            (census.ejected.load(Relaxed), census.unhealthy.load(Relaxed)),
            (1, 1)
        );
        a.leave();
        a.leave();
        assert_eq!(
            (census.ejected.load(Relaxed), census.unhealthy.load(Relaxed)),
            (0, 0)
        );
        assert!(!a.report(&p, 2, true), "no ejection after leaving");
        assert!(!a.set_healthy(false));
        assert!(!census.degraded());
    }

    #[test]
    fn grpc_answers() {
        let ok = http::HeaderMap::from_iter([(
            http::HeaderName::from_static("grpc-status"),
            http::HeaderValue::from_static("0"),
        )]);
        assert!(grpc_verdict(200, &[0, 0, 0, 0, 2, 0x08, 1], Some(&ok)).is_ok());
        assert!(grpc_verdict(200, &[0, 0, 0, 0, 2, 0x08, 2], Some(&ok))
            .unwrap_err()
            .contains("serving status 2"));
        assert!(grpc_verdict(200, &[0, 0, 0, 0, 0], Some(&ok)).is_err());
        assert!(grpc_verdict(200, &[0, 0, 0, 0, 2, 0x08, 1], None).is_err());
    }
}
