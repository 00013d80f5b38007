//! One request, from the head the client sent to the response handed back to the
//! connection (the own HTTP/1.1 server, or hyper's HTTP/2 server):
//! correlation id, client identity, the checks made before routing, routing, the route's
//! pipeline, and the accounting wrapper on the response body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use std::time::Duration;

use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, LOCATION, STRICT_TRANSPORT_SECURITY, USER_AGENT,
};
use http::Version;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::http::body::Side;
use crate::http::forwarded;
use crate::http::{Body, GatewayError, Request, Response};

use super::checks;
use crate::pipeline::{error_response, RequestCtx};
use crate::router::{normalize_host, Found, Query};
use crate::runtime::snapshot::ListenerSettings;
use crate::runtime::{Runtime, Snapshot};
use crate::telemetry::exchange::{BytesIn, Exchange, ObservedBody};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::request_id;

/// Per-connection counts: requests, requests in flight, premature resets, activity.
pub struct ConnStats {
    started: Instant,
    requests: AtomicU64,
    in_flight: AtomicU64,
    resets: AtomicU64,
    last_active_ms: AtomicU64,
}

impl Default for ConnStats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
        }
    }
}

impl ConnStats {
    /// `None` when the connection has had no request in flight for `limit`; otherwise
    /// how long until it could be.
    pub fn idle_for(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.load(Relaxed) > 0 {
            return Some(limit);
        }
        let last = Duration::from_millis(self.last_active_ms.load(Relaxed));
        let idle = self.started.elapsed().saturating_sub(last);
        (idle < limit).then(|| limit - idle)
    }

    /// Requests started on this connection.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Time since the connection was accepted.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    fn touch(&self) {
        self.last_active_ms
            .store(self.started.elapsed().as_millis() as u64, Relaxed);
    }
}

/// Counts a request on its connection; when the request future is dropped before a
/// response was produced (the client reset the stream), counts a premature reset, and
/// closes the connection when resets are at least half of a hundred or more requests
/// (the HTTP/2 rapid-reset pattern).
struct RequestGuard<'a> {
    conn: &'a Conn,
    done: bool,
}

impl<'a> RequestGuard<'a> {
    fn start(conn: &'a Conn) -> (Self, u64) {
        let n = conn.stats.requests.fetch_add(1, Relaxed) + 1;
        conn.stats.in_flight.fetch_add(1, Relaxed);
        (Self { conn, done: false }, n)
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        let stats = &self.conn.stats;
        stats.in_flight.fetch_sub(1, Relaxed);
        stats.touch();
        if !self.done {
            let resets = stats.resets.fetch_add(1, Relaxed) + 1;
            self.conn
                .runtime
                .metrics
                .premature_resets
                .fetch_add(1, Relaxed);
            if resets >= 100
                && resets * 2 >= stats.requests.load(Relaxed)
                && self.conn.signal.level() < super::signal::ABORT
            {
                tracing::warn!(peer = %self.conn.peer, resets, "closing a connection: most of its requests were reset by the client");
                self.conn.signal.raise(super::signal::ABORT);
            }
        }
    }
}

/// What every request of one client connection shares.
pub struct Conn {
    /// The runtime.
    pub runtime: Arc<Runtime>,
    /// The listener's position in `listeners`.
    pub listener: usize,
    /// The listener's name.
    pub listener_name: Arc<str>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP address as text (for forwarding headers).
    pub peer_text: HeaderValue,
    /// Raised to close the connection (drain, request cap, abuse).
    pub signal: Arc<super::signal::Signal>,
    /// Counts.
    pub stats: ConnStats,
    /// What the TLS handshake established (HTTPS listeners).
    pub tls: Option<Arc<crate::tls::server::TlsInfo>>,
    /// Whether the client takes its HTTP/2 response bodies.
    pub progress: Arc<crate::telemetry::exchange::StreamProgress>,
    /// The listener's connection slot this connection holds (a WebSocket tunnel it
    /// becomes holds it too, so tunnels count towards `max_connections`).
    pub slot: super::OpenGuard,
}

/// Lowers the in-flight gauge when the request is over, however it ends.
pub struct InFlightRequest(Arc<Metrics>);

impl InFlightRequest {
    fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.in_flight.fetch_add(1, Relaxed);
        Self(metrics.clone())
    }
}

