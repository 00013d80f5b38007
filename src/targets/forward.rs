//! Forwarding one request to one endpoint of a cluster: the proxy's hot path.
//!
//! In order: hop-by-hop headers go, an endpoint is picked, the path is rewritten, `Host`
//! is chosen, `X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `Via` and the request id are
//! set, and the request is sent on a pooled connection within the connect and request
//! timeouts. The response streams back with an idle timeout; its connection returns to
//! the pool only once the body was read whole. WebSocket upgrades get a connection of
//! their own and become a tunnel only after the upstream answered 101.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONNECTION, EXPECT, HOST, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{StatusCode, Version};
use tokio::time::Instant;

use crate::config::upstream::UpstreamProtocol;
use crate::config::validate::KeySource;
use crate::config::HedgeSpec;
use crate::http::body::Side;
use crate::http::forwarded::{self, Hop, TrustedProxies};
use crate::http::{hop, Body, BodyError, GatewayError, Request, Response};
use crate::pipeline::RequestCtx;
use crate::router::rewrite::Rewrite;
use crate::telemetry::metrics::RouteStats;
use crate::upstream::balancer::PickInput;
use crate::upstream::breaker::clock;
use crate::upstream::hash::{hash64, request_key};
use crate::upstream::pool::{refused_stream, SendError, Sent};
use crate::upstream::retry::{idempotent, Failure};
use crate::upstream::{Cluster, Endpoint, InFlight, Lease, PickError};

/// Settings shared by every forward of a snapshot.
pub struct ProxySettings {
    /// Proxies whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// `Via` values for HTTP/1.0, HTTP/1.1 and HTTP/2 clients (`None`: no `Via`).
    pub via: Option<[HeaderValue; 3]>,
    /// Our `Via` pseudonym, for loop detection.
    pub pseudonym: String,
    /// Refuse requests already carrying our pseudonym this many times.
    pub max_hops: usize,
    /// The correlation-id header.
    pub request_id_header: HeaderName,
    /// Headers removed from every client request.
    pub internal: Arc<crate::http::internal::InternalHeaders>,
}

/// The resolved timeouts of calls from one route to one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Sending the request until the response head.
    pub request: Duration,
    /// Longest pause between reads of the upstream's response body.
    pub idle: Duration,
    /// Longest pause between reads of the client's request body, when the route, its
    /// upstream or `defaults` set `idle`; otherwise the listener's `timeouts.body_idle`.
    pub request_idle: Option<Duration>,
}

impl Timeouts {
    /// The built-in defaults: 1 s connect, 15 s request, 30 s idle.
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(15),
        idle: Duration::from_secs(30),
        request_idle: None,
    };
}

/// A route's link to one upstream.
pub struct Binding {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Timeouts of calls to it from this route.
    pub timeouts: Timeouts,
    /// The route's counters for this upstream.
    pub stats: Arc<RouteStats>,
    /// The deadline header's values for a whole `request` timeout (and one ms less),
    /// made once: most first tries send one of them.
    pub deadline_values: [HeaderValue; 2],
}

/// The `Host` sent upstream.
pub enum HostHeader {
    /// The client's.
    Preserve,
    /// The endpoint's configured `host:port`.
    Upstream,
    /// A fixed value.
    Fixed(HeaderValue),
}

/// How one route forwards requests.
pub struct Forward {
    /// The path rewrite.
    pub rewrite: Rewrite,
    /// The `Host` rule.
    pub host_header: HostHeader,
    /// Whether WebSocket upgrades are allowed.
    pub websocket: bool,
    /// Whether gRPC-Web requests are translated to native gRPC.
    pub grpc_web: bool,
    /// Shared settings.
    pub settings: Arc<ProxySettings>,
    /// Copies of slow idempotent requests.
    pub hedge: Option<HedgeSpec>,
    /// What answers when the upstream cannot.
    pub fallback: Option<Fallback>,
}

impl Forward {
    /// How a target that makes its own calls (`compose`, `grpc`) forwards them: the path
    /// as the target built it, the endpoint's `Host`, no upgrades, hedging or fallback.
    pub fn for_calls(settings: Arc<ProxySettings>) -> Self {
        Self {
            rewrite: Rewrite::None,
            host_header: HostHeader::Upstream,
            websocket: false,
            grpc_web: false,
            settings,
            hedge: None,
            fallback: None,
        }
    }
}

