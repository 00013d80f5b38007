//! One request, from the head the client sent to the response handed back to hyper:
//! correlation id, client identity, the checks made before routing, routing, the route's
//! pipeline, and the accounting wrapper on the response body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, USER_AGENT};
use http::Version;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::http::body::Side;
use crate::http::forwarded;
use crate::http::{Body, GatewayError, Request, Response};
use crate::pipeline::{error_response, RequestCtx};
use crate::router::{normalize_host, Found, Query};
use crate::runtime::{Runtime, Snapshot};
use crate::telemetry::exchange::{BytesIn, Exchange, ObservedBody};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::request_id;

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
}

/// Lowers the in-flight gauge when the request is over, however it ends.
pub struct InFlightRequest(Arc<Metrics>);

impl InFlightRequest {
    fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.in_flight.fetch_add(1, Relaxed);
        Self(metrics.clone())
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Handles one request. Never fails: every problem is a response.
pub async fn handle(conn: &Conn, req: http::Request<Incoming>) -> http::Response<ObservedBody> {
    let started = Instant::now();
    let rt = &conn.runtime;
    let guard = InFlightRequest::start(&rt.metrics);
    let snap = rt.snapshot();
    let (mut parts, incoming) = req.into_parts();
    // Connection-level headers go before routing and policies: what policies see and
    // decide on is exactly what is forwarded, and a client cannot name a header a policy
    // adds in `Connection` to have it removed.
    let hop = crate::http::hop::strip_request(&mut parts.headers);
    let settings = &snap.settings;
    let request_id = match parts.headers.get(&settings.request_id_header) {
        Some(v) if request_id::is_acceptable(v) => v.clone(),
        _ => request_id::generate(),
    };
    let peer_ip = forwarded::canonical(conn.peer.ip());
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).unwrap_or(HeaderValue::from_static("")),
        None => parts
            .headers
            .get(HOST)
            .cloned()
            .unwrap_or(HeaderValue::from_static("")),
    };
    let (bytes_in, body) = request_body(&snap, &parts.headers, incoming);
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
        route: None,
        params: Default::default(),
        upstream: None,
        endpoint: None,
        upstream_time: None,
        error: None,
        stats: None,
        extensions: http::Extensions::new(),
    };
    let req = Request::from_parts(parts, body);
    let mut resp = dispatch(&snap, conn.listener, &mut ctx, req).await;
    resp.headers_mut()
        .insert(settings.request_id_header.clone(), ctx.request_id.clone());
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let log = snap.access_log.get().cloned();
    let exchange = Exchange::new(ctx, status, bytes_in, user_agent, log, guard);
    http::Response::from_parts(parts, ObservedBody::new(body, exchange))
}

fn request_body(snap: &Snapshot, headers: &http::HeaderMap, incoming: Incoming) -> (BytesIn, Body) {
    if http_body::Body::is_end_stream(&incoming) {
        return (BytesIn::Known(0), Body::Empty);
    }
    let mut body = Body::stream(incoming, Side::Downstream, snap.body_idle);
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
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
    (bytes_in, body)
}

async fn dispatch(
    snap: &Snapshot,
    listener: usize,
    ctx: &mut RequestCtx,
    req: Request,
) -> Response {
    if let Err(e) = precheck(snap, ctx, &req) {
        ctx.stats = Some(snap.unmatched.clone());
        return error_response(ctx, e);
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
    match found {
        Ok((entry, params)) => {
            ctx.route = Some(entry.name.clone());
            ctx.params = params;
            ctx.stats = Some(entry.value.stats.clone());
            entry.value.pipeline.run(ctx, req).await
        }
        Err(e) => {
            ctx.stats = Some(snap.unmatched.clone());
            error_response(ctx, e)
        }
    }
}

/// Checks made before routing.
fn precheck(snap: &Snapshot, ctx: &RequestCtx, req: &Request) -> Result<(), GatewayError> {
    if ctx.version == Version::HTTP_11 && ctx.host.is_empty() {
        return Err(GatewayError::BadRequest("missing Host header"));
    }
    let s = &snap.settings;
    if !s.pseudonym.is_empty() && forwarded::via_count(req.headers(), &s.pseudonym) >= s.max_hops {
        return Err(GatewayError::LoopDetected);
    }
    Ok(())
}

fn allow_header(methods: &[http::Method]) -> HeaderValue {
    let mut names: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
    names.sort_unstable();
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static(""))
}
