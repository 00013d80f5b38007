//! `RequestCtx`: what the gateway knows about one request while it is handled. Built by
//! the server before routing; policies and targets read it and add to it; the access log
//! and metrics read it at the end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Uri, Version};
use tokio::time::Instant;

use crate::router::Params;
use crate::telemetry::metrics::RouteStats;

/// Per-request state. Policies are shared by all requests; whatever belongs to one
/// request lives here (typed `extensions` for what policies hand to each other).
pub struct RequestCtx {
    /// The correlation id (incoming `X-Request-ID` or a new UUIDv7).
    pub request_id: HeaderValue,
    /// When the request head was received.
    pub started: Instant,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer address as text, made once per connection.
    pub peer_text: HeaderValue,
    /// The client address (the peer, or from `X-Forwarded-For` via trusted proxies).
    pub client_ip: IpAddr,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The listener that accepted the connection.
    pub listener: Arc<str>,
    /// The request method.
    pub method: Method,
    /// The request target as received.
    pub uri: Uri,
    /// The host the client asked for (`Host` or `:authority`), as sent.
    pub host: HeaderValue,
    /// The HTTP version of the client's request.
    pub version: Version,
    /// The client asked for a WebSocket upgrade (read before hop-by-hop headers went).
    pub websocket: bool,
    /// The connection's TLS details and verified client certificate (HTTPS listeners).
    pub tls: Option<Arc<crate::tls::server::TlsInfo>>,
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    /// The matched route's path parameters (ranges into `uri.path()`).
    pub params: Params,
    /// The upstream that answered (or was tried).
    pub upstream: Option<Arc<str>>,
    /// The endpoint that answered (or was tried).
    pub endpoint: Option<SocketAddr>,
    /// Time spent waiting for the upstream's response head.
    pub upstream_time: Option<Duration>,
    /// The stable code of the error that ended the request, if any.
    pub error: Option<&'static str>,
    /// Who the request was authenticated as (set by authentication policies).
    pub identity: Option<crate::policies::consumers::Identity>,
    /// The counters this request is recorded in (route and upstream).
    pub stats: Option<Arc<RouteStats>>,
    /// Typed values policies hand to each other.
    pub extensions: http::Extensions,
    /// Decisions of the route's `rate_limit` policies, for their response phase (inline:
    /// no allocation on the hot path; a third policy on one route uses `extensions`).
    pub rate_limits: [Option<crate::policies::rate_limit::Admitted>; 2],
}

impl RequestCtx {
    /// The value of path parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name, self.uri.path())
    }

    /// The host as a string (empty when not ASCII).
    pub fn host_str(&self) -> &str {
        self.host.to_str().unwrap_or("")
    }

    /// The authenticated consumer's name, for logs (`""` when none).
    pub fn consumer_name(&self) -> &str {
        self.identity
            .as_ref()
            .and_then(|i| i.consumer.as_ref())
            .map_or("", |c| &c.name)
    }

    /// The request id as a string.
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// The context of a call the gateway makes on this request's behalf (a `compose`
    /// call): the same client, connection, route and request id; its own method and
    /// target, no parameters, counters or extensions of its own.
    pub fn child(&self, method: Method, uri: Uri) -> Self {
        Self {
            request_id: self.request_id.clone(),
            started: Instant::now(),
            peer: self.peer,
            peer_text: self.peer_text.clone(),
            client_ip: self.client_ip,
            peer_trusted: self.peer_trusted,
            scheme: self.scheme,
            listener: self.listener.clone(),
            method,
            uri,
            host: self.host.clone(),
            version: self.version,
            websocket: false,
            tls: self.tls.clone(),
            route: self.route.clone(),
            params: Params::default(),
            upstream: None,
            endpoint: None,
            upstream_time: None,
            error: None,
            identity: None,
            stats: None,
            extensions: http::Extensions::new(),
            rate_limits: [None, None],
        }
    }
}

impl RequestCtx {
    /// The context of a call the gateway makes on its own (a subscription's delivery):
    /// from the loopback address, on no listener, under `request_id`.
    pub fn internal(request_id: HeaderValue, route: Arc<str>, method: Method, uri: Uri) -> Self {
        let local: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            request_id,
            started: Instant::now(),
            peer: local,
            peer_text: HeaderValue::from_static("127.0.0.1"),
            client_ip: local.ip(),
            peer_trusted: true,
            scheme: "http",
            listener: Arc::from(""),
            method,
            uri,
            host: HeaderValue::from_static("localhost"),
            version: Version::HTTP_11,
            websocket: false,
            tls: None,
            route: Some(route),
            params: Params::default(),
            upstream: None,
            endpoint: None,
            upstream_time: None,
            error: None,
            identity: None,
            stats: None,
            extensions: http::Extensions::new(),
            rate_limits: [None, None],
        }
    }
}

#[cfg(test)]
impl RequestCtx {
    /// A context for unit tests: `GET http://api.test/users/7` from 10.0.0.1.
    pub fn for_test() -> Self {
        let mut ctx = Self::internal(
            HeaderValue::from_static("test-id"),
            Arc::from("users"),
            Method::GET,
            Uri::from_static("/users/7"),
        );
        ctx.peer = "10.0.0.1:40000".parse().expect("literal address");
        ctx.peer_text = HeaderValue::from_static("10.0.0.1");
        ctx.client_ip = "10.0.0.1".parse().expect("literal address");
        ctx.peer_trusted = false;
        ctx.listener = Arc::from("public");
        ctx.host = HeaderValue::from_static("api.test");
        ctx
    }
}