/// The header telling an upstream which try a request is (2 for the first retry or
/// hedge; absent on the first try).
pub const ATTEMPT: HeaderName = HeaderName::from_static("x-turnpike-attempt");
use crate::upstream::retry::IDEMPOTENCY_KEY;
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A route's compiled `fallback`.
pub struct Fallback {
    /// The failures it answers.
    pub on: Vec<String>,
    /// What answers.
    pub action: FallbackAction,
}

/// What a fallback does.
pub enum FallbackAction {
    /// Answer from the gateway.
    Respond(super::respond::Respond),
    /// Forward to another upstream.
    Upstream(Binding),
}

impl Fallback {
    /// Whether the call's result is one of the failures the fallback answers.
    pub fn applies(&self, result: &Result<Response, GatewayError>) -> bool {
        self.on.iter().any(|on| match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                on == "5xx" && (500..=599).contains(&status)
                    || on.parse::<u16>().is_ok_and(|s| s == status)
            }
            Err(e) => {
                let code = e.code();
                match on.as_str() {
                    "upstream_error" => upstream_failure(e),
                    "connect_failure" => code == "upstream_connect_failed",
                    "reset" => code == "upstream_reset",
                    "5xx" => upstream_failure(e) && e.status().is_server_error(),
                    other => {
                        other == code
                            || other
                                .parse::<u16>()
                                .is_ok_and(|s| upstream_failure(e) && s == e.status().as_u16())
                    }
                }
            }
        })
    }
}

/// Whether an error is the upstream's failure (not the client's, not a policy's).
fn upstream_failure(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::NoEndpoint { .. }
            | GatewayError::NoHealthyEndpoint { .. }
            | GatewayError::CircuitOpen { .. }
            | GatewayError::UpstreamOverloaded { .. }
            | GatewayError::UpstreamConnect { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::UpstreamReset { .. }
            | GatewayError::UpstreamProtocol { .. }
    )
}

/// How one try ended, before it becomes a response.
enum TryError {
    Send(SendError),
    Timeout,
    Gateway(GatewayError),
}

type TryResult = Result<Sent, TryError>;

/// The retry reason of a try's outcome, if it failed in a way a retry may follow.
fn classify(outcome: &TryResult) -> Option<Failure> {
    match outcome {
        Ok(s) => {
            let status = s.status();
            (status >= 500 || status == 429 || status == 408).then_some(Failure::Status(status))
        }
        Err(TryError::Timeout) => Some(Failure::Timeout),
        Err(TryError::Send(e)) => match e {
            SendError::Connect(_) => Some(Failure::Connect),
            SendError::Reset(_) => Some(Failure::Reset),
            SendError::Exchange(e) if find_body_error(e).is_some() => None,
            SendError::Exchange(e) if refused_stream(e) => Some(Failure::RefusedStream),
            SendError::Exchange(e) if !(e.is_parse() || e.is_parse_status()) => {
                Some(Failure::Reset)
            }
            _ => None,
        },
        Err(TryError::Gateway(_)) => None,
    }
}

/// Whether a try's outcome counts against the endpoint (outlier detection).
fn outcome_failed(outcome: &TryResult) -> bool {
    match outcome {
        Ok(s) => s.status() >= 500,
        Err(TryError::Send(SendError::RequestBody(_))) | Err(TryError::Gateway(_)) => false,
        // The client's upload failing under an HTTP/2 stream is not the endpoint's fault.
        Err(TryError::Send(SendError::Exchange(e))) => find_body_error(e).is_none(),
        Err(_) => true,
    }
}

/// Reads a body with a `Content-Length` of at most `cap` into memory, so that it can be
/// sent again; other bodies stay streams.
async fn buffer_body(
    body: &mut Body,
    headers: &http::HeaderMap,
    cap: u64,
) -> Result<(), GatewayError> {
    use http_body_util::BodyExt;
    if !matches!(body, Body::Stream(_)) {
        return Ok(());
    }
    let small = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= cap);
    if !small {
        return Ok(());
    }
    let stream = std::mem::replace(body, Body::Empty);
    match stream.collect().await {
        Ok(c) => {
            *body = Body::full(c.to_bytes());
            Ok(())
        }
        Err(e) => Err(match e.downcast_ref::<BodyError>() {
            Some(b) => request_body_error(b),
            None => GatewayError::BadRequest("request body could not be read"),
        }),
    }
}