impl InFlightRequest {
    /// The metrics it counts in.
    pub fn metrics(&self) -> &Metrics {
        &self.0
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A request's body as the connection gives it.
pub enum ClientIn {
    /// None (no framing field, or a length of 0).
    Empty,
    /// From hyper's HTTP/2 server.
    Hyper(Incoming),
    /// From the own HTTP/1.1 server.
    Own(super::h1::ClientBody),
}

/// Handles one request from hyper's (HTTP/2) server.
pub async fn handle_hyper(
    conn: &Conn,
    req: http::Request<Incoming>,
) -> http::Response<ObservedBody> {
    let (parts, body) = req.into_parts();
    handle(conn, parts, ClientIn::Hyper(body)).await
}

/// Handles one request. Never fails: every problem is a response.
pub async fn handle(
    conn: &Conn,
    mut parts: http::request::Parts,
    incoming: ClientIn,
) -> http::Response<ObservedBody> {
    let started = Instant::now();
    let rt = &conn.runtime;
    let in_flight = InFlightRequest::start(&rt.metrics);
    let (mut guard, nth) = RequestGuard::start(conn);
    let snap = rt.snapshot();
    let listener = &snap.listeners[conn.listener];
    // Connection-level headers go before everything else: what routes and policies see
    // and decide on is exactly what is forwarded, and a client cannot name a header a
    // policy adds in `Connection` to have it removed.
    let hop = crate::http::hop::strip_request(&mut parts.headers);
    let settings = &snap.settings;
    settings.internal.strip(&mut parts.headers);
    if let Some(tls) = &conn.tls {
        identity_header(tls, &mut parts.headers);
    }
    let request_id = match parts.headers.get(&settings.request_id_header) {
        Some(v) if request_id::is_acceptable(v) => v.clone(),
        _ => request_id::generate(),
    };
    let checked =
        checks::check(&listener.settings, settings, &mut parts).and_then(|host| match &conn.tls {
            Some(info) => checks::same_virtual_host(info, &host).map(|()| host),
            None => Ok(host),
        });
    let host = match &checked {
        Ok(h) => h.clone(),
        Err(_) => parts
            .headers
            .get(HOST)
            .cloned()
            .unwrap_or(HeaderValue::from_static("")),
    };
    let peer_ip = forwarded::canonical(conn.peer.ip());
    let (bytes_in, length, body) = request_body(
        &listener.settings,
        &settings.internal,
        &mut parts.headers,
        incoming,
    );
    let had_body = !matches!(body, Body::Empty);
    let user_agent = parts.headers.get(USER_AGENT).cloned();
    let mut ctx = RequestCtx {
        request_id,
        started,
        peer: conn.peer,
        peer_text: conn.peer_text.clone(),
        client_ip: forwarded::client_ip(peer_ip, &parts.headers, &settings.trusted),
        peer_trusted: settings.trusted.contains(peer_ip),
        scheme: conn.scheme,
        listener: conn.listener_name.clone(),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        host,
        version: parts.version,
        websocket: hop.websocket,
        tls: conn.tls.clone(),
        route: None,
        params: Default::default(),
        upstream: None,
        endpoint: None,
        upstream_time: None,
        error: None,
        identity: None,
        stats: None,
        extensions: http::Extensions::new(),
        rate_limits: [None, None],
    };
    if ctx.websocket {
        // A tunnel made of this connection holds its slot (see targets::tunnel).
        ctx.extensions.insert(conn.slot.clone());
    }
    let req = Request::from_parts(parts, body);
    let checks_failed = checked.is_err();
    let mut resp = match checked {
        Ok(_) => dispatch(&snap, conn.listener, &mut ctx, req, length).await,
        Err(e) => {
            ctx.stats = Some(snap.unmatched.clone());
            error_response(&mut ctx, e)
        }
    };
    guard.done = true;
    let headers = resp.headers_mut();
    headers.insert(settings.request_id_header.clone(), ctx.request_id.clone());
    if let Some(hsts) = listener.settings.tls.as_ref().and_then(|t| t.hsts.as_ref()) {
        headers.insert(STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let http1 = ctx.version != Version::HTTP_2;
    let at_cap = nth >= listener.settings.max_requests_per_connection;
    // HTTP/1.x: close after this response when bytes of the client's may still be
    // unread, so that they are never parsed as the next request: a body answered without
    // reading it, a body given up on (too large, too slow, malformed), or a request
    // refused before routing (its framing may be what was wrong).
    let refused = checks_failed || (had_body && ctx.error.is_some());
    if http1 && (at_cap || refused || (had_body && ctx.upstream_time.is_none())) {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    } else if at_cap {
        conn.signal.raise(super::signal::GRACEFUL);
    }
    let status = resp.status().as_u16();
    let (mut parts, mut body) = resp.into_parts();
    // A HEAD response has no content (RFC 9110 §9.3.2). hyper drops it on HTTP/1.1, but
    // on HTTP/2 a gateway-made body (an error, a `respond` route) would go out as DATA,
    // which clients treat as a protocol error. The length it would have had is kept.
    if ctx.method == http::Method::HEAD && !matches!(body, Body::Empty) {
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            parts
                .headers
                .entry(CONTENT_LENGTH)
                .or_insert(HeaderValue::from(n));
        }
        body = Body::Empty;
    }
    let log = snap.access_log.get().cloned();
    let exchange = Exchange::new(ctx, status, bytes_in, user_agent, log, in_flight);
    let mut body = ObservedBody::new(body, exchange);
    if !http1 {
        body = body.watched(conn.progress.clone());
    }
    http::Response::from_parts(parts, body)
}

fn request_body(
    listener: &ListenerSettings,
    internal: &Arc<crate::http::internal::InternalHeaders>,
    headers: &mut http::HeaderMap,
    incoming: ClientIn,
) -> (BytesIn, Option<u64>, Body) {
    let mut body = match incoming {
        ClientIn::Hyper(i) if !http_body::Body::is_end_stream(&i) => {
            Body::stream(i, Side::Downstream, listener.body_idle)
        }
        ClientIn::Own(b) => Body::client_h1(b, listener.body_idle),
        _ => Body::Empty,
    };
    if matches!(body, Body::Empty) {
        return (BytesIn::Known(0), Some(0), Body::Empty);
    }
    if let Some(s) = body.as_stream_mut() {
        s.strip_from_trailers(internal.clone());
    }
    let declared = headers.get(CONTENT_LENGTH);
    let length = declared
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The parser accepted it as decimal; forward it canonical (`010` is sent as `10`), so an
    // upstream that reads leading zeros as octal cannot frame the body differently.
    if let (Some(v), Some(n)) = (declared, length) {
        if v.len() > 1 && v.as_bytes()[0] == b'0' {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    let bytes_in = match length {
        Some(n) => BytesIn::Known(n),
        None => {
            let counter = Arc::new(AtomicU64::new(0));
            if let Some(s) = body.as_stream_mut() {
                s.count_into(counter.clone());
            }
            BytesIn::Counted(counter)
        }
    };
    (bytes_in, length, body)
}

/// Removes client-sent copies of the identity headers of this listener, then adds the
/// verified identity where the certificate entry asks for it.
fn identity_header(tls: &crate::tls::server::TlsInfo, headers: &mut http::HeaderMap) {
    for name in &tls.server.forward_headers {
        headers.remove(name);
    }
    if let (Some(name), Some(value)) = (&tls.forward_header, &tls.forward_value) {
        headers.insert(name.clone(), value.clone());
    }
}

/// `https://host[:port]/path?query` for a plain-HTTP request.
fn https_redirect(ctx: &RequestCtx, port: u16, status: http::StatusCode) -> Response {
    let host = normalize_host(ctx.host_str());
    let mut location = format!("https://{host}");
    if port != 443 {
        location.push(':');
        location.push_str(itoa::Buffer::new().format(port));
    }
    location.push_str(ctx.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

async fn dispatch(
    snap: &Snapshot,
    listener: usize,
    ctx: &mut RequestCtx,
    mut req: Request,
    length: Option<u64>,
) -> Response {
    if let Some((port, status)) = snap.listeners[listener].settings.redirect_https {
        ctx.stats = Some(snap.unmatched.clone());
        return https_redirect(ctx, port, status);
    }
    let found = {
        let host = normalize_host(ctx.host_str());
        let q = Query {
            method: &ctx.method,
            host: &host,
            path: ctx.uri.path(),
            query: ctx.uri.query(),
            headers: req.headers(),
        };
        match snap.listeners[listener].router.find(&q, None) {
            Found::Route { entry, params } => Ok((entry, params)),
            Found::MethodNotAllowed(methods) => Err(GatewayError::MethodNotAllowed {
                allow: allow_header(&methods),
            }),
            Found::NotFound => Err(GatewayError::RouteNotFound),
        }
    };
    let (entry, params) = match found {
        Ok(found) => found,
        Err(e) => {
            ctx.stats = Some(snap.unmatched.clone());
            return error_response(ctx, e);
        }
    };
    ctx.route = Some(entry.name.clone());
    ctx.params = params;
    ctx.stats = Some(entry.value.stats.clone());
    let max_body = entry.value.max_body;
    // 413 before reading when the length is declared; otherwise the body stream fails
    // once it grows past the limit (and the upstream sees at most the limit).
    if length.is_some_and(|n| n > max_body) {
        return error_response(ctx, GatewayError::PayloadTooLarge);
    }
    if let Some(stream) = req.body_mut().as_stream_mut() {
        stream.limit(max_body);
    }
    entry.value.pipeline.run(ctx, req).await
}

fn allow_header(methods: &[http::Method]) -> HeaderValue {
    let mut names: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
    names.sort_unstable();
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static(""))
}