fn clone_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A `grpc-timeout` value (`100m`, `5S`, ...).
fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

struct Keys<'a> {
    headers: &'a http::HeaderMap,
    ctx: &'a RequestCtx,
}

impl PickInput for Keys<'_> {
    fn key(&self, source: &KeySource) -> Option<u64> {
        request_key(source, self.headers, self.ctx.client_ip).map(|k| hash64(&k))
    }
}

impl Forward {
    /// Forwards `req` to an endpoint of `to`, with the upstream's breaker, limits and
    /// retries and the route's hedging and fallback.
    pub async fn forward(
        &self,
        ctx: &mut RequestCtx,
        req: Request,
        to: &Binding,
    ) -> Result<Response, GatewayError> {
        if self.grpc_web {
            if let Some(mode) = super::grpc::web::mode(req.headers()) {
                let (mut parts, body) = req.into_parts();
                let body = super::grpc::web::request(&mut parts, body, mode).await?;
                let req = http::Request::from_parts(parts, body);
                let resp = Box::pin(self.forward_native(ctx, req, to)).await?;
                return Ok(super::grpc::web::response(resp, mode));
            }
        }
        self.forward_native(ctx, req, to).await
    }

    /// [`Forward::forward`] without the gRPC-Web translation.
    async fn forward_native(
        &self,
        ctx: &mut RequestCtx,
        req: Request,
        to: &Binding,
    ) -> Result<Response, GatewayError> {
        let (mut parts, mut body) = req.into_parts();
        if let (Some(stream), Some(idle)) = (body.as_stream_mut(), to.timeouts.request_idle) {
            stream.set_idle(idle);
        }
        let pq = self.path_and_query(ctx)?;
        let upgrade = ctx.websocket && self.websocket;
        self.set_headers(ctx, &mut parts.headers, upgrade);
        if upgrade {
            return Box::pin(self.forward_upgrade(ctx, parts, body, to, &pq)).await;
        }
        // A small body is read before the breaker and the limits are consulted, so that
        // a slow upload holds no slot of theirs and its time is the client's fault.
        if matches!(body, Body::Stream(_)) && self.may_resend(to, &parts) {
            let cap = to
                .cluster
                .resilience
                .retry
                .as_ref()
                .map_or(64 << 10, |p| p.buffer);
            let buffered = tokio::time::timeout(
                to.timeouts.request,
                Box::pin(buffer_body(&mut body, &parts.headers, cap)),
            )
            .await;
            match buffered {
                Ok(r) => r?,
                Err(_) => return Err(GatewayError::RequestTimeout),
            }
        }
        let Some(fallback) = &self.fallback else {
            return self.call(ctx, &mut parts, &mut body, to, &pq).await;
        };
        let replay = match &body {
            Body::Full(Some(b)) => Some(b.clone()),
            _ => None,
        };
        let streamed = matches!(body, Body::Stream(_) | Body::Boxed(_));
        let result = self.call(ctx, &mut parts, &mut body, to, &pq).await;
        if !fallback.applies(&result) {
            return result;
        }
        let code = match &result {
            Err(e) => e.code(),
            Ok(_) => "upstream_status",
        };
        tracing::debug!(route = ?ctx.route, failure = code, "fallback");
        ctx.error = Some(code);
        match &fallback.action {
            FallbackAction::Respond(r) => Ok(r.call(ctx)),
            FallbackAction::Upstream(other) => {
                // The request goes on only when its body is still whole.
                let untouched = matches!(
                    code,
                    "circuit_open"
                        | "no_healthy_endpoint"
                        | "no_endpoint"
                        | "upstream_overloaded"
                        | "upstream_connect_failed"
                );
                if streamed && !untouched {
                    return result;
                }
                drop(result);
                if let Some(b) = replay {
                    body = Body::Full(Some(b));
                }
                parts.headers.remove(ATTEMPT);
                if let Some(name) = &to.cluster.resilience.deadline_header {
                    parts.headers.remove(name);
                }
                self.call(ctx, &mut parts, &mut body, other, &pq).await
            }
        }
    }

    /// Whether a request to `to` may be sent more than once (a retry policy, or a hedge
    /// of an idempotent request): its small body is then buffered.
    fn may_resend(&self, to: &Binding, parts: &http::request::Parts) -> bool {
        to.cluster.resilience.retry.is_some()
            || (self.hedge.is_some()
                && (idempotent(&parts.method) || parts.headers.contains_key(&IDEMPOTENCY_KEY)))
    }

    /// One upstream call: breaker, limits, then tries.
    async fn call(
        &self,
        ctx: &mut RequestCtx,
        parts: &mut http::request::Parts,
        body: &mut Body,
        to: &Binding,
        pq: &PathAndQuery,
    ) -> Result<Response, GatewayError> {
        let cluster = &to.cluster;
        let res = &cluster.resilience;
        ctx.upstream = Some(cluster.name.clone());
        ctx.stats = Some(to.stats.clone());
        let started = Instant::now();
        // One reading of the millisecond clock serves the breaker and the budget.
        let now_ms = if res.breaker.is_some() || res.retry.is_some() || self.hedge.is_some() {
            clock::now_ms()
        } else {
            0
        };
        let ticket = match &res.breaker {
            None => None,
            Some(b) => match b.admit(now_ms) {
                Ok(t) => Some(t),
                Err(ms) => {
                    return Err(GatewayError::CircuitOpen {
                        upstream: cluster.name.to_string(),
                        retry_after: ms.div_ceil(1000),
                    })
                }
            },
        };
        let permit = match &res.limits {
            None => None,
            Some(l) => match match l.try_now() {
                Some(p) => Ok(p),
                None => Box::pin(l.acquire(to.timeouts.request)).await,
            } {
                Ok(p) => Some(p),
                Err(_) => {
                    cluster.stats.overloaded.fetch_add(1, Relaxed);
                    return Err(GatewayError::UpstreamOverloaded {
                        upstream: cluster.name.to_string(),
                    });
                }
            },
        };
        let deadline = started + to.timeouts.request;
        let result = self
            .tries(ctx, parts, body, to, pq, deadline, permit, now_ms)
            .await;
        ctx.upstream_time = Some(started.elapsed());
        if let (Some(b), Some(t)) = (&res.breaker, ticket) {
            let failed = match &result {
                Ok(r) => r.status().is_server_error(),
                Err(e) => upstream_failure(e),
            };
            b.record(t, clock::now_ms(), failed);
        }
        result
    }

    /// The tries of one call: the first (hedged when the route says so), then retries
    /// while the policy, the budget and the deadline allow.
    #[allow(clippy::too_many_arguments)]
    async fn tries(
        &self,
        ctx: &mut RequestCtx,
        parts: &mut http::request::Parts,
        body: &mut Body,
        to: &Binding,
        pq: &PathAndQuery,
        deadline: Instant,
        permit: Option<crate::upstream::retry::Slot>,
        now_ms: u64,
    ) -> Result<Response, GatewayError> {
        let cluster = &to.cluster;
        let res = &cluster.resilience;
        let retry = res.retry.as_ref();
        let repeatable = retry.is_some_and(|p| p.repeatable(&parts.method, &parts.headers));
        let hedge = self
            .hedge
            .filter(|_| idempotent(&parts.method) || parts.headers.contains_key(&IDEMPOTENCY_KEY));
        if retry.is_some() || hedge.is_some() {
            cluster.budget().deposit(now_ms);
        }
        let replay = match &*body {
            Body::Full(Some(b)) => Some(b.clone()),
            _ => None,
        };
        let streamed = matches!(*body, Body::Stream(_) | Body::Boxed(_));
        let max_tries = 1 + retry.map_or(0, |p| p.attempts);
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut next: Option<InFlight> = None;
        let mut n: u32 = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                cluster.stats.timeouts.fetch_add(1, Relaxed);
                return Err(GatewayError::UpstreamTimeout {
                    upstream: cluster.name.to_string(),
                });
            }
            let in_flight = match next.take() {
                Some(p) => p,
                None => self.pick(ctx, cluster, &parts.headers, &tried)?,
            };
            let limit = retry
                .and_then(|p| p.per_try_timeout)
                .map_or(left, |t| t.min(left));
            let (outcome, in_flight, reported) = match hedge.filter(|_| n == 1 && !streamed) {
                Some(h) => {
                    Box::pin(self.hedged(
                        ctx, parts, body, to, pq, in_flight, limit, deadline, h, &mut tried,
                    ))
                    .await
                }
                None => {
                    self.aim(ctx, parts, &in_flight.0, to, pq, n, limit)?;
                    let sent = tokio::time::timeout(
                        limit,
                        in_flight
                            .0
                            .pool
                            .send_parts(parts, body, to.timeouts.connect),
                    )
                    .await;
                    (
                        sent.map_err(|_| TryError::Timeout)
                            .and_then(|r| r.map_err(TryError::Send)),
                        in_flight,
                        false,
                    )
                }
            };
            let ep = in_flight.0.clone();
            ctx.endpoint = Some(ep.addr);
            if !reported {
                cluster.report(&ep, outcome_failed(&outcome));
            }
            let failure = classify(&outcome);
            if let (Some(p), Some(f)) = (retry, failure) {
                let possible = n < max_tries
                    && p.covers(f)
                    && (f.never_processed() || repeatable)
                    && (!streamed || f == Failure::Connect);
                if possible {
                    let pause = p.backoff(n);
                    tried.push(ep.addr);
                    // The next endpoint is found before this answer is let go: when there
                    // is none, the client gets this one.
                    let then = if Instant::now() + pause >= deadline {
                        None // no time left for another try
                    } else {
                        self.pick(ctx, cluster, &parts.headers, &tried).ok()
                    };
                    if let Some(then) = then {
                        if cluster.budget().withdraw(clock::now_ms()) {
                            cluster.stats.retries[f.reason_index()].fetch_add(1, Relaxed);
                            drop(outcome);
                            drop(in_flight);
                            if let Some(b) = &replay {
                                *body = Body::Full(Some(b.clone()));
                            }
                            Box::pin(tokio::time::sleep(pause)).await;
                            next = Some(then);
                            n += 1;
                            continue;
                        }
                        cluster.stats.budget_exhausted.fetch_add(1, Relaxed);
                    }
                }
            }
            return self.finish(ctx, outcome, in_flight, permit, to);
        }
    }

    /// Picks an endpoint, avoiding those already tried when others are available.
    fn pick(
        &self,
        ctx: &RequestCtx,
        cluster: &Cluster,
        headers: &http::HeaderMap,
        tried: &[SocketAddr],
    ) -> Result<InFlight, GatewayError> {
        cluster
            .pick_avoiding(&Keys { headers, ctx }, tried)
            .map_err(|e| {
                let upstream = cluster.name.to_string();
                match e {
                    PickError::NoEndpoint => GatewayError::NoEndpoint { upstream },
                    PickError::NoHealthy => GatewayError::NoHealthyEndpoint { upstream },
                }
            })
    }

    /// The first try and up to `hedge.max` copies on other endpoints, each sent when
    /// no answer came `hedge.after` after the previous one; the first answer that is
    /// not a retryable failure wins and the others are cancelled.
    #[allow(clippy::too_many_arguments)]
    async fn hedged(
        &self,
        ctx: &RequestCtx,
        parts: &mut http::request::Parts,
        body: &Body,
        to: &Binding,
        pq: &PathAndQuery,
        first: InFlight,
        limit: Duration,
        deadline: Instant,
        hedge: HedgeSpec,
        tried: &mut Vec<SocketAddr>,
    ) -> (TryResult, InFlight, bool) {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let cluster = &to.cluster;
        let retry = cluster.resilience.retry.as_ref();
        let connect = to.timeouts.connect;
        let mut running = FuturesUnordered::new();
        // The endpoint of each copy, by launch order (never emptied before returning).
        let mut leases: Vec<InFlight> = Vec::with_capacity(1 + hedge.max as usize);
        // Aims a copy at `ep` and makes its future (the copy's index goes with its result).
        let launch = |i: usize, n: u32, ep: &InFlight, parts: &mut http::request::Parts| {
            self.aim(ctx, parts, &ep.0, to, pq, n, limit)?;
            let copy = clone_head(parts);
            let mut copy_body = match body {
                Body::Full(Some(b)) => Body::Full(Some(b.clone())),
                _ => Body::Empty,
            };
            let pool = ep.0.pool.clone();
            // Each copy gets the try's time, never past the call's deadline.
            let until = (Instant::now() + limit).min(deadline);
            Ok::<_, GatewayError>(async move {
                let r =
                    tokio::time::timeout_at(until, pool.send_parts(&copy, &mut copy_body, connect))
                        .await;
                (
                    i,
                    r.map_err(|_| TryError::Timeout)
                        .and_then(|r| r.map_err(TryError::Send)),
                )
            })
        };
        let first_addr = first.0.addr;
        match launch(0, 1, &first, parts) {
            Ok(f) => running.push(f),
            Err(e) => return (Err(TryError::Gateway(e)), first, false),
        }
        leases.push(first);
        tried.push(first_addr);
        let mut sent = 0;
        let timer = tokio::time::sleep(hedge.after.0);
        tokio::pin!(timer);
        let mut last: Option<(usize, TryResult)> = None;
        loop {
            tokio::select! {
                Some((i, outcome)) = running.next(), if !running.is_empty() => {
                    let retryable = match &outcome {
                        Ok(s) => retry.is_some_and(|p| p.retries_status(s.status())),
                        Err(TryError::Send(SendError::RequestBody(_))) | Err(TryError::Gateway(_)) => false,
                        Err(_) => true,
                    };
                    if !retryable || (running.is_empty() && sent >= hedge.max) {
                        drop(running);
                        return (outcome, leases.swap_remove(i), false);
                    }
                    cluster.report(&leases[i].0, outcome_failed(&outcome));
                    last = Some((i, outcome));
                    if running.is_empty() {
                        // Nothing in flight: the next copy goes now.
                        timer.as_mut().reset(Instant::now());
                    }
                }
                () = &mut timer, if sent < hedge.max => {
                    sent += 1;
                    if !cluster.budget().withdraw(clock::now_ms()) {
                        cluster.stats.budget_exhausted.fetch_add(1, Relaxed);
                        sent = hedge.max;
                        continue;
                    }
                    let Ok(ep) = self.pick(ctx, cluster, &parts.headers, tried) else {
                        sent = hedge.max;
                        continue;
                    };
                    tried.push(ep.0.addr);
                    match launch(leases.len(), 1 + sent, &ep, parts) {
                        Ok(f) => {
                            cluster.stats.hedges.fetch_add(1, Relaxed);
                            running.push(f);
                            leases.push(ep);
                        }
                        Err(_) => sent = hedge.max,
                    }
                    timer.as_mut().reset(Instant::now() + hedge.after.0);
                }
                else => break,
            }
        }
        drop(running);
        match last {
            Some((i, outcome)) => (outcome, leases.swap_remove(i), true),
            None => (Err(TryError::Timeout), leases.swap_remove(0), false),
        }
    }

    /// Points the request at `ep`: target, `Host`, version, the try number and the
    /// time budget.
    #[allow(clippy::too_many_arguments)]
    fn aim(
        &self,
        ctx: &RequestCtx,
        parts: &mut http::request::Parts,
        ep: &Endpoint,
        to: &Binding,
        pq: &PathAndQuery,
        n: u32,
        limit: Duration,
    ) -> Result<(), GatewayError> {
        let cluster = &to.cluster;
        let host = match &self.host_header {
            HostHeader::Preserve => ctx.host.clone(),
            HostHeader::Upstream => {
                HeaderValue::from_str(&ep.host).unwrap_or_else(|_| ctx.host.clone())
            }
            HostHeader::Fixed(v) => v.clone(),
        };
        let protocol = cluster.protocol();
        let h2 = matches!(protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2);
        if h2 {
            parts.uri = Uri::builder()
                .scheme(if protocol == UpstreamProtocol::H2 {
                    "https"
                } else {
                    "http"
                })
                .authority(host.as_bytes())
                .path_and_query(pq.clone())
                .build()
                .map_err(|_| GatewayError::BadRequest("invalid host"))?;
            parts.version = Version::HTTP_2;
            parts.headers.remove(HOST);
        } else {
            parts.uri = Uri::from(pq.clone());
            parts.version = Version::HTTP_11;
            parts.headers.insert(HOST, host);
        }
        if n > 1 {
            parts.headers.insert(ATTEMPT, HeaderValue::from(n));
        }
        let ms = limit.as_millis().max(1) as u64;
        if let Some(name) = &cluster.resilience.deadline_header {
            let full = to.timeouts.request.as_millis() as u64;
            let value = if ms == full {
                to.deadline_values[0].clone()
            } else if ms + 1 == full {
                to.deadline_values[1].clone()
            } else {
                HeaderValue::from(ms)
            };
            parts.headers.insert(name.clone(), value);
        }
        if h2 && is_grpc(&parts.headers) {
            let keep = parts
                .headers
                .get(GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
                .is_some_and(|client| client <= limit);
            if !keep {
                if let Ok(v) = HeaderValue::from_str(&format!("{ms}m")) {
                    parts.headers.insert(GRPC_TIMEOUT, v);
                }
            }
        }
        Ok(())
    }

    /// The response of the last try, or its error.
    fn finish(
        &self,
        ctx: &mut RequestCtx,
        outcome: TryResult,
        in_flight: InFlight,
        permit: Option<crate::upstream::retry::Slot>,
        to: &Binding,
    ) -> Result<Response, GatewayError> {
        let cluster = &to.cluster;
        ctx.endpoint = Some(in_flight.0.addr);
        let sent = match outcome {
            Ok(s) => s,
            Err(TryError::Timeout) => {
                cluster.stats.timeouts.fetch_add(1, Relaxed);
                return Err(GatewayError::UpstreamTimeout {
                    upstream: cluster.name.to_string(),
                });
            }
            Err(TryError::Send(e)) => return Err(self.send_error(cluster, e)),
            Err(TryError::Gateway(e)) => return Err(e),
        };
        let lease = Lease { in_flight, permit };
        match sent {
            Sent::Own(mut parts, body) => {
                hop::strip_response(&mut parts.headers);
                let body = Body::upstream_h1(body, to.timeouts.idle, lease);
                Ok(http::Response::from_parts(parts, body))
            }
            Sent::Hyper(resp) => {
                let (mut parts, body) = resp.into_parts();
                hop::strip_response(&mut parts.headers);
                let body = Body::stream_with_lease(body, Side::Upstream, to.timeouts.idle, lease);
                Ok(http::Response::from_parts(parts, body))
            }
        }
    }

    /// A WebSocket handshake: one try on a connection of its own; a tunnel once the
    /// upstream answered 101.
    async fn forward_upgrade(
        &self,
        ctx: &mut RequestCtx,
        mut parts: http::request::Parts,
        body: Body,
        to: &Binding,
        pq: &PathAndQuery,
    ) -> Result<Response, GatewayError> {
        let cluster = &to.cluster;
        ctx.upstream = Some(cluster.name.clone());
        ctx.stats = Some(to.stats.clone());
        let in_flight = self.pick(ctx, cluster, &parts.headers, &[])?;
        let ep = in_flight.0.clone();
        ctx.endpoint = Some(ep.addr);
        self.aim(ctx, &mut parts, &ep, to, pq, 1, to.timeouts.request)?;
        // The handshake is HTTP/1.1 whatever the upstream's protocol.
        if parts.version == Version::HTTP_2 {
            parts.uri = Uri::from(pq.clone());
            parts.version = Version::HTTP_11;
            parts.headers.insert(HOST, ctx.host.clone());
        }
        let client_upgrade = parts.extensions.remove::<crate::server::h1::OnUpgrade>();
        let req = http::Request::from_parts(parts, body);
        let started = Instant::now();
        let sent = tokio::time::timeout(
            to.timeouts.request,
            Box::pin(ep.pool.send_upgrade(req, to.timeouts.connect)),
        )
        .await;
        ctx.upstream_time = Some(started.elapsed());
        let mut resp = match sent {
            Err(_) => {
                cluster.stats.timeouts.fetch_add(1, Relaxed);
                return Err(GatewayError::UpstreamTimeout {
                    upstream: cluster.name.to_string(),
                });
            }
            Ok(Err(e)) => return Err(self.send_error(cluster, e)),
            Ok(Ok(r)) => r,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let upstream = hyper::upgrade::on(&mut resp);
                let slot = ctx.extensions.remove::<crate::server::OpenGuard>();
                super::tunnel::spawn(client, upstream, to.timeouts.idle, (in_flight, slot));
                let (parts, _) = resp.into_parts();
                return Ok(http::Response::from_parts(parts, Body::Empty));
            }
        }
        let (mut parts, body) = resp.into_parts();
        hop::strip_response(&mut parts.headers);
        let lease = Lease {
            in_flight,
            permit: None,
        };
        let body = Body::stream_with_lease(body, Side::Upstream, to.timeouts.idle, lease);
        Ok(http::Response::from_parts(parts, body))
    }

    /// The rewritten path with the original query.
    pub fn path_and_query(&self, ctx: &RequestCtx) -> Result<PathAndQuery, GatewayError> {
        if let Rewrite::None = self.rewrite {
            if let Some(pq) = ctx.uri.path_and_query() {
                return Ok(pq.clone());
            }
        }
        let path = self.rewrite.apply(ctx.uri.path(), &ctx.params);
        let text = match ctx.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        PathAndQuery::try_from(text).map_err(|_| GatewayError::BadRequest("invalid path"))
    }

    fn set_headers(&self, ctx: &RequestCtx, headers: &mut http::HeaderMap, upgrade: bool) {
        let s = &self.settings;
        headers.remove(EXPECT);
        headers.reserve(8);
        let hop = Hop {
            peer: ctx.peer.ip(),
            peer_text: &ctx.peer_text,
            peer_trusted: ctx.peer_trusted,
            client: ctx.client_ip,
            proto: ctx.scheme,
            host: &ctx.host,
        };
        forwarded::set_forwarding_headers(headers, &hop);
        if let Some([v10, v11, v2]) = &s.via {
            let via = match ctx.version {
                Version::HTTP_2 => v2,
                Version::HTTP_10 | Version::HTTP_09 => v10,
                _ => v11,
            };
            forwarded::append_via(headers, via);
        }
        headers.insert(s.request_id_header.clone(), ctx.request_id.clone());
        if upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
    }

    fn send_error(&self, cluster: &Cluster, e: SendError) -> GatewayError {
        use std::sync::atomic::Ordering::Relaxed;
        let upstream = cluster.name.to_string();
        let e = match e {
            SendError::Connect(cause) => return GatewayError::UpstreamConnect { upstream, cause },
            SendError::Exchange(e) => e,
            SendError::RequestBody(e) => {
                return match e.downcast_ref::<BodyError>() {
                    Some(b) => request_body_error(b),
                    None => GatewayError::BadRequest("request body could not be read"),
                }
            }
            SendError::Protocol(cause) => {
                return GatewayError::UpstreamProtocol { upstream, cause }
            }
            SendError::Reset(cause) => {
                cluster.stats.resets.fetch_add(1, Relaxed);
                return GatewayError::UpstreamReset { upstream, cause };
            }
        };
        if let Some(body) = find_body_error(&e) {
            return request_body_error(body);
        }
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            return GatewayError::UpstreamProtocol {
                upstream,
                cause: e.to_string(),
            };
        }
        cluster.stats.resets.fetch_add(1, Relaxed);
        GatewayError::UpstreamReset {
            upstream,
            cause: e.to_string(),
        }
    }
}

fn request_body_error(body: &BodyError) -> GatewayError {
    match body {
        BodyError::Idle {
            side: Side::Downstream,
            ..
        } => GatewayError::RequestTimeout,
        BodyError::TooLarge { .. } => GatewayError::PayloadTooLarge,
        _ => GatewayError::BadRequest("request body could not be read"),
    }
}

fn find_body_error(e: &hyper::Error) -> Option<&BodyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BodyError>() {
            return Some(b);
        }
        source = s.source();
    }
    None
}

/// `Via` values for a pseudonym: `1.0 name`, `1.1 name`, `2 name`.
pub fn via_values(pseudonym: &str) -> Option<[HeaderValue; 3]> {
    if pseudonym.is_empty() {
        return None;
    }
    let v = |version: &str| HeaderValue::from_str(&format!("{version} {pseudonym}")).ok();
    Some([v("1.0")?, v("1.1")?, v("2")?])
}
